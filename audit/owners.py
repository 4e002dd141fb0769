"""Each data owner's privacy record, read from the owners' audit logs: one entry per
privacy ledger, whatever number of logs, runs and data files it spans.

Guarantees:
- an owner is its ledger (``ledger-id`` of its ``dp-charged`` and ``budget-changed``
  entries), so the same owner met in several runs' logs, or with several data files,
  is one ``OwnerAudit`` with one total; the files are listed beneath it;
- every charge is judged against the budget in force when it was made (the owner's
  last recorded budget change before it), and every budget change is listed with its
  time and whether it followed a refusal: raising a budget after a refusal is shown,
  never folded into a plain "ok";
- epsilon is recomputed from the whole logged ledger history of each charge (composed: one
  event per mechanism, steps summed, as the entries carry it) with an accountant
  independent of the owners' (audit/epsilon.py ``claim_problem``), and each entry's
  history must be the previous entry's plus its own charge;
- refusals keep their code, the code's fixed meaning (``wire.REFUSAL_REASONS``) and the
  owner's own reason sentence;
- each charge's epsilon is per the privacy unit its entry names (audit/privacy_units.py:
  "record" where none), a ledger with charges in two units is a problem, and a
  unit-level ledger's figure for one record is recomputed beside its claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedshield.audit.epsilon import claim_problem, independent_epsilon
from fedshield.audit.owner_records import BudgetChange, Charge, DataFile, OwnerAudit, Refusal
from fedshield.audit.privacy_units import (
    UNIT_RECORD,
    ChargedMechanism,
    group_warning,
    moved_for_a_record,
    other_unit_problem,
    per_record_history,
    unit_of,
)
from fedshield.audit.verify import Verification
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.dp_event import DpEvent
from fedshield.common.privacy import LEGACY_ACCOUNTANT

REFUSAL_EVENTS = (Event.ROUND_REFUSED, Event.EVALUATE_REFUSED, Event.ROUND_ERROR)
RELEASE_EVENTS = (Event.UPDATE_RELEASED, Event.EVALUATE_RELEASED, Event.UPDATE_RE_RELEASED)


@dataclass
class _Tagged:
    """A client entry with what the walk through its log learned around it."""

    entry: dict
    log: str
    run_id: int | None
    run_key: str | None
    data_fingerprint: str | None
    records: int | None


def _ledger_hints(clients: list[Verification]) -> tuple[dict, dict]:
    """(actor, data fingerprint) -> ledger and actor -> ledgers, from entries that name one."""
    by_file: dict[tuple[str, str], str] = {}
    by_actor: dict[str, set[str]] = {}
    for log in clients:
        for entry in log.entries:
            ledger = entry["data"].get(Field.LEDGER_ID)
            if entry["type"] not in (Event.DP_CHARGED, Event.BUDGET_CHANGED) or not ledger:
                continue
            by_actor.setdefault(entry["actor"], set()).add(ledger)
            if entry["data"].get(Field.DATA_FINGERPRINT):
                by_file[(entry["actor"], entry["data"][Field.DATA_FINGERPRINT])] = ledger
    return by_file, by_actor


def _tag_entries(clients: list[Verification]) -> dict[str, list[_Tagged]]:
    """Every owner entry the report uses, grouped by the ledger (owner) it belongs to.

    Entries without a ledger id (refusals, releases, node starts, older logs) belong to
    the ledger met last in the same log, else the one their data file or actor maps to,
    else to a group of their own named after the log.
    """
    by_file, by_actor = _ledger_hints(clients)
    groups: dict[str, list[_Tagged]] = {}
    for log in clients:
        run_id = run_key = fingerprint = records = None
        current: str | None = None
        pending: list[_Tagged] = []  # entries met before the log names its ledger
        for entry in log.entries:
            data = entry["data"]
            if entry["type"] == Event.ROUND_START:
                run_id, records = data.get(Field.RUN_ID), data.get(Field.RECORDS)
                run_key = data.get(Field.PLAN, {}).get("run-key")
                fingerprint = data.get(Field.DATA_FINGERPRINT)
            ledger = data.get(Field.LEDGER_ID) if isinstance(data, dict) else None
            if not ledger and entry["type"] == Event.DP_CHARGED:
                ledger = data.get(Field.DATA_FINGERPRINT)  # logs before ledgers had ids
            if not ledger and fingerprint:
                ledger = by_file.get((entry["actor"], fingerprint))
            if not ledger and len(by_actor.get(entry["actor"], ())) == 1:
                ledger = next(iter(by_actor[entry["actor"]]))
            ledger = ledger or current
            tagged = _Tagged(entry, str(log.path), run_id, run_key, fingerprint, records)
            if ledger is None:
                pending.append(tagged)
                continue
            current = ledger
            groups.setdefault(ledger, []).extend(pending)
            pending = []
            groups.setdefault(ledger, []).append(tagged)
        if pending:
            groups.setdefault(f"(no ledger in {log.path})", []).extend(pending)
    for tagged in groups.values():
        tagged.sort(key=lambda t: t.entry["ts"])
    return groups


def _refusal(tagged: _Tagged) -> Refusal:
    data = tagged.entry["data"]
    if tagged.entry["type"] == Event.ROUND_ERROR:
        code, reason = wire.ERROR_INTERNAL, str(data.get(Field.ERROR, ""))
    else:
        code, reason = data.get(Field.CODE), str(data.get(Field.REASON, ""))
    return Refusal(
        time=tagged.entry["ts"],
        run_id=tagged.run_id,
        server_round=data.get(Field.SERVER_ROUND),
        kind="evaluate" if tagged.entry["type"] == Event.EVALUATE_REFUSED else "train",
        code=code,
        meaning=wire.REFUSAL_REASONS.get(code, "no code recorded") if code else "no code recorded",
        reason=reason,
    )


def _audit_one(ledger_id: str, entries: list[_Tagged]) -> OwnerAudit:
    actors = sorted({t.entry["actor"] for t in entries if t.entry["type"] != Event.CHECKPOINT})
    audit = OwnerAudit(" / ".join(actors), ledger_id)
    audit.logs = sorted({t.log for t in entries})
    previous_events: list[DpEvent] | None = None
    budget_in_force: float | None = None
    refusals_since_change: list[Refusal] = []
    records_by_file: dict[str, int] = {}
    units_by_file: dict[str, int] = {}
    # Training charges not yet released, by the attempt that paid them ("paid-by"), with
    # what they paid for: only such a charge, matched exactly, can a later entry reuse.
    unreleased: dict[str, tuple] = {}
    for tagged in entries:
        entry, data = tagged.entry, tagged.entry["data"]
        kind = entry["type"]
        if kind == Event.NODE_START:
            fingerprint = data.get(Field.NODE_KEY_FINGERPRINT)
            if fingerprint and fingerprint not in audit.key_fingerprints:
                audit.key_fingerprints.append(fingerprint)
        elif kind == Event.ROUND_START:
            node_id = data.get(Field.NODE_ID)
            if node_id is not None and node_id not in audit.node_ids:
                audit.node_ids.append(node_id)
            if data.get(Field.DATA_FINGERPRINT) and data.get(Field.RECORDS) is not None:
                records_by_file[data[Field.DATA_FINGERPRINT]] = int(data[Field.RECORDS])
            if data.get(Field.DATA_FINGERPRINT) and isinstance(data.get("units"), int):
                units_by_file[data[Field.DATA_FINGERPRINT]] = data["units"]
            if not audit.charges:
                audit.unit_at_round_start = unit_of(data)
        elif kind == Event.GROUP_PRIVACY_WARNING:
            try:
                audit.group_warnings.append(group_warning(entry["ts"], data))
            except (ValueError, TypeError, KeyError) as exc:
                audit.problems.append(f"a group-privacy warning is malformed ({exc!r})")
        elif kind in REFUSAL_EVENTS:
            refusal = _refusal(tagged)
            refusal.after_charges, refusal.budget_in_force = len(audit.charges), budget_in_force
            audit.refusals.append(refusal)
            refusals_since_change.append(refusal)
        elif kind == Event.BUDGET_CHANGED:
            new = float(data[Field.NEW_BUDGET])
            old = data.get(Field.OLD_BUDGET)
            audit.budget_changes.append(
                BudgetChange(
                    entry["ts"],
                    None if old is None else float(old),
                    new,
                    len(refusals_since_change),
                    refusals_since_change[-1].time if refusals_since_change else None,
                )
            )
            refusals_since_change = []
            budget_in_force = new
            audit.budget = new
        elif kind == Event.UPDATE_RELEASED:
            audit.updates_released += 1
            if data.get(Field.PAID_BY):
                paid = unreleased.pop(data[Field.PAID_BY], None)
                if paid is None or paid[0] != data.get(Field.SERVER_ROUND):
                    audit.problems.append(
                        f"round {data.get(Field.SERVER_ROUND)}: an update released under a "
                        "charge that is unknown, of another round, or already released: an "
                        "update without a charge"
                    )
            else:  # a release that names no charge may be any of its round's
                here = data.get(Field.SERVER_ROUND)
                unreleased = {k: v for k, v in unreleased.items() if v[0] != here}
        elif kind == Event.EVALUATE_RELEASED:
            audit.evaluate_answers_released += 1
        elif kind == Event.UPDATE_RE_RELEASED:
            audit.updates_re_released += 1
        elif kind == Event.DP_CHARGED:
            paid_by = data.get(Field.PAID_BY)
            paid = _paid_for(data)
            previous_events = _check_charge(
                audit,
                tagged,
                previous_events,
                budget_in_force,
                bool(paid_by) and unreleased.get(paid_by) == paid,
            )
            # Only a training charge with its attempt named can be reused; an evaluate or
            # count charge neither allows nor clears one.
            if paid_by and data.get(Field.KIND, "train") == "train":
                unreleased[paid_by] = paid
            refusals_since_change = []
            budget_in_force = audit.charges[-1].budget_in_force
    audit.data_files = _data_files(audit.charges, records_by_file, units_by_file)
    return audit


def _logged_event(value) -> DpEvent:
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


def _composed(events) -> list[DpEvent]:
    """One event per (sigma, q), steps summed, sorted: written here, not taken from the
    owners' code (``privacy.composed_history``), so the audit stays independent of it."""
    steps: dict[tuple[float, float], int] = {}
    for event in events:
        key = (float(event.noise_multiplier), float(event.sample_rate))
        steps[key] = steps.get(key, 0) + int(event.steps)
    return [DpEvent(sigma, q, n) for (sigma, q), n in sorted(steps.items())]


