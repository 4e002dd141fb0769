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

from collections import Counter

from fedshield.audit.charge_check import Tagged, check_charge, epsilon_or_nan, paid_for
from fedshield.audit.owner_records import BudgetChange, Charge, DataFile, OwnerAudit, Refusal
from fedshield.audit.privacy_units import (
    group_warning,
    unit_of,
)
from fedshield.audit.verify import Verification
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.dp_event import DpEvent

REFUSAL_EVENTS = (Event.ROUND_REFUSED, Event.EVALUATE_REFUSED, Event.ROUND_ERROR)
RELEASE_EVENTS = (Event.UPDATE_RELEASED, Event.EVALUATE_RELEASED, Event.UPDATE_RE_RELEASED)


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


def _tag_entries(clients: list[Verification]) -> dict[str, list[Tagged]]:
    """Every owner entry the report uses, grouped by the ledger (owner) it belongs to.

    Entries without a ledger id (refusals, releases, node starts, older logs) belong to
    the ledger met last in the same log, else the one their data file or actor maps to,
    else to a group of their own named after the log.
    """
    by_file, by_actor = _ledger_hints(clients)
    groups: dict[str, list[Tagged]] = {}
    for log in clients:
        run_id = run_key = fingerprint = records = None
        current: str | None = None
        pending: list[Tagged] = []  # entries met before the log names its ledger
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
            tagged = Tagged(entry, str(log.path), run_id, run_key, fingerprint, records)
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


def _refusal(tagged: Tagged) -> Refusal:
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


def _audit_one(ledger_id: str, entries: list[Tagged]) -> OwnerAudit:
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
    # A release that names no charge (no run key, an older log) needs one of its round's
    # training charges that name none, unless the round was re-sent or non-private.
    unnamed: Counter = Counter()
    free: set = set()
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
            else:
                _unnamed_release(audit, data.get(Field.SERVER_ROUND), unnamed, free, unreleased)
        elif kind == Event.EVALUATE_RELEASED:
            audit.evaluate_answers_released += 1
        elif kind == Event.UPDATE_RE_RELEASED:
            audit.updates_re_released += 1
            free.add(data.get(Field.SERVER_ROUND))  # the same update again: no charge
        elif kind == Event.NON_PRIVATE_ROUND:
            free.add(data.get(Field.SERVER_ROUND))  # not DP: claims no charge
        elif kind == Event.DP_CHARGED:
            paid_by = data.get(Field.PAID_BY)
            paid = paid_for(data)
            previous_events = check_charge(
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
            elif data.get(Field.KIND, "train") == "train":
                unnamed[data.get(Field.SERVER_ROUND)] += 1
            refusals_since_change = []
            budget_in_force = audit.charges[-1].budget_in_force
    audit.data_files = _data_files(audit.charges, records_by_file, units_by_file)
    return audit


def _unnamed_release(
    audit: OwnerAudit, here, unnamed: Counter, free: set, unreleased: dict[str, tuple]
) -> None:
    """Match a release that names no charge: a re-sent or non-private round's, else one
    of its round's charges (one naming none first); with none left, it is a problem."""
    if here in free:
        free.discard(here)
        return
    if unnamed[here] > 0:
        unnamed[here] -= 1
        return
    named = next((k for k, v in unreleased.items() if v[0] == here), None)
    if named is not None:
        del unreleased[named]
        return
    audit.problems.append(
        f"round {here}: an update released under no charge of its round (none left "
        "unreleased, and the round was not re-sent or non-private)"
    )


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
            epsilon_alone=epsilon_or_nan(
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
