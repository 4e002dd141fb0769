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


@audit_app.command("report")
def audit_report(
    logs: Annotated[
        list[Path], typer.Argument(help="Audit log files, or folders (e.g. a run's audit/).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.html and report.json.")],
) -> None:
    """Privacy budget audit: recompute each owner's epsilon independently, map requirements to evidence."""
    from fedshield.audit.render import write_report
    from fedshield.audit.report import build_report

    report = build_report(_log_paths(logs))
    html_path, json_path = write_report(report, out)
    table = Table("requirement", "status", "evidence")
    for row in report["requirements"]:
        table.add_row(row["name"], row["status"], row["evidence"])
    console.print(table)
    for owner in report["owners"]:
        console.print(
            f"{owner['owner']}: epsilon claimed {owner['final_claimed']:.4f}, recomputed "
            f"{owner['final_recomputed']:.4f}, budget {owner['budget']:g}: {'ok' if owner['ok'] else owner['problems']}"
        )
    console.print(f"Report: {html_path} (and {json_path.name})")
    if not report["ok"]:
        raise typer.Exit(code=1)
