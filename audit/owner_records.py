"""An owner's privacy record as the report reads it: the charges, budget changes,
refusals and data files of one ledger, gathered in one ``OwnerAudit``.

Guarantee: these are plain records filled from the owner's log entries (audit/owners.py);
``OwnerAudit`` derives its totals, status and JSON form (``as_dict``) from them alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedshield.audit.privacy_units import PER_RECORD_BOUND, UNIT_RECORD, GroupPrivacyWarning

SIMULATED = "simulated (no node key recorded)"


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
    # What one contribution was: "record" (entries before issue 25), or the owner's
    # privacy-unit column; epsilon_claimed is per that unit.
    privacy_unit: str = UNIT_RECORD
    # Unit-level charges only: the ledger so far for one record (audit/privacy_units.py).
    epsilon_per_record: float | None = None


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
    units: int | None = None  # the privacy unit's count in the file, where it has one


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
    # retried rounds released under the charge of an attempt that never sent its update
    charges_reused: int = 0
    problems: list[str] = field(default_factory=list)
    group_warnings: list[GroupPrivacyWarning] = field(default_factory=list)
    unit_at_round_start: str | None = None  # the unit named before any charge
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
    def privacy_units(self) -> list[str]:
        """The units the charges name, in order of first use (one, unless a problem)."""
        units = list(dict.fromkeys(c.privacy_unit for c in self.charges))
        return units or [self.unit_at_round_start or UNIT_RECORD]

    @property
    def privacy_unit(self) -> str:
        return " and ".join(self.privacy_units)

    @property
    def per_unit(self) -> str:
        """What the epsilon is per, as a reader says it: "per author"."""
        if len(self.privacy_units) > 1:
            return f"over mixed units ({', '.join(self.privacy_units)}): see the problems"
        return f"per {self.privacy_unit}"

    @property
    def final_per_record(self) -> float | None:
        """A unit-level owner's epsilon for one record (replace-one bound at 2C)."""
        return self.charges[-1].epsilon_per_record if self.charges else None

    @property
    def group_privacy(self) -> GroupPrivacyWarning | None:
        """A record-level owner's latest group-privacy warning (its largest unit)."""
        return self.group_warnings[-1] if self.group_warnings else None

    @property
    def unit_text(self) -> str:
        """The privacy unit and what it means for this owner, in one sentence."""
        if len(self.privacy_units) > 1:
            return f"mixed units on one ledger ({', '.join(self.privacy_units)}): see the problems"
        unit = self.privacy_unit
        if unit == UNIT_RECORD:
            text = "record: epsilon protects one record"
            warning = self.group_privacy
            return text + (f"; data with units: {warning.describe()}" if warning else "")
        text = f"{unit}: epsilon protects one {unit!r}, all its records together"
        if self.final_per_record is not None:
            text += (
                f"; one record: epsilon {self.final_per_record:.4f} ({PER_RECORD_BOUND}: "
                "removing a record moves the clipped sum of its "
                f"{unit!r} by at most twice the clipping norm)"
            )
        return text

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
            "privacy_unit": self.privacy_unit,
            "per_unit": self.per_unit,
            "unit_text": self.unit_text,
            "epsilon_per_record": self.final_per_record,
            "per_record_bound": PER_RECORD_BOUND if self.final_per_record is not None else None,
            "group_privacy": [asdict(w) for w in self.group_warnings],
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
            "charges_reused": self.charges_reused,
            "problems": self.problems,
            "status": self.status,
            "ok": self.ok,
        }
