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
- epsilon is recomputed from the whole logged ledger history of each charge with an
  accountant independent of the owners' (``independent_epsilon``);
- refusals keep their code, the code's fixed meaning (``wire.REFUSAL_REASONS``) and the
  owner's own reason sentence.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from fedshield.audit.verify import Verification
from fedshield.common import wire
from fedshield.common.audit_events import Event, LoggedDpEvent
from fedshield.common.privacy import (
    ACCOUNTANT,
    LEGACY_ACCOUNTANT,
    DpEvent,
    epsilon_gaussian_exact,
    pld_applies,
)

TOLERANCE = 0.01
# A claim below the independent figure by more than numerical noise between two
# accountants (seen: 0.03%) is under-reporting, whatever the 1% tolerance says.
UNDER_CLAIM_TOLERANCE = 0.002
# RDP is a looser upper bound than PLD: 5% to 2.7x above it on a grid of these
# mechanisms (sample rates 0.02-1, 1-400 steps, sigma 0.6-30), plus a floor of about
# 0.1 from its finite orders. A PLD claim above RDP means one of the two is broken;
# how far RDP sits above is shown, not judged (it is RDP's looseness, not an error).
SIMULATED = "simulated (no node key recorded)"
REFUSAL_EVENTS = (Event.ROUND_REFUSED, Event.EVALUATE_REFUSED, Event.ROUND_ERROR)
RELEASE_EVENTS = (Event.UPDATE_RELEASED, Event.EVALUATE_RELEASED, Event.UPDATE_RE_RELEASED)
RECOMPUTATION = (
    "claims by PLD (the owners' accountant of record): full-batch histories by the exact "
    "closed form of the composed Gaussian, others by Opacus's PRV accountant (an interval "
    "holding the true epsilon); claims by RDP (ledgers from before the PLD switch): "
    "dp-accounting's RdpAccountant. Cross-check: dp-accounting's RdpAccountant on every charge."
)


def _as_events(events: list[LoggedDpEvent]) -> list[DpEvent]:
    return [DpEvent(e.noise_multiplier, e.sample_rate, int(e.steps)) for e in events]


def rdp_epsilon(events: list[LoggedDpEvent], delta: float) -> float:
    """Epsilon of Poisson-subsampled Gaussian events, composed by dp-accounting's RDP."""
    import dp_accounting

    # dp-accounting warns for every RDP order it drops as non-convergent; the bound
    # stays valid over the remaining orders.
    logging.getLogger("absl").setLevel(logging.ERROR)
    if not events:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    for event in events:
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    event.sample_rate, dp_accounting.GaussianDpEvent(event.noise_multiplier)
                ),
                int(event.steps),
            )
        )
    return float(accountant.get_epsilon(delta))


class TooLongToRecompute(ValueError):
    """A history beyond PLD's range: the owners compose it by RDP, and so does the audit."""


def _pld_applies(events: list[LoggedDpEvent]) -> bool:
    return pld_applies(_as_events(events))


def epsilon_interval(events: list[LoggedDpEvent], delta: float) -> tuple[float, float]:
    """An interval holding the true epsilon, computed without the owners' PLD accountant.

    Full-batch histories (sample rate 1): the exact closed form, a point. Otherwise
    Opacus's PRV accountant (Gopi, Lee, Wutschitz 2021): its discretised privacy loss
    gives a lower and an upper bound, each within 0.01 of the truth. A history beyond
    PLD's range (``privacy.pld_applies``) raises :class:`TooLongToRecompute`: PRV's grid
    grows with the steps (2e6 steps: over 20 GB), and a crafted log must not exhaust the
    auditor.
    """
    if not events:
        return 0.0, 0.0
    if not _pld_applies(events):
        raise TooLongToRecompute(f"{sum(int(e.steps) for e in events)} steps")
    if all(e.sample_rate >= 1.0 for e in events):
        exact = epsilon_gaussian_exact(_as_events(events), delta)
        return exact, exact
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(e.noise_multiplier, e.sample_rate, int(e.steps)) for e in events]
    error = 0.01
    # Opacus's public get_epsilon returns only the upper end; its (private) discretised
    # PRV gives both (opacus 1.6, pinned in pyproject.toml).
    dprv = accountant._get_dprv(eps_error=error, delta_error=delta / 1000)
    low, _, high = dprv.compute_epsilon(delta, delta / 1000, error)
    return float(low), float(high)


