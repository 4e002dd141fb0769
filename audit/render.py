"""The audit report as people read it: a self-contained ``report.html`` (plots embedded as
PNG) and its machine-readable twin ``report.json``, both written from the dictionary
``audit.report.build_report`` returns.

Guarantee: the page reads at 1280 px without horizontal scrolling: tables have a fixed
layout and every cell wraps anywhere (hashes, paths and long evidence included); images
shrink to the page. ``screenshot`` renders it in a real headless Chromium to check that.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

from fedshield.common.errors import FedshieldError

MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "p", "h", "<", ">")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PAGE_WIDTH_PX = 1280

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
do not share a budget. The protection is per record; a person with several records is
protected record by record. Each owner's row names its <b>definition</b>:
<i>add-remove</i> (the default) protects whether a record is there at all, so the
owner's number of records is secret too and left only as a noisy count, itself a
charged release (the "count" charge); <i>replace-one</i> means the owner declared its
number of records public, and its epsilon protects a record's content, not its
presence (the same noise costs about twice the epsilon).</p>
<p>The epsilon in this report is <b>computed from the owners' signed audit logs</b>: each
charge records the noise multiplier, sampling rate and number of steps of every release
in the owner's ledger, and this report <b>recomputes</b> epsilon from those alone without
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


def _when(ts: str | None) -> str:
    """An ISO timestamp as a reader writes it down: 2026-11-29 01:49:51 UTC."""
    if not ts:
        return "-"
    try:
        return datetime.fromisoformat(ts).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return ts


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def epsilon_plot_png(owners: list[dict]) -> str:
    """Epsilon per owner per charge: claimed (line, one marker and dash style per owner,
    hollow and of decreasing size so identical owners stay visible), recomputed (+), and
    the budget in force at each charge (thin dashes)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    charged = [o for o in owners if o["charges"]]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    colors = plt.get_cmap("tab10")
    top, longest = 0.0, 1
    handles = []
    for i, owner in enumerate(charged):
        charges = owner["charges"]
        x = list(range(1, len(charges) + 1))
        color = colors(i % 10)
        style = dict(
            color=color,
            marker=MARKERS[i % len(MARKERS)],
            linestyle=LINESTYLES[i % len(LINESTYLES)],
            markersize=11 - 2 * (i % 4),
            markerfacecolor="none",
            markeredgewidth=1.4,
            linewidth=1.4,
        )
        ax.plot(x, [c["epsilon_claimed"] for c in charges], **style)
        ax.plot(
            x, [c["epsilon_recomputed"] for c in charges], "+", color=color, markersize=7, mew=1
        )
        budgets = [c["budget_in_force"] for c in charges]
        for k, budget in zip(x, budgets, strict=True):
            ax.hlines(budget, k - 0.5, k + 0.5, colors=[color], linestyles=(0, (2, 2)), lw=1.1)
        name = owner["owner"]  # a long name must not squeeze the plot out of the figure
        label = name if len(name) <= 32 else name[:30] + "\u2026"
        handles.append(Line2D([], [], label=label, **style))
        for refusal in owner["refusals"]:
            # a refusal sits between the charges it fell between, at the budget then in force
            x_refused = refusal["after_charges"] + 0.5
            spent = (
                charges[refusal["after_charges"] - 1]["epsilon_claimed"]
                if refusal["after_charges"]
                else 0.0
            )
            ax.plot(x_refused, spent, "x", color="#c00", markersize=9, mew=2)
            if refusal["budget_in_force"] is not None:
                ax.hlines(
                    refusal["budget_in_force"],
                    x_refused - 0.3,
                    x_refused + 0.3,
                    colors=["#c00"],
                    lw=1.5,
                )
                top = max(top, refusal["budget_in_force"])
        top = max(top, *budgets, *(c["epsilon_claimed"] for c in charges))
        longest = max(longest, len(charges), *(r["after_charges"] + 1 for r in owner["refusals"]))
    handles += [
        Line2D([], [], color="k", lw=1.4, label="epsilon claimed by the owner"),
        Line2D([], [], color="k", marker="+", lw=0, label="recomputed independently"),
        Line2D([], [], color="k", lw=1.1, ls=(0, (2, 2)), label="budget in force"),
    ]
    if any(o["refusals"] for o in charged):
        handles.append(
            Line2D([], [], color="#c00", marker="x", mew=2, lw=1.5, label="refused (budget then)")
        )
    ax.set_xlim(0.5, longest + 0.5)
    ax.set_ylim(0, max(top, 1.0) * 1.08)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("charges in time order (training rounds and evaluate answers, all runs)")
    ax.set_ylabel("epsilon spent (total so far)")
    ax.set_title("Epsilon per owner against the budget in force at each charge")
    ax.grid(alpha=0.3)
    shown = handles if len(charged) <= 24 else handles[:24] + handles[-3:]
    ax.legend(
        handles=shown,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title=None if len(charged) <= 24 else f"first 24 of {len(charged)} owners",
    )
    return _png(fig)


