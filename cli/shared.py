"""What every command shares: the consoles, --debug, the --insecure flag and warning,
key=value parsing and the summary of a finished run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console

from fedshield.common.errors import FedshieldError

# Output that is not a terminal (a pipe, a log file, CI) has no edge to wrap tables at;
# Rich's 80 columns there broke owner names and fingerprints across lines.
PIPED_WIDTH = 160


def _width(stream: TextIO) -> int | None:
    """None (Rich asks the terminal, or reads COLUMNS) on a terminal or with COLUMNS set;
    else PIPED_WIDTH."""
    if os.environ.get("COLUMNS", "").isdigit() or stream.isatty():
        return None
    return PIPED_WIDTH


console = Console(soft_wrap=True, width=_width(sys.stdout))
err_console = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr))
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


# The owner's desensitisation, where the owner's text is read on its own machine (data
# check, predict, evaluate): the same policy as its node's, so use sees what training saw.
DesensitiseFlag = Annotated[
    bool,
    typer.Option(help="Remove identifiers before the model reads the text, as training did."),
]
DesensitisePolicyOption = Annotated[
    str, typer.Option(help="Your desensitisation policy (TOML); '' = the default policy.")
]
PrivacyUnitOption = Annotated[
    str,
    typer.Option(
        help="The column naming whose each record is (a patient, a customer): epsilon then "
        "protects one such unit, all its records together (docs/design/privacy-unit.md). "
        "'' = one record."
    ),
]
MaxRecordsPerUnitOption = Annotated[
    int,
    typer.Option(
        help="With --privacy-unit: the most records of one unit a round trains on (a fresh "
        "random subset above it); bounds compute, not privacy."
    ),
]
RecordLevelFlag = Annotated[
    bool,
    typer.Option(
        help="With --privacy-unit: keep DP per record and warn, each round, what that "
        "means for the unit with the most records (group privacy)."
    ),
]
KeyDirOption = Annotated[
    Path, typer.Option(help="Your key folder (the pseudonym key, if your policy uses one).")
]

PkiDir = Annotated[
    Path, typer.Option("--dir", help="PKI folder (keep ca.key offline after issuing).")
]


def print_final(out_dir: Path) -> None:
    """Print what the run achieved; a run that failed or stopped early raises (exit 6, 7)."""
    import json

    from fedshield.common.errors import RunFailed, RunStoppedEarly

    metrics_path = out_dir / "metrics.json"
    if not metrics_path.exists():
        raise FedshieldError(f"the run ended without writing {metrics_path}; rerun with --debug")
    metrics = json.loads(metrics_path.read_text())
    final = metrics["final"]
    run = metrics.get("run") or {}
    # Simulated owners' privacy unit (a deployment's owners keep theirs to themselves).
    unit = "" if run.get("record-level") else str(run.get("privacy-unit") or "")
    if final is None:
        raise FedshieldError(f"the run stopped before its last round; see {metrics_path}")
    reasons = "; ".join(final.get("reasons", [])) or "no reason recorded"
    if final.get("outcome") == "failed":
        raise RunFailed(
            f"no owner's update was accepted in {final['rounds_completed']} round(s), so no "
            f"model was saved: {reasons}. Metrics: {metrics_path}"
        )
    privacy = (
        f"max epsilon per client {final['epsilon_max']:.3f}"
        + (f" per '{unit}' (one record: fedshield ledger show --group-size 1)" if unit else "")
        if final["dp"]
        else "NO privacy (--no-dp)"
    )
    per_class = (
        f" (macro F1 {final['macro_f1']:.4f}, worst class recall {final['worst_class_recall']:.4f})"
        if final.get("macro_f1") is not None
        else ""
    )
    console.print(
        f"[bold]Held-out accuracy {final['accuracy']:.4f}[/]{per_class} after "
        f"{final['rounds_completed']} rounds "
        f"({final.get('rounds_with_updates', final['rounds_completed'])} with accepted "
        f"updates; started at {final.get('initial_accuracy', 0.0):.4f}); {privacy}. "
        f"Model: {out_dir / 'model.pt'}; metrics: {metrics_path}",
        highlight=False,
    )
    if final.get("never_predicted"):
        console.print(
            f"[yellow]Warning: the model never predicts {', '.join(final['never_predicted'])} "
            "on the evaluation data, though it holds records of them: accuracy hides whole "
            "classes lost (per-class recall per round: metrics.json). DP noise erases a class "
            "with few records; start from a head that knows each class: --class-descriptions "
            "FILE with --model minilm (docs/USING.md, 'Class descriptions').[/]",
            highlight=False,
        )
    if final.get("initial_accuracy", 0.0) > final["accuracy"]:
        console.print(
            f"[yellow]This run ended below the model it started from "
            f"({final['accuracy']:.4f} < {final['initial_accuracy']:.4f}); that model is unchanged "
            "in its own run folder.[/]"
        )
    if final.get("outcome") == "stopped-early":
        raise RunStoppedEarly(
            f"the run stopped before its {final.get('rounds_planned', '?')} planned rounds: "
            f"{reasons}. The model above is saved; owners must raise their budgets for more"
        )


def require_file(path: str | Path, option: str, builtin: tuple[str, ...] = ()) -> None:
    """A named input file must exist before anything heavy is imported or started."""
    if str(path) in builtin:
        return
    path = Path(path).expanduser()
    if not path.exists():
        hint = f" (or use a built-in name: {', '.join(builtin)})" if builtin else ""
        raise FedshieldError(f"{path}: no such file; check the path passed to {option}{hint}")
    if path.is_dir():
        raise FedshieldError(f"{path}: is a folder; pass the file itself to {option}")


def described_classes(source: str) -> str:
    """``--class-descriptions``: 'names', '', or the file as an absolute path (the server
    reads it from its own process, wherever that runs)."""
    if source in ("", "names"):
        return source
    require_file(source, "--class-descriptions")
    return str(Path(source).expanduser().resolve())


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