def independent_epsilon(
    events: list[LoggedDpEvent], delta: float, accountant: str = ACCOUNTANT
) -> float:
    """Epsilon recomputed without the code the owner ran: what a claim is judged against.

    For a PLD claim, the upper end of :func:`epsilon_interval`; for an RDP claim (older
    ledgers, or histories beyond PLD's range) and for histories beyond PLD's range,
    dp-accounting's RDP (:func:`rdp_epsilon`).
    """
    if accountant == LEGACY_ACCOUNTANT or not _pld_applies(events):
        return rdp_epsilon(events, delta)
    return epsilon_interval(events, delta)[1]


def claim_problem(
    claimed: float, events: list[LoggedDpEvent], delta: float, accountant: str
) -> tuple[float, float, str | None]:
    """(recomputed, RDP cross-check, problem or None) for one claimed epsilon.

    Never raises on what a log holds: a history the auditor cannot recompute is a
    problem on the report, not a crash of it.
    """
    try:
        return _judge_claim(claimed, events, delta, accountant)
    except TooLongToRecompute as exc:
        return (
            math.nan,
            math.nan,
            (
                f"claims {accountant} for a history beyond PLD's range ({exc}); the owners "
                "compose such histories by RDP and say so"
            ),
        )
    except (ArithmeticError, MemoryError, ValueError) as exc:
        return math.nan, math.nan, f"epsilon could not be recomputed from the log: {exc!r}"


def _judge_claim(
    claimed: float, events: list[LoggedDpEvent], delta: float, accountant: str
) -> tuple[float, float, str | None]:
    rdp = rdp_epsilon(events, delta)
    if accountant == LEGACY_ACCOUNTANT:
        recomputed = rdp
        low, high = rdp * (1 - UNDER_CLAIM_TOLERANCE), rdp * (1 + TOLERANCE)
    else:
        low, recomputed = epsilon_interval(events, delta)
        low, high = low * (1 - UNDER_CLAIM_TOLERANCE), recomputed * (1 + TOLERANCE)
    if not low <= claimed <= high:
        return (
            recomputed,
            rdp,
            (
                f"claimed epsilon {claimed:.4f} ({accountant}) outside the independently "
                f"recomputed [{low:.4f}, {high:.4f}]"
            ),
        )
    if accountant != LEGACY_ACCOUNTANT and rdp < claimed * (1 - UNDER_CLAIM_TOLERANCE):
        return (
            recomputed,
            rdp,
            (
                f"claimed epsilon {claimed:.4f} (pld) is above the RDP cross-check {rdp:.4f}: "
                "RDP is the looser bound, so one of the two computations is broken"
            ),
        )
    return recomputed, rdp, None


def _utc(ts: str | None) -> str:
    """An entry's ISO timestamp (always UTC) as a reader writes it: 2026-11-29 01:49:51 UTC."""
    return f"{ts[:19].replace('T', ' ')} UTC" if ts else "-"


@dataclass
class Charge:
    """One DP release the owner paid for, as its ``dp-charged`` entry records it."""

    time: str
    run_id: int | None
    run_key: str | None
    server_round: int
    kind: str
    data_fingerprint: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon_claimed: float
    epsilon_recomputed: float
    epsilon_rdp: float  # the cross-check
    accountant: str  # which accountant the claim rests on: pld, or rdp (older ledgers)
    budget_in_force: float
    within_budget: bool
    # The neighbouring relation the charge was accounted under (entries before issue 21
    # name none: they were add/remove with the record count treated as public).
    relation: str = "add-remove (count public)"


@dataclass
class BudgetChange:
    time: str
    old: float | None
    new: float
    refusals_before: int  # refusals since the previous change or charge
    last_refusal_time: str | None = None

    @property
    def raised_after_refusal(self) -> bool:
        return self.refusals_before > 0 and self.old is not None and self.new > self.old

    def dated(self) -> str:
        return f"{_utc(self.time)}: {self.describe()}"

    def describe(self) -> str:
        if self.old is None:
            text = f"budget set to {self.new:g}"
        else:
            verb = "raised" if self.new > self.old else "lowered"
            text = f"budget {verb} from {self.old:g} to {self.new:g}"
        if self.refusals_before:
            text += f", after {self.refusals_before} refusal(s) (last at {self.last_refusal_time})"
        return text


@dataclass
class Refusal:
    time: str
    run_id: int | None
    server_round: int | None
    kind: str  # train or evaluate
    code: int | None
    meaning: str
    reason: str
    after_charges: int = 0  # how many charges the owner had made before it
    budget_in_force: float | None = None


@dataclass
class DataFile:
    """The charges made on one data file of the owner (files are told apart by digest)."""

    fingerprint: str
    records: int | None
    charges: int
    epsilon_alone: float  # these charges composed on their own (the owner's total is higher)
    first_charge: str
    last_charge: str