def confusion_plot_png(evaluation: dict) -> str:
    """The confusion matrix as ``fedshield evaluate`` draws it (one drawing for both)."""
    from fedshield.common.inference import plot_confusion

    buffer = io.BytesIO()
    accuracy = evaluation.get("accuracy")
    plot_confusion(
        evaluation["classes"],
        evaluation["confusion"],
        buffer,
        title=f"Accuracy {accuracy:.3f}" if isinstance(accuracy, int | float) else "",
        fmt="png",
    )
    return base64.b64encode(buffer.getvalue()).decode()


def _table(headers: list[str], rows: list[list[str]], widths: list[int] | None = None) -> str:
    """Cells are HTML already escaped by the caller; widths in percent."""
    cols = "".join(f"<col style='width:{w}%'>" for w in widths) if widths else ""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><colgroup>{cols}</colgroup><tr>{head}</tr>{body}</table>"


def _kv(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in pairs)
    return f"<table class='kv'>{rows}</table>"


def _status_class(status: str) -> str:
    return status.replace("/", "").split()[0] if status else ""


def _header(report: dict, esc) -> str:
    logs = report["logs"]
    bad = sum(1 for lg in logs if not lg["ok"])
    return _kv(
        [
            ("Generated", esc(_when(report["generated-at"]))),
            (
                "Generated by",
                f"fedshield {esc(report['fedshield-version'])} (fedshield audit report)",
            ),
            ("Inputs (as given)", "<br>".join(f"<code>{esc(p)}</code>" for p in report["inputs"])),
            (
                "Inputs (absolute)",
                "<br>".join(f"<code>{esc(p)}</code>" for p in report["inputs-resolved"]),
            ),
            (
                "Logs",
                f"{len(logs)} audit logs ({sum(1 for lg in logs if lg['role'] == 'server')} server, "
                f"{sum(1 for lg in logs if lg['role'] == 'owner')} owner); "
                + (f"<span class='fail'>{bad} FAILED verification</span>" if bad else "all verify"),
            ),
            (
                "Period covered",
                f"{esc(_when(min((lg['first-event'] for lg in logs if lg['first-event']), default=None)))}"
                f" to {esc(_when(max((lg['last-event'] for lg in logs if lg['last-event']), default=None)))}",
            ),
            ("Runs", str(len(report["runs"]))),
            ("Owners (privacy ledgers)", str(len(report["owners"]))),
        ]
    )


def _run_section(run: dict, number: int, total: int, esc) -> str:
    settings = "; ".join(f"{esc(k)} = {esc(str(v))}" for k, v in run["settings"].items())
    outcome = run["outcome"] or ("ended" if run["ended"] else "NOT ENDED (no run-end entry)")
    refusals = _table(
        ["time", "round", "node", "code", "reason the server received"],
        [
            [
                esc(_when(r["time"])),
                esc(str(r["server_round"])),
                esc(str(r["node_id"])),
                esc(str(r["code"])),
                esc(r["reason"]),
            ]
            for r in run["refusals"]
        ],
        [17, 7, 18, 8, 50],
    )
    pairs = [
        ("Run ids", esc(run["id"])),
        ("Recorded in", f"<code>{esc(run['source'])}</code>"),
        ("Period", f"{esc(_when(run['first_event']))} to {esc(_when(run['last_event']))}"),
        ("Outcome", esc(outcome)),
        ("Rounds", esc(run["availability"]) + f" of {esc(str(run['rounds_planned']))} planned"),
        ("Settings", settings or "-"),
        (
            "Noise multipliers used",
            esc(", ".join(f"{s:g}" for s in run["noise_multipliers_used"]) or "-")
            + " (noise-multiplier 0 in the settings: derived from target-epsilon)",
        ),
        ("Model", esc(run["model"] or "-") + f"; started from: {esc(run['initial_model'] or '-')}"),
        ("Classes", esc(", ".join(run["classes"]) or "-")),
        ("Evaluation data", esc(run["eval_data"] or "-")),
        ("Transport", esc(run["transport"] or "-")),
        (
            "Result",
            (f"accuracy {run['final_accuracy']:.4f}; " if run["final_accuracy"] is not None else "")
            + (
                f"model SHA-256 <code>{esc(run['model_sha256'])}</code>"
                if run["model_sha256"]
                else "no model saved"
            ),
        ),
        (
            "Updates",
            f"{run['updates_received']} received and accepted from "
            f"{esc(', '.join(run['owners_with_updates']) or 'no owner')}; "
            f"{len(run['updates_rejected'])} rejected"
            + (
                "<br>" + "<br>".join(esc(r) for r in run["updates_rejected"])
                if run["updates_rejected"]
                else ""
            )
            + f"; {run['dropped_node_ids']} dropouts",
        ),
        (
            "Replies refused as impersonated",
            (
                f"{len(run['replies_impersonated'])}: a reply to a task not sent to its "
                "sender, or to no task sent"
                + "<br>"
                + "<br>".join(esc(r) for r in run["replies_impersonated"])
            )
            if run.get("replies_impersonated")
            else "none",
        ),
        ("Refusals at the server", refusals if run["refusals"] else "none"),
    ]
    if run["resumed_from_round"]:
        pairs.insert(4, ("Resumed", esc(f"after rounds {run['resumed_from_round']}")))
    return f"<h3>Run {number} of {total}, started {esc(_when(run['first_event']))}</h3>" + _kv(
        pairs
    )


