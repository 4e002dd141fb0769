"""``fedshield ledger``: read a data owner's privacy ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedshield.cli.shared import console

ledger_app = typer.Typer(help="Read a data owner's privacy ledger.", no_args_is_help=True)


@ledger_app.command("show")
def ledger_show(
    ledger_dir: Annotated[Path, typer.Option(help="Ledger folder.")] = Path("~/.fedshield/ledgers"),
    delta: Annotated[float, typer.Option(help="delta at which to report epsilon.")] = 1e-5,
) -> None:
    """Print every DP release charged to an owner, its budget changes and epsilon spent."""
    import datetime as dt

    from fedshield.client.ledger import PrivacyLedger

    ledger = PrivacyLedger(ledger_dir)
    state = ledger.state()
    table = Table(
        "run",
        "round",
        "kind",
        "definition",
        "noise multiplier",
        "sample rate",
        "steps",
        "records",
        "released",
    )
    for e in state.entries:
        table.add_row(
            str(e.run_id),
            str(e.server_round),
            e.kind,
            e.relation,
            f"{e.event.noise_multiplier:.4f}",
            f"{e.event.sample_rate:.4f}",
            str(e.event.steps),
            str(e.records),
            "" if e.released is None else str(e.released),
        )
    console.print(table)
    relations = sorted({e.relation for e in state.entries})
    console.print(
        "neighbouring relation: "
        + (", ".join(relations) or "none yet")
        + " (add-remove: one record's presence is protected and the record count leaves only "
        "as the 'count' release; replace-one: the owner declared its count public; noise "
        "multipliers of replace-one entries are the accounted ones, sigma/2 at rate 1)"
    )
    for change in state.budgets:
        when = dt.datetime.fromtimestamp(change.recorded_at, dt.UTC).isoformat(timespec="seconds")
        console.print(f"budget {change.old} -> {change.new:g} at {when}")
    from fedshield.common.privacy import epsilon_rdp

    events = [e.event for e in state.entries]
    console.print(
        f"epsilon spent at delta {delta:g}: {ledger.epsilon(delta):.4f} "
        f"({len(state.entries)} events, ledger {state.ledger_id}; accountant: privacy loss "
        f"distribution; RDP, looser, says {epsilon_rdp(events, delta):.4f})"
    )
