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
    group_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Also show what the ledger gives a group of K records: per record, a unit "
            "of K records (group privacy); per unit, one record (or K of one unit).",
        ),
    ] = None,
) -> None:
    """Print every DP release charged to an owner, its privacy unit, its budget changes and
    epsilon spent per unit."""
    import datetime as dt

    from fedshield.client.ledger import PrivacyLedger
    from fedshield.client.ledger_entries import UNIT_RECORD

    ledger = PrivacyLedger(ledger_dir)
    state = ledger.state()
    table = Table(
        "run",
        "round",
        "kind",
        "unit",
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
            e.unit,
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
        + " (add-remove: one record's, or unit's, presence is protected and their count leaves "
        "only as the 'count' release; replace-one: the owner declared its count public; noise "
        "multipliers of replace-one entries are the accounted ones, sigma/2 at rate 1)"
    )
    for change in state.budgets:
        when = dt.datetime.fromtimestamp(change.recorded_at, dt.UTC).isoformat(timespec="seconds")
        console.print(f"budget {change.old} -> {change.new:g} at {when}")
    from fedshield.common.privacy import epsilon_rdp

    events = [e.event for e in state.entries]
    units = list(dict.fromkeys(e.unit for e in state.entries)) or [UNIT_RECORD]
    console.print(_unit_line(units), highlight=False)
    console.print(
        f"epsilon spent per {' and '.join(units)} at delta {delta:g}: "
        f"{ledger.epsilon(delta):.4f} "
        f"({len(state.entries)} events, ledger {state.ledger_id}; accountant: privacy loss "
        f"distribution; RDP, looser, says {epsilon_rdp(events, delta):.4f})"
    )
    if group_size is not None:
        console.print(_group_line(state.entries, units, delta, group_size), highlight=False)


def _unit_line(units: list[str]) -> str:
    """What one contribution to this ledger is, in a sentence."""
    from fedshield.client.ledger_entries import UNIT_RECORD

    if len(units) > 1:
        return (
            f"privacy unit: MIXED ({', '.join(units)}): a ledger keeps one unit, so its epsilon "
            "is neither per record nor per unit; charge each unit on a ledger of its own"
        )
    if units[0] == UNIT_RECORD:
        return (
            "privacy unit: record (epsilon protects one record; a person with k records only "
            "at the group-privacy epsilon: --group-size k)"
        )
    return f"privacy unit: {units[0]} (epsilon protects one '{units[0]}', all its records together)"


def _group_line(entries: list, units: list[str], delta: float, group_size: int) -> str:
    """A record-level ledger's epsilon for a unit of ``group_size`` records, or a unit-level
    ledger's for one record (common/group_privacy.py); ``entries`` are its LedgerEntry."""
    from fedshield.audit.privacy_units import moved_for_a_record
    from fedshield.client.ledger_entries import UNIT_RECORD
    from fedshield.common.group_privacy import group_epsilon, record_epsilon_of_unit_run

    if len(units) > 1:
        return "no group figure for a ledger of mixed units (see above)"
    unit = units[0]
    if unit == UNIT_RECORD:
        grouped = group_epsilon([e.event for e in entries], delta, group_size)
        return (
            f"a unit of {group_size} records: epsilon {grouped:.4f} at delta {delta:g} "
            "(group privacy over these per-record charges)"
        )
    # The audit's rule of which charges move further for one record than for its unit.
    moved = [moved_for_a_record(e.kind, e.relation, e.unit) for e in entries]
    trained = [e.event for e, m in zip(entries, moved, strict=True) if m]
    as_accounted = [e.event for e, m in zip(entries, moved, strict=True) if not m]
    per_record = record_epsilon_of_unit_run(trained, as_accounted, delta)
    return (
        f"one record (or any {group_size} records of one '{unit}'): epsilon {per_record:.4f} at "
        f"delta {delta:g} (replace-one bound at 2C: removing records of one '{unit}' moves its "
        "clipped sum by at most twice the clipping norm)"
    )