def _owner_rows(owner: dict, esc) -> str:
    status_class = (
        "fail" if not owner["ok"] else ("attention" if "RAISED" in owner["status"] else "pass")
    )
    kinds = [c["kind"] for c in owner["charges"]]
    row = [
        f"<b>{esc(owner['owner'])}</b><br><small>node key: <code>{esc(owner['identity'])}</code></small>",
        f"<code>{esc(owner['ledger_id'])}</code>",
        f"{kinds.count('train')} train, {kinds.count('evaluate')} evaluate, "
        f"{kinds.count('count')} count<br><small>{esc(owner['definition'])}</small>",
        f"{owner['final_claimed']:.4f}",
        f"{owner['final_recomputed']:.4f}",
        f"{owner['budget']:g}"
        + (
            f" ({len(owner['budget_changes'])} changes)" if len(owner["budget_changes"]) > 1 else ""
        ),
        f"{owner['delta']:g}",
        f"{owner['updates_released']} updates, {owner['evaluate_answers_released']} answers",
        str(len(owner["refusals"])),
        f"<span class='{status_class}'>{esc(owner['status'])}</span>",
    ]
    html_rows = "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
    for f in owner["data_files"]:
        html_rows += (
            "<tr class='file'><td colspan='2'>&#8627; data file <code>"
            f"{esc(f['fingerprint'][:16])}&hellip;</code> ({esc(str(f['records'] or '?'))} records)</td>"
            f"<td>{f['charges']} charges</td><td colspan='2'>{f['epsilon_alone']:.4f} for these "
            "charges alone</td>"
            f"<td colspan='5'>{esc(_when(f['first_charge']))} to {esc(_when(f['last_charge']))}</td></tr>"
        )
    return html_rows


def _owner_details(owner: dict, esc) -> str:
    budget = "".join(
        f"<li>{esc(_when(c['time']))}: {esc(c['text'])}"
        + (
            " <span class='attention'>(raised after a refusal)</span>"
            if c["raised_after_refusal"]
            else ""
        )
        + "</li>"
        for c in owner["budget_changes"]
    )
    refusals = _table(
        ["time", "run / round", "code", "what the code means", "the owner's reason (its own log)"],
        [
            [
                esc(_when(r["time"])),
                esc(f"{r['run_id']} / {r['server_round']} ({r['kind']})"),
                esc(str(r["code"])),
                esc(r["meaning"]),
                esc(r["reason"]),
            ]
            for r in owner["refusals"]
        ],
        [15, 17, 7, 28, 33],
    )
    charges = _table(
        [
            "time",
            "run / round",
            "file",
            "noise, rate, steps",
            "claimed (accountant)",
            "recomputed",
            "RDP check",
            "budget in force",
            "within",
        ],
        [
            [
                esc(_when(c["time"])),
                esc(f"{c['run_id']} / {c['server_round']} ({c['kind']})"),
                f"<code>{esc(c['data_fingerprint'][:12])}</code>",
                esc(f"{c['noise_multiplier']:g}, {c['sample_rate']:g}, {c['steps']}"),
                esc(f"{c['epsilon_claimed']:.4f} ({c['accountant']})"),
                f"{c['epsilon_recomputed']:.4f}",
                f"{c['epsilon_rdp']:.4f}",
                f"{c['budget_in_force']:g}",
                "yes" if c["within_budget"] else "<span class='fail'>NO</span>",
            ]
            for c in owner["charges"]
        ],
        [15, 19, 11, 13, 11, 8, 8, 8, 7],
    )
    problems = "".join(f"<li class='fail'>{esc(p)}</li>" for p in owner["problems"])
    return (
        f"<h3>{esc(owner['owner'])}</h3>"
        + _kv(
            [
                ("Node key", f"<code>{esc(owner['identity'])}</code>"),
                ("Ledger", f"<code>{esc(owner['ledger_id'])}</code>"),
                ("Logs", "<br>".join(f"<code>{esc(p)}</code>" for p in owner["logs"])),
            ]
        )
        + (f"<ul>{problems}</ul>" if problems else "")
        + f"<p><b>Budget history</b></p><ul>{budget or '<li>no budget change recorded</li>'}</ul>"
        + "<p><b>Refusals</b></p>"
        + (refusals if owner["refusals"] else "<p>none</p>")
        + "<p><b>Charges</b></p>"
        + (charges if owner["charges"] else "<p>none</p>")
    )


