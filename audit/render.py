"""The audit report as people read it: a self-contained ``report.html`` (the epsilon plot
embedded as a PNG) and its machine-readable twin ``report.json``, both written from the
dictionary ``audit.report.build_report`` returns."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path


def _plot_png(owners: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for o in owners:
        if o["rounds"]:
            line = ax.plot(
                range(1, len(o["rounds"]) + 1), o["epsilon_claimed"], marker="o", label=o["owner"]
            )[0]
            ax.plot(
                range(1, len(o["rounds"]) + 1),
                o["epsilon_recomputed"],
                linestyle=":",
                color=line.get_color(),
            )
            ax.axhline(o["budget"], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("rounds charged (in order)")
    ax.set_ylabel("epsilon spent")
    ax.set_title("Epsilon per owner: claimed (solid), recomputed (dotted), budget (dashed)")
    if owners:
        ax.legend(fontsize=7, ncol=2)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2))
    esc = html.escape
    rows = "".join(
        f"<tr class='{esc(r['status'].replace('/', ''))}'><td>{esc(r['name'])}</td><td>{esc(r['reference'])}</td>"
        f"<td><b>{esc(r['status'])}</b></td><td>{esc(r['evidence'])}</td></tr>"
        for r in report["requirements"]
    )
    owners = "".join(
        f"<tr><td>{esc(o['owner'])}</td><td><code>{esc(o['data_fingerprint'][:16])}</code></td><td>{len(o['rounds'])}</td>"
        f"<td>{o['final_claimed']:.4f}</td><td>{o['final_recomputed']:.4f}</td><td>{o['budget']:g}{'<br><small>' + esc('; '.join(o['budget_changes'])) + '</small>' if o['budget_changes'] else ''}</td>"
        f"<td>{o['delta']:g}</td><td>{len(o['refusals'])}</td><td>{'ok' if o['ok'] else esc('; '.join(o['problems']))}</td></tr>"
        for o in report["owners"]
    )
    logs = "".join(f"<li>{esc(lg['summary'])}</li>" for lg in report["logs"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fedshield privacy budget audit</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:4px 6px;font-size:13px;vertical-align:top}}tr.pass td:nth-child(3){{color:#070}}
tr.fail td:nth-child(3){{color:#b00}}tr.unverified td:nth-child(3){{color:#a60}}</style></head><body>
<h1>Privacy budget audit</h1>
<p>Overall: <b>{"PASS" if report["ok"] else "ATTENTION NEEDED"}</b>. Epsilon recomputed with {esc(report["accountant"])};
a claim is flagged if it differs by more than {report["tolerance"]:.0%} or is the lower one.</p>
<h2>Data-security requirements</h2><table><tr><th>requirement</th><th>reference</th><th>status</th><th>evidence in the logs</th></tr>{rows}</table>
<h2>Epsilon per data owner</h2><img alt="epsilon per owner" src="data:image/png;base64,{_plot_png(report["owners"])}">
<table><tr><th>owner</th><th>ledger</th><th>rounds</th><th>epsilon claimed</th><th>recomputed</th><th>budget (and changes)</th><th>delta</th><th>refusals</th><th>check</th></tr>{owners}</table>
<h2>Logs</h2><ul>{logs}</ul></body></html>"""
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path, json_path
