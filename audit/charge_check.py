"""One logged ``dp-charged`` entry, checked: its epsilon recomputed from the ledger
history it carries, by an accountant independent of the owners' (audit/epsilon.py), the
history continuing the previous entry's, the budget in force respected, and a reused
charge (a retried round released under the charge of an attempt that sent nothing,
client/releases.py) matched against an unreleased charge of the same round, event and
data. audit/owners.py walks the logs and calls ``check_charge`` for each entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedshield.audit.epsilon import claim_problem, independent_epsilon
from fedshield.audit.owner_records import Charge, OwnerAudit
from fedshield.audit.privacy_units import (
    UNIT_RECORD,
    ChargedMechanism,
    moved_for_a_record,
    other_unit_problem,
    per_record_history,
    unit_of,
)
from fedshield.common.audit_events import Field
from fedshield.common.dp_event import DpEvent
from fedshield.common.privacy import LEGACY_ACCOUNTANT


@dataclass
class Tagged:
    """A client entry with what the walk through its log learned around it."""

    entry: dict
    log: str
    run_id: int | None
    run_key: str | None
    data_fingerprint: str | None
    records: int | None


def logged_event(value) -> DpEvent:
    """One logged event, read strictly: a positive finite noise multiplier, a sample rate
    in (0, 1] and a whole number of steps >= 1, else ValueError (a negative or fractional
    count of steps would subtract from, or shave, the epsilon recomputed)."""
    sigma, q, steps = (
        (value["noise-multiplier"], value["sample-rate"], value["steps"])
        if isinstance(value, dict)
        else value
    )
    if isinstance(steps, float) and steps.is_integer():
        steps = int(steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps {steps!r} is not a whole number >= 1")
    sigma, q = float(sigma), float(q)
    if not (math.isfinite(sigma) and sigma > 0 and 0 < q <= 1):
        raise ValueError(f"noise multiplier {sigma!r} or sample rate {q!r} out of range")
    return DpEvent(sigma, q, steps)


def composed(events) -> list[DpEvent]:
    """One event per (sigma, q), steps summed, sorted: written here, not taken from the
    owners' code (``privacy.composed_history``), so the audit stays independent of it."""
    steps: dict[tuple[float, float], int] = {}
    for event in events:
        key = (float(event.noise_multiplier), float(event.sample_rate))
        steps[key] = steps.get(key, 0) + int(event.steps)
    return [DpEvent(sigma, q, n) for (sigma, q), n in sorted(steps.items())]


def paid_for(data: dict) -> tuple:
    """What a training charge paid for: a reuse must match it exactly."""
    return tuple(
        data.get(key)
        for key in (
            Field.SERVER_ROUND,
            Field.NOISE_MULTIPLIER,
            Field.SAMPLE_RATE,
            Field.STEPS,
            Field.DATA_FINGERPRINT,
            Field.RELATION,
            Field.KIND,
        )
    )