def _evaluation_section(evaluation: dict | None, esc) -> str:
    if not evaluation:
        return ""
    per_class = evaluation.get("per-class", {})

    def metric(name: str, key: str) -> str:
        value = per_class.get(name, {}).get(key)
        return (
            f"{value:.3f}"
            if isinstance(value, float)
            else esc(str(value if value is not None else "-"))
        )

    table = _table(
        ["class", "precision", "recall", "F1", "support"],
        [
            [
                esc(name),
                metric(name, "precision"),
                metric(name, "recall"),
                metric(name, "f1"),
                metric(name, "support"),
            ]
            for name in evaluation["classes"]
        ],
        [40, 15, 15, 15, 15],
    )
    accuracy = evaluation.get("accuracy")
    return (
        "<h2>Model evaluation</h2>"
        + _kv(
            [
                ("File", f"<code>{esc(evaluation['file'])}</code>"),
                ("Data", esc(str(evaluation.get("data", "-")))),
                ("Model SHA-256", f"<code>{esc(str(evaluation.get('model-sha256', '-')))}</code>"),
                ("Model of", esc(evaluation.get("run", "-"))),
                ("Accuracy", f"{accuracy:.4f}" if isinstance(accuracy, int | float) else "-"),
            ]
        )
        + f"<img alt='confusion matrix' src='data:image/png;base64,{confusion_plot_png(evaluation)}'>"
        + table
    )


def _empirical_section(empirical: dict | None, esc) -> str:
    """The one-run empirical audit, when given: the bound beside the claim (both as the
    report checked them: audit/one_run.py ``check_empirical``), and what it can and
    cannot show."""
    if not empirical:
        return ""
    from fedshield.audit.one_run import WHAT_IT_SHOWS

    bound, check = empirical["lower-bound"], empirical["check"]
    claimed = check["claimed-from-logs"]
    css = "pass" if check["ok"] else "fail"
    problems = "".join(f"<li class='fail'>{esc(p)}</li>" for p in check["problems"])
    return (
        "<h2>Empirical privacy test (one run with canaries)</h2>"
        + _kv(
            [
                ("File", f"<code>{esc(str(empirical['file']))}</code>"),
                ("Run tested", esc(", ".join(check["run-in-these-logs"]) or "not in these logs")),
                (
                    "Claimed epsilon (owners' signed logs, max)",
                    "none (no DP)" if claimed is None else f"{claimed:.4f}",
                ),
                (
                    f"Empirical lower bound ({bound['confidence']:.0%} confidence, delta "
                    f"{check['delta-from-logs']:g}; recomputed from the evidence)",
                    f"<b class='{css}'>{check['bound-recomputed']:.4f}</b>",
                ),
                ("Largest bound these canaries can show", f"{check['max-detectable']:.4f}"),
                (
                    "Evidence",
                    esc(
                        f"{bound['correct']} of {bound['guesses']} guesses correct on "
                        f"{bound['canaries']} canaries ({bound['included']} included); best of "
                        f"{bound['tests']} tests (union bound)"
                    ),
                ),
                ("Verdict", f"<span class='{css}'>{esc(check['verdict'])}</span>"),
            ]
        )
        + (f"<ul>{problems}</ul>" if problems else "")
        + f"<div class='explain'><p>{esc(WHAT_IT_SHOWS)}</p></div>"
    )


def overall_line(report: dict) -> str:
    """PASS, or ATTENTION NEEDED naming each requirement, log or test that needs it."""
    if report["ok"]:
        return "PASS"
    return "ATTENTION NEEDED: " + "; ".join(report.get("attention") or ["see the tables below"])


