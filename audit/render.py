"""The audit report as people read it: a self-contained ``report.html`` (plots embedded as
PNG) and its machine-readable twin ``report.json``, both written from the dictionary
``audit.report.build_report`` returns.

Guarantee: the page reads at 1280 px without horizontal scrolling: tables have a fixed
layout and every cell wraps anywhere (hashes, paths and long evidence included); images
shrink to the page. ``audit/browser.py`` renders it in a real headless Chromium to check
that.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from fedshield.audit.html_sections import (
    empirical_section,
    evaluation_section,
    header_section,
    kv_table,
    owner_details,
    owner_rows,
    run_section,
    status_css_class,
)
from fedshield.audit.report_plots import epsilon_plot_png

EXPLANATION = """
<p><b>Epsilon (&epsilon;)</b> measures how much everything an owner released (model
updates, evaluation answers) can reveal about any <i>one record</i> in that owner's data:
the smaller epsilon is, the less anyone can learn about a single record, or even tell
whether it was there at all. Epsilon adds up with every release, across rounds and runs;
each owner therefore sets a <b>budget</b> (the most epsilon it accepts in total) and
refuses any round that would take it over. <b>Delta (&delta;)</b> is the small probability
that the epsilon bound does not hold; it must be far below one divided by the owner's
number of records (1e-5 for up to some tens of thousands of records).</p>
<p>Both figures are <b>per owner</b>: each covers that owner's records only, and owners
do not share a budget. Each owner's row names its <b>privacy unit</b>, what its epsilon
protects: <i>per record</i> (the default), or <i>per unit</i>, a column of the owner's
data naming whose each record is (an author, a patient), when epsilon protects one unit,
all its records together. Per record, a person with k records is protected only through
group privacy, at up to about k times the epsilon; where the owner's data names units,
the report shows the owner's figure for its largest unit. Per unit, one record of a unit
is protected at the per-record figure shown beside the claim: a replace-one bound at 2C
(removing a record moves its unit's clipped contribution by up to twice the clipping
norm C), recomputed here. A ledger keeps one unit; charges in two are a problem.
Each owner's row also names its <b>definition</b>:
<i>add-remove</i> (the default) protects whether a record is there at all, so the
owner's number of records is secret too and left only as a noisy count, itself a
charged release (the "count" charge); <i>replace-one</i> means the owner declared its
number of records public, and its epsilon protects a record's content, not its
presence (the same noise costs about twice the epsilon).</p>
<p>The epsilon in this report is <b>computed from the owners' signed audit logs</b>: each
charge records the noise multiplier, sampling rate and number of steps of every release
in the owner's ledger (releases of the same mechanism composed: their steps summed), and
this report <b>recomputes</b> epsilon from those alone without
the owners' accountant. The guarantee rests on the owners' figure, by the privacy loss
distribution (PLD); the report recomputes it exactly for full-batch rounds and as an
interval (Opacus's PRV accountant) otherwise, and flags a claim above that by more than
{tolerance} or below it. Rényi DP (RDP) is shown as a looser cross-check: it is always
higher; a claim above it is flagged.</p>
"""

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;max-width:1200px;
margin:1.5em auto;padding:0 16px;line-height:1.4;color:#111;overflow-wrap:anywhere}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;table-layout:fixed;margin:.4em 0 1em}
td,th{border:1px solid #ccc;padding:4px 6px;font-size:13px;vertical-align:top;
text-align:left;overflow-wrap:anywhere;word-break:break-word}
th{background:#f2f2f2}
code{font-size:12px;overflow-wrap:anywhere}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
.explain{background:#f4f7fb;border-left:4px solid #4a78b5;padding:.2em 1em;margin:1em 0}
.pass{color:#070;font-weight:bold}.fail{color:#b00;font-weight:bold}
.unverified,.attention{color:#a60;font-weight:bold}.na{color:#555;font-weight:bold}
tr.file td{background:#fafafa;font-size:12px}
table.kv td:first-child{width:24%;background:#fafafa}
.overall{font-size:1.15em}
"""


def overall_line(report: dict) -> str:
    """PASS, or ATTENTION NEEDED naming each requirement, log or test that needs it."""
    if report["ok"]:
        return "PASS"
    return "ATTENTION NEEDED: " + "; ".join(report.get("attention") or ["see the tables below"])


def render_html(report: dict) -> str:
    esc = html.escape
    requirements = "".join(
        f"<tr><td>{esc(r['name'])}</td><td>{esc(r['reference'])}</td>"
        f"<td class='{esc(status_css_class(r['status']))}'>{esc(r['status'])}</td>"
        f"<td>{esc(r['evidence'])}</td></tr>"
        for r in report["requirements"]
    )
    owners = "".join(owner_rows(o, esc) for o in report["owners"])
    owner_head = "".join(
        f"<th>{h}</th>"
        for h in (
            "owner and node key",
            "ledger",
            "charges",
            "epsilon claimed (per privacy unit)",
            "recomputed",
            "budget in force",
            "delta",
            "released",
            "refusals",
            "check",
        )
    )
    widths = (16, 12, 8, 8, 9, 8, 6, 9, 7, 17)
    cols = "".join(f"<col style='width:{w}%'>" for w in widths)
    logs = "".join(
        f"<li><span class='{'pass' if lg['ok'] else 'fail'}'>{'OK' if lg['ok'] else 'FAILED'}"
        f"</span> {esc(lg['role'])}: {esc(lg['summary'])}</li>"
        for lg in report["logs"]
    )
    plot = (
        f"<img alt='epsilon per owner' src='data:image/png;base64,{epsilon_plot_png(report['owners'])}'>"
        if any(o["charges"] for o in report["owners"])
        else "<p>No owner was charged: nothing to plot.</p>"
    )
    overall = overall_line(report)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedshield privacy budget audit</title><style>{CSS}</style></head><body>
<h1>Privacy budget audit</h1>
<p class="overall">Overall: <b class="{"pass" if report["ok"] else "fail"}">{esc(overall)}</b>.
The guarantee rests on {esc(report["accountant"]["guarantee-rests-on"])}. Recomputed:
{esc(report["accountant"]["recomputation"])} A claim is flagged if it is above the
recomputation by more than {report["tolerance"]:.0%}, below it, or above RDP.</p>
{header_section(report, esc)}
<div class="explain"><h3>Reading epsilon and delta</h3>{EXPLANATION.format(tolerance=f"{report['tolerance']:.0%}")}</div>
<h2>Data-security requirements</h2>
<table><colgroup><col style="width:17%"><col style="width:17%"><col style="width:8%"><col style="width:58%"></colgroup>
<tr><th>requirement</th><th>reference</th><th>status</th><th>evidence in the logs</th></tr>{requirements}</table>
<h2>Runs</h2>{"".join(run_section(r, i, len(report["runs"]), esc) for i, r in enumerate(report["runs"], 1)) or "<p>No run found in the logs.</p>"}
<h2>Epsilon per data owner</h2>{plot}
<table><colgroup>{cols}</colgroup><tr>{owner_head}</tr>{owners}</table>
<h2>Owners in detail</h2>{"".join(owner_details(o, esc) for o in report["owners"])}
{evaluation_section(report.get("evaluation"), esc)}
{empirical_section(report.get("empirical"), esc)}
<h2>Logs verified</h2><ul>{logs}</ul>
<h2>Signature</h2>{kv_table([("Reviewed by (name, role)", "&nbsp;"), ("Date", "&nbsp;"), ("Signature", "&nbsp;<br>&nbsp;")])}
</body></html>"""


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report), encoding="utf-8")
    return html_path, json_path