def check_charge(
    audit: OwnerAudit,
    tagged: Tagged,
    previous_events: list[DpEvent] | None,
    budget_in_force: float | None,
    reusable: bool = False,
) -> list[DpEvent]:
    """Recompute one charge, judge it against the budget in force; returns its history.

    ``reusable``: the entry names (``paid-by``) a training charge for the same round,
    event, data and relation whose update was not released since; only then may an entry
    that reuses a charge add nothing to the history.
    """
    data = tagged.entry["data"]
    server_round = int(data[Field.SERVER_ROUND])
    # Composed (one event per mechanism, steps summed), whether the entry carries the
    # whole history (older logs) or the composed one: the same epsilon either way.
    try:
        events = composed(logged_event(e) for e in data[Field.LEDGER_EVENTS])
        new_event = logged_event(
            [data[Field.NOISE_MULTIPLIER], data[Field.SAMPLE_RATE], data[Field.STEPS]]
        )
    except (ValueError, TypeError, KeyError) as exc:
        audit.problems.append(f"round {server_round}: a logged DP event is malformed ({exc})")
        return previous_events or []
    if (
        data.get(Field.REUSES_CHARGE_OF) is not None
        and previous_events is not None
        and composed(previous_events) == events
    ):
        # The owner retried a round it had charged and logged and never sent: the
        # charge is in the history already, so this entry adds nothing to it.
        audit.charges_reused += 1
        if not reusable:
            audit.problems.append(
                f"round {server_round}: reuses a charge that names no unreleased charge of "
                "this round, event and data, or whose update was released: a second update "
                "without a charge"
            )
        return events
    if data.get(Field.REUSES_CHARGE_OF) is not None:
        audit.charges_reused += 1  # the first attempt's entry was lost: this one logs it
    if previous_events is not None and composed([*previous_events, new_event]) != events:
        audit.problems.append(
            f"round {server_round}: ledger history differs from the previous entry's plus "
            "this charge (events were removed or changed between rounds)"
        )
    if not any(
        (e.noise_multiplier, e.sample_rate) == (new_event.noise_multiplier, new_event.sample_rate)
        and e.steps >= new_event.steps
        for e in events
    ):
        audit.problems.append(f"round {server_round}: the charged event is not in the ledger")
    delta = float(data[Field.DELTA])
    claimed = float(data[Field.EPSILON_AFTER])
    # entries written before the PLD switch name no accountant: they were charged by RDP
    accountant = str(data.get(Field.ACCOUNTANT, LEGACY_ACCOUNTANT))
    recomputed, rdp, mismatch = claim_problem(claimed, events, delta, accountant)
    if mismatch:
        audit.problems.append(f"round {server_round}: {mismatch}")
    unit = unit_of(data)
    ledger_unit = audit.charges[0].privacy_unit if audit.charges else None
    if switched := other_unit_problem(server_round, unit, ledger_unit):
        audit.problems.append(switched)
    recorded_budget = float(data[Field.EPSILON_BUDGET])
    if budget_in_force is not None and budget_in_force != recorded_budget:
        audit.problems.append(
            f"round {server_round}: the charge records budget {recorded_budget:g}, but the "
            f"owner's last budget change set {budget_in_force:g}"
        )
    in_force = recorded_budget if budget_in_force is None else min(budget_in_force, recorded_budget)
    if claimed > in_force:
        audit.problems.append(
            f"round {server_round}: epsilon {claimed:.4f} exceeds the budget in force {in_force:g}"
        )
    audit.charges.append(
        Charge(
            time=tagged.entry["ts"],
            run_id=tagged.run_id,
            run_key=tagged.run_key,
            server_round=server_round,
            kind=str(data.get(Field.KIND, "train")),
            relation=str(data.get(Field.RELATION, "add-remove (count public)")),
            data_fingerprint=str(data.get(Field.DATA_FINGERPRINT, "")),
            noise_multiplier=new_event.noise_multiplier,
            sample_rate=new_event.sample_rate,
            steps=new_event.steps,
            delta=delta,
            epsilon_claimed=claimed,
            epsilon_recomputed=recomputed,
            epsilon_rdp=rdp,
            accountant=accountant,
            budget_in_force=in_force,
            within_budget=claimed <= in_force,
            privacy_unit=unit,
        )
    )
    audit.charges[-1].epsilon_per_record = per_record_epsilon(audit.charges, events, delta)
    audit.budget, audit.delta = in_force, delta
    return events


def per_record_epsilon(charges: list[Charge], events: list[DpEvent], delta: float) -> float | None:
    """A unit-level ledger's epsilon for one record (audit/privacy_units.py), by the
    audit's accountant; None for a ledger charged per record only."""
    if all(c.privacy_unit == UNIT_RECORD for c in charges):
        return None
    mechanisms = [
        ChargedMechanism(
            c.noise_multiplier,
            c.sample_rate,
            moved_for_a_record(c.kind, c.relation, c.privacy_unit),
        )
        for c in charges
    ]
    return epsilon_or_nan(composed(per_record_history(events, mechanisms)), delta)


def epsilon_or_nan(events: list[DpEvent], delta: float) -> float:
    try:
        return independent_epsilon(events, delta)
    except (ArithmeticError, MemoryError, ValueError):
        return math.nan  # the charges themselves carry the problem