@dataclass
class OwnerAudit:
    owner: str
    ledger_id: str
    logs: list[str] = field(default_factory=list)
    key_fingerprints: list[str] = field(default_factory=list)
    node_ids: list[int] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)
    budget_changes: list[BudgetChange] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    data_files: list[DataFile] = field(default_factory=list)
    updates_released: int = 0
    evaluate_answers_released: int = 0
    updates_re_released: int = 0
    problems: list[str] = field(default_factory=list)
    # filled from the events above
    budget: float = 0.0
    delta: float = 0.0

    @property
    def identity(self) -> str:
        return ", ".join(self.key_fingerprints) if self.key_fingerprints else SIMULATED

    @property
    def rounds(self) -> list[int]:
        return [c.server_round for c in self.charges]

    @property
    def epsilon_claimed(self) -> list[float]:
        return [c.epsilon_claimed for c in self.charges]

    @property
    def epsilon_recomputed(self) -> list[float]:
        return [c.epsilon_recomputed for c in self.charges]

    @property
    def definition(self) -> str:
        """What the owner's epsilon protects: the relations its charges rest on."""
        relations = sorted({c.relation for c in self.charges})
        return ", ".join(relations) or "no charges"

    @property
    def final_claimed(self) -> float:
        return self.charges[-1].epsilon_claimed if self.charges else 0.0

    @property
    def final_recomputed(self) -> float:
        return self.charges[-1].epsilon_recomputed if self.charges else 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def raised_after_refusal(self) -> list[BudgetChange]:
        return [c for c in self.budget_changes if c.raised_after_refusal]

    @property
    def status(self) -> str:
        if self.problems:
            return "problems: " + "; ".join(self.problems)
        if not self.charges:
            return "no charge (nothing released)"
        text = "ok: each charge within the budget in force when it was made"
        raised = self.raised_after_refusal
        if raised:
            text += "; budget RAISED after a refusal: " + "; ".join(
                f"{c.old:g} to {c.new:g} at {_utc(c.time)}" for c in raised
            )
        return text

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return {
            "owner": self.owner,
            "ledger_id": self.ledger_id,
            "identity": self.identity,
            "key_fingerprints": self.key_fingerprints,
            "node_ids": self.node_ids,
            "logs": self.logs,
            "rounds": self.rounds,
            "epsilon_claimed": self.epsilon_claimed,
            "epsilon_recomputed": self.epsilon_recomputed,
            "final_claimed": self.final_claimed,
            "definition": self.definition,
            "final_recomputed": self.final_recomputed,
            "budget": self.budget,
            "delta": self.delta,
            "charges": [asdict(c) for c in self.charges],
            "budget_changes": [
                {**asdict(c), "raised_after_refusal": c.raised_after_refusal, "text": c.describe()}
                for c in self.budget_changes
            ],
            "refusals": [asdict(r) for r in self.refusals],
            "data_files": [asdict(f) for f in self.data_files],
            "updates_released": self.updates_released,
            "evaluate_answers_released": self.evaluate_answers_released,
            "updates_re_released": self.updates_re_released,
            "problems": self.problems,
            "status": self.status,
            "ok": self.ok,
        }


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
            ledger = entry["data"].get("ledger-id")
            if entry["type"] not in (Event.DP_CHARGED, Event.BUDGET_CHANGED) or not ledger:
                continue
            by_actor.setdefault(entry["actor"], set()).add(ledger)
            if entry["data"].get("data-fingerprint"):
                by_file[(entry["actor"], entry["data"]["data-fingerprint"])] = ledger
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
                run_id, records = data.get("run-id"), data.get("records")
                run_key = data.get("plan", {}).get("run-key")
                fingerprint = data.get("data-fingerprint")
            ledger = data.get("ledger-id") if isinstance(data, dict) else None
            if not ledger and entry["type"] == Event.DP_CHARGED:
                ledger = data.get("data-fingerprint")  # logs before ledgers had ids
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
        code, reason = wire.ERROR_INTERNAL, str(data.get("error", ""))
    else:
        code, reason = data.get("code"), str(data.get("reason", ""))
    return Refusal(
        time=tagged.entry["ts"],
        run_id=tagged.run_id,
        server_round=data.get("server-round"),
        kind="evaluate" if tagged.entry["type"] == Event.EVALUATE_REFUSED else "train",
        code=code,
        meaning=wire.REFUSAL_REASONS.get(code, "no code recorded") if code else "no code recorded",
        reason=reason,
    )