def _paid_for(data: dict) -> tuple:
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


def _check_charge(
    audit: OwnerAudit,
    tagged: _Tagged,
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
        events = _composed(_logged_event(e) for e in data[Field.LEDGER_EVENTS])
        new_event = _logged_event(
            [data[Field.NOISE_MULTIPLIER], data[Field.SAMPLE_RATE], data[Field.STEPS]]
        )
    except (ValueError, TypeError, KeyError) as exc:
        audit.problems.append(f"round {server_round}: a logged DP event is malformed ({exc})")
        return previous_events or []
    if (
        data.get(Field.REUSES_CHARGE_OF) is not None
        and previous_events is not None
        and _composed(previous_events) == events
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
    if previous_events is not None and _composed([*previous_events, new_event]) != events:
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
    audit.charges[-1].epsilon_per_record = _per_record_epsilon(audit.charges, events, delta)
    audit.budget, audit.delta = in_force, delta
    return events


def _per_record_epsilon(charges: list[Charge], events: list[DpEvent], delta: float) -> float | None:
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
    return _epsilon_or_nan(_composed(per_record_history(events, mechanisms)), delta)


def _epsilon_or_nan(events: list[DpEvent], delta: float) -> float:
    try:
        return independent_epsilon(events, delta)
    except (ArithmeticError, MemoryError, ValueError):
        return math.nan  # the charges themselves carry the problem


def _data_files(
    charges: list[Charge], records: dict[str, int], units: dict[str, int]
) -> list[DataFile]:
    files: dict[str, list[Charge]] = {}
    for charge in charges:
        files.setdefault(charge.data_fingerprint, []).append(charge)
    return [
        DataFile(
            fingerprint=fingerprint,
            records=records.get(fingerprint),
            charges=len(group),
            epsilon_alone=_epsilon_or_nan(
                [DpEvent(c.noise_multiplier, c.sample_rate, c.steps) for c in group],
                group[-1].delta,
            ),
            first_charge=group[0].time,
            last_charge=group[-1].time,
            units=units.get(fingerprint),
        )
        for fingerprint, group in files.items()
    ]


def owner_audits(clients: list[Verification]) -> list[OwnerAudit]:
    """One ``OwnerAudit`` per ledger found in the owners' logs, in order of first entry."""
    groups = _tag_entries(clients)
    audits = [_audit_one(ledger, entries) for ledger, entries in groups.items()]
    relevant = [
        a for a in audits if a.charges or a.refusals or a.budget_changes or a.updates_released
    ]
    return sorted(relevant, key=lambda a: (a.owner, a.ledger_id))
