"""``fedshield audit``: verify audit logs and report on privacy budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedshield.cli.shared import console, err_console
from fedshield.common.errors import FedshieldError

audit_app = typer.Typer(
    help="Verify audit logs and report on privacy budgets.", no_args_is_help=True
)


def _log_paths(paths: list[Path]) -> list[Path]:
    """Files as given; folders searched for audit logs (``**/audit.jsonl``)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.rglob("audit.jsonl")))
        elif path.exists():
            found.append(path)
        else:
            raise FedshieldError(f"{path}: no such file or folder")
    if not found:
        raise FedshieldError(f"no audit.jsonl under {', '.join(map(str, paths))}")
    return found


def _pinned_key(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    return path.read_text().strip() if path.exists() else value.strip()


@audit_app.command("verify")
def audit_verify(
    logs: Annotated[list[Path], typer.Argument(help="Audit log files, or folders to search.")],
    pubkey: Annotated[
        str | None,
        typer.Option(help="Expected Ed25519 public key (hex, or a .pub file) of the log's writer."),
    ] = None,
) -> None:
    """Check hash chains, sequence and signatures; exit 0 only if every log verifies."""
    from fedshield.audit.verify import verify_log

    results = [verify_log(path, _pinned_key(pubkey)) for path in _log_paths(logs)]
    for result in results:
        (console if result.ok else err_console).print(result.summary(), highlight=False)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)


SCREENSHOT_EPILOG = (
    "Check the page as a reader sees it, 1280 px wide: pass --screenshot report.png "
    "(needs Chromium on PATH; Debian: apt-get install chromium), or run it by hand:  "
    "chromium --headless --no-sandbox --hide-scrollbars --window-size=1280,8000 "
    "--screenshot=report.png file://$PWD/OUT/report.html   (docs/REPORT.md)"
)


@audit_app.command("report", epilog=SCREENSHOT_EPILOG)
def audit_report(
    logs: Annotated[
        list[Path],
        typer.Argument(help="Audit log files, or folders (a run's audit/, several runs' folders)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.html and report.json.")],
    evaluation: Annotated[
        Path | None,
        typer.Option(
            help="evaluation.json written by `fedshield evaluate`: adds the confusion matrix "
            "and per-class metrics."
        ),
    ] = None,
    screenshot: Annotated[
        Path | None,
        typer.Option(
            help="Also render report.html in headless Chromium, 1280 px wide, to this PNG."
        ),
    ] = None,
) -> None:
    """Privacy budget audit a data-protection officer can sign: runs, owners and their
    node keys, budgets and their changes, refusals with reasons, epsilon recomputed
    independently, and each data-security requirement mapped to evidence."""
    from fedshield.audit.evaluation import load_evaluation
    from fedshield.audit.render import find_browser

    paths = _log_paths(logs)
    if out.exists() and not out.is_dir():
        raise FedshieldError(
            f"--out {out}: is a file; pass a folder for report.html and report.json"
        )
    scored = load_evaluation(evaluation) if evaluation is not None else None
    if screenshot is not None and find_browser() is None:
        raise FedshieldError(
            f"--screenshot {screenshot}: no Chromium on PATH; install one (Debian: apt-get "
            "install chromium) or drop --screenshot and open report.html in a browser"
        )
    from fedshield.audit.render import write_report
    from fedshield.audit.report import build_report

    report = build_report(paths, inputs=logs, evaluation=scored)
    html_path, json_path = write_report(report, out)
    table = Table("requirement", "status", "evidence")
    for row in report["requirements"]:
        table.add_row(row["name"], row["status"], row["evidence"])
    console.print(table)
    for owner in report["owners"]:
        console.print(
            f"{owner['owner']} ({owner['identity']}): epsilon claimed {owner['final_claimed']:.4f}, "
            f"recomputed {owner['final_recomputed']:.4f}, budget in force {owner['budget']:g}, "
            f"{len(owner['refusals'])} refusals: {owner['status']}",
            highlight=False,
            markup=False,
        )
    console.print(f"Report: {html_path} (and {json_path.name})", highlight=False)
    if screenshot is not None:
        from fedshield.audit.render import PAGE_WIDTH_PX, measure_page
        from fedshield.audit.render import screenshot as take_screenshot

        width, _ = measure_page(html_path)
        take_screenshot(html_path, screenshot)
        console.print(
            f"Screenshot: {screenshot} ({PAGE_WIDTH_PX} px wide; page content {width} px wide"
            + (", OVERFLOWS" if width > PAGE_WIDTH_PX else ", nothing overflows")
            + ")",
            highlight=False,
        )
    if not report["ok"]:
        raise typer.Exit(code=1)