def _audit_one(ledger_id: str, entries: list[_Tagged]) -> OwnerAudit:
    actors = sorted({t.entry["actor"] for t in entries if t.entry["type"] != Event.CHECKPOINT})
    audit = OwnerAudit(" / ".join(actors), ledger_id)
    audit.logs = sorted({t.log for t in entries})
    previous_events: list[LoggedDpEvent] | None = None
    budget_in_force: float | None = None
    refusals_since_change: list[Refusal] = []
    records_by_file: dict[str, int] = {}
    for tagged in entries:
        entry, data = tagged.entry, tagged.entry["data"]
        kind = entry["type"]
        if kind == Event.NODE_START:
            fingerprint = data.get("node-key-fingerprint")
            if fingerprint and fingerprint not in audit.key_fingerprints:
                audit.key_fingerprints.append(fingerprint)
        elif kind == Event.ROUND_START:
            if data.get("node-id") is not None and data["node-id"] not in audit.node_ids:
                audit.node_ids.append(data["node-id"])
            if data.get("data-fingerprint") and data.get("records") is not None:
                records_by_file[data["data-fingerprint"]] = int(data["records"])
        elif kind in REFUSAL_EVENTS:
            refusal = _refusal(tagged)
            refusal.after_charges, refusal.budget_in_force = len(audit.charges), budget_in_force
            audit.refusals.append(refusal)
            refusals_since_change.append(refusal)
        elif kind == Event.BUDGET_CHANGED:
            new = float(data["new-budget"])
            old = data.get("old-budget")
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
        elif kind == Event.EVALUATE_RELEASED:
            audit.evaluate_answers_released += 1
        elif kind == Event.UPDATE_RE_RELEASED:
            audit.updates_re_released += 1
        elif kind == Event.DP_CHARGED:
            previous_events = _check_charge(audit, tagged, previous_events, budget_in_force)
            refusals_since_change = []
            budget_in_force = audit.charges[-1].budget_in_force
    audit.data_files = _data_files(audit.charges, records_by_file)
    return audit


def _check_charge(
    audit: OwnerAudit,
    tagged: _Tagged,
    previous_events: list[LoggedDpEvent] | None,
    budget_in_force: float | None,
) -> list[LoggedDpEvent]:
    """Recompute one charge, judge it against the budget in force; returns its history."""
    data = tagged.entry["data"]
    server_round = int(data["server-round"])
    events = [LoggedDpEvent.from_entry(e) for e in data["ledger-events"]]
    new_event = LoggedDpEvent.from_entry(
        [data["noise-multiplier"], data["sample-rate"], data["steps"]]
    )
    if previous_events is not None and events[:-1] != previous_events:
        audit.problems.append(
            f"round {server_round}: ledger history differs from the previous entry's "
            "(events were removed or changed between rounds)"
        )
    if not events or events[-1] != new_event:
        audit.problems.append(
            f"round {server_round}: the charged event is not the last in the ledger"
        )
    delta = float(data["delta"])
    claimed = float(data["epsilon-after"])
    # entries written before the PLD switch name no accountant: they were charged by RDP
    accountant = str(data.get("accountant", LEGACY_ACCOUNTANT))
    recomputed, rdp, mismatch = claim_problem(claimed, events, delta, accountant)
    if mismatch:
        audit.problems.append(f"round {server_round}: {mismatch}")
    recorded_budget = float(data["epsilon-budget"])
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
            kind=str(data.get("kind", "train")),
            relation=str(data.get("relation", "add-remove (count public)")),
            data_fingerprint=str(data.get("data-fingerprint", "")),
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
        )
    )
    audit.budget, audit.delta = in_force, delta
    return events


def _epsilon_or_nan(events: list[LoggedDpEvent], delta: float) -> float:
    try:
        return independent_epsilon(events, delta)
    except (ArithmeticError, MemoryError, ValueError):
        return math.nan  # the charges themselves carry the problem


def _data_files(charges: list[Charge], records: dict[str, int]) -> list[DataFile]:
    files: dict[str, list[Charge]] = {}
    for charge in charges:
        files.setdefault(charge.data_fingerprint, []).append(charge)
    return [
        DataFile(
            fingerprint=fingerprint,
            records=records.get(fingerprint),
            charges=len(group),
            epsilon_alone=_epsilon_or_nan(
                [LoggedDpEvent(c.noise_multiplier, c.sample_rate, c.steps) for c in group],
                group[-1].delta,
            ),
            first_charge=group[0].time,
            last_charge=group[-1].time,
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
