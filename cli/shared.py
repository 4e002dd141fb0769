"""What every command shares: the consoles, --debug, the --insecure flag and warning,
key=value parsing and the summary of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedshield.common.errors import FedshieldError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
state = {"debug": False}


def quiet_libraries() -> None:
    import logging

    if not state["debug"]:
        for name in ("flwr", "ray", "opacus"):
            logging.getLogger(name).setLevel(logging.ERROR)


InsecureFlag = Annotated[
    bool, typer.Option("--insecure", help="PLAINTEXT, no node authentication. For debugging only.")
]


def warn_insecure() -> None:
    err_console.print(
        "[bold red]WARNING: --insecure: plaintext traffic, no node authentication. Never use this with real data.[/]"
    )


PkiDir = Annotated[
    Path, typer.Option("--dir", help="PKI folder (keep ca.key offline after issuing).")
]


def print_final(out_dir: Path) -> None:
    import json

    metrics_path = out_dir / "metrics.json"
    if not metrics_path.exists():
        raise FedshieldError(f"the run ended without writing {metrics_path}; rerun with --debug")
    final = json.loads(metrics_path.read_text())["final"]
    if final is None:
        raise FedshieldError(f"the run stopped before its last round; see {metrics_path}")
    privacy = (
        f"max epsilon per client {final['epsilon_max']:.3f}"
        if final["dp"]
        else "NO privacy (--no-dp)"
    )
    console.print(
        f"[bold]Held-out accuracy {final['accuracy']:.4f}[/] after {final['rounds_completed']} rounds; "
        f"{privacy}. Model: {out_dir / 'model.pt'}; metrics: {metrics_path}"
    )


def parse_key_values(items: list[str]) -> dict:
    import tomllib

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FedshieldError(f"--run-config {item!r}: expected key=value")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    return values
