"""What each owner's epsilon protects, read from its log (issue 25): its privacy unit,
and the figures beside the claim that tell a unit from a record.

Guarantees:
- an entry that names no privacy unit (logs written before units) is per record;
- a ledger keeps one privacy unit, fixed by its first charge: a charge naming another is a
  problem (one epsilon cannot be both per record and per unit);
- a unit-level owner's per-record figure is recomputed here with the audit's accountant,
  not the owners' (``common/group_privacy.record_epsilon_of_unit_run`` is the owners'
  twin): removing one record moves its unit's clipped sum from g to g', both of norm at
  most C, so each training step counts at replace-one, 2C (sigma / 2 at rate 1); count
  releases and steps already accounted at replace-one count as they are; any other
  mechanism in the history is moved too (an upper bound, never below);
- a record-level owner's ``group-privacy-warning`` entries are read as the owner wrote
  them: the figure for its largest unit rests on that unit's size, which never leaves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fedshield.common.audit_events import Field
from fedshield.common.dp_event import DpEvent
from fedshield.common.privacy import PER_RECORD, REPLACE_ONE

UNIT_RECORD = PER_RECORD
KIND_COUNT = "count"
PER_RECORD_BOUND = "replace-one bound at 2C"


def unit_of(data: dict) -> str:
    """The privacy unit an entry names; "record" where it names none (older logs)."""
    return str(data.get(Field.PRIVACY_UNIT) or UNIT_RECORD)


def other_unit_problem(server_round: int, unit: str, ledger_unit: str | None) -> str | None:
    """A charge in another unit than the ledger's (its first charge's), as a problem."""
    if ledger_unit is None or unit == ledger_unit:
        return None
    return (
        f"round {server_round}: charged per {unit!r} on a ledger charged per {ledger_unit!r}; "
        "a ledger keeps one privacy unit, so its epsilon is neither per record nor per unit "
        "(the owner must use one ledger per unit)"
    )


@dataclass(frozen=True)
class ChargedMechanism:
    """What the per-record figure needs of one charge: its logged (accounted) mechanism,
    and whether one record moves it further than the ledger's event says."""

    noise_multiplier: float
    sample_rate: float
    moved_for_a_record: bool


def moved_for_a_record(kind: str, relation: str, unit: str) -> bool:
    """Whether one record moves a charge further than its ledger event accounts: unit-level
    training under add/remove (C per unit, 2C per record). Counts (sensitivity 1), steps
    already accounted at replace-one and per-record charges: no."""
    return unit != UNIT_RECORD and kind != KIND_COUNT and relation != REPLACE_ONE


def per_record_history(
    history: Iterable[DpEvent], charged: Iterable[ChargedMechanism]
) -> list[DpEvent]:
    """The ledger's logged history as one record of a unit-level run sees it: each
    event kept only where every charge of its mechanism is known to keep it, else moved
    to replace-one (sigma / 2, rate 1)."""
    kept: set[tuple[float, float]] = set()
    moved: set[tuple[float, float]] = set()
    for c in charged:
        (moved if c.moved_for_a_record else kept).add((c.noise_multiplier, c.sample_rate))
    keep = kept - moved
    return [
        e
        if (float(e.noise_multiplier), float(e.sample_rate)) in keep
        else DpEvent(e.noise_multiplier / 2.0, 1.0, e.steps)
        for e in history
    ]


@dataclass
class GroupPrivacyWarning:
    """A record-level owner's warning on data with units: the owner's figure for the
    unit with the most records (group privacy), as its log records it."""

    time: str
    server_round: int | None
    unit: str
    largest_unit_records: int
    epsilon_per_record: float
    epsilon_for_largest_unit: float
    delta: float

    def describe(self) -> str:
        return (
            f"the {self.unit!r} with {self.largest_unit_records} records is protected only at "
            f"epsilon {self.epsilon_for_largest_unit:.4f} (group privacy, delta {self.delta:g}; "
            f"epsilon {self.epsilon_per_record:.4f} per record; the owner's figure)"
        )


def group_warning(time: str, data: dict) -> GroupPrivacyWarning:
    """One ``group-privacy-warning`` entry; ValueError, TypeError or KeyError if malformed."""
    server_round = data.get(Field.SERVER_ROUND)
    return GroupPrivacyWarning(
        time=time,
        server_round=None if server_round is None else int(server_round),
        unit=str(data[Field.PRIVACY_UNIT]),
        largest_unit_records=int(data["largest-unit-records"]),
        epsilon_per_record=float(data["epsilon-per-record"]),
        epsilon_for_largest_unit=float(data["epsilon-for-largest-unit"]),
        delta=float(data[Field.DELTA]),
    )