def render_html(report: dict) -> str:
    esc = html.escape
    requirements = "".join(
        f"<tr><td>{esc(r['name'])}</td><td>{esc(r['reference'])}</td>"
        f"<td class='{esc(_status_class(r['status']))}'>{esc(r['status'])}</td>"
        f"<td>{esc(r['evidence'])}</td></tr>"
        for r in report["requirements"]
    )
    owners = "".join(_owner_rows(o, esc) for o in report["owners"])
    owner_head = "".join(
        f"<th>{h}</th>"
        for h in (
            "owner and node key",
            "ledger",
            "charges",
            "epsilon claimed",
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
{_header(report, esc)}
<div class="explain"><h3>Reading epsilon and delta</h3>{EXPLANATION.format(tolerance=f"{report['tolerance']:.0%}")}</div>
<h2>Data-security requirements</h2>
<table><colgroup><col style="width:17%"><col style="width:17%"><col style="width:8%"><col style="width:58%"></colgroup>
<tr><th>requirement</th><th>reference</th><th>status</th><th>evidence in the logs</th></tr>{requirements}</table>
<h2>Runs</h2>{"".join(_run_section(r, i, len(report["runs"]), esc) for i, r in enumerate(report["runs"], 1)) or "<p>No run found in the logs.</p>"}
<h2>Epsilon per data owner</h2>{plot}
<table><colgroup>{cols}</colgroup><tr>{owner_head}</tr>{owners}</table>
<h2>Owners in detail</h2>{"".join(_owner_details(o, esc) for o in report["owners"])}
{_evaluation_section(report.get("evaluation"), esc)}
{_empirical_section(report.get("empirical"), esc)}
<h2>Logs verified</h2><ul>{logs}</ul>
<h2>Signature</h2>{_kv([("Reviewed by (name, role)", "&nbsp;"), ("Date", "&nbsp;"), ("Signature", "&nbsp;<br>&nbsp;")])}
</body></html>"""


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report), encoding="utf-8")
    return html_path, json_path


def find_browser() -> str | None:
    """A headless-capable Chromium on PATH (Debian: ``apt-get install chromium``)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


_HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",  # containers run it as root; the page is the report we just wrote
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=5000",
)
_PROBE = (
    "<script>window.addEventListener('load',()=>{const d=document.documentElement;"
    "document.body.setAttribute('data-fedshield-size',d.scrollWidth+'x'+d.scrollHeight)})"
    "</script>"
)
_SIZE = re.compile(r'data-fedshield-size="(\d+)x(\d+)"')


def measure_page(html_path: Path, width_px: int = PAGE_WIDTH_PX) -> tuple[int, int]:
    """(scroll width, scroll height) of the page in headless Chromium ``width_px`` wide:
    a scroll width above ``width_px`` means something overflows the window."""
    browser = _browser_or_fail(html_path, width_px)
    probe = html_path.with_name(f".{html_path.stem}-measure.html")
    probe.write_text(
        html_path.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
        encoding="utf-8",
    )
    try:
        proc = _run_browser(
            [browser, *_HEADLESS_FLAGS, f"--window-size={width_px},900", "--dump-dom", probe]
        )
    finally:
        probe.unlink(missing_ok=True)
    found = _SIZE.search(proc.stdout)
    if found is None:
        raise FedshieldError(
            f"{browser} rendered {html_path} but reported no page size: {proc.stderr[-500:]}"
        )
    return int(found.group(1)), int(found.group(2))


def screenshot(html_path: Path, png_path: Path, width_px: int = PAGE_WIDTH_PX) -> Path:
    """Render ``html_path`` in headless Chromium ``width_px`` wide, the whole page, to a PNG."""
    browser = _browser_or_fail(html_path, width_px)
    _, height = measure_page(html_path, width_px)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    _run_browser(
        [
            browser,
            *_HEADLESS_FLAGS,
            f"--window-size={width_px},{min(height, 30000)}",
            f"--screenshot={png_path.resolve()}",
            html_path,
        ]
    )
    if not png_path.exists():
        raise FedshieldError(f"{browser} wrote no screenshot of {html_path} to {png_path}")
    return png_path


def _browser_or_fail(html_path: Path, width_px: int) -> str:
    browser = find_browser()
    if browser is None:
        raise FedshieldError(
            f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); install one (Debian: "
            f"apt-get install chromium) or open {html_path} in a browser {width_px} px wide"
        )
    return browser


def _run_browser(command: list) -> subprocess.CompletedProcess:
    args = [str(c) if not isinstance(c, Path) else c.resolve().as_uri() for c in command]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise FedshieldError(
            f"{args[0]} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    return proc
