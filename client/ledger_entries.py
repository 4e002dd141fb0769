"""What a privacy ledger holds: its charged releases and the owner's budget changes.

Guarantee: an entry round-trips through its dict exactly, and an entry written before a
field existed reads with that field's conservative default (add/remove, per record).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedshield.common.dp_event import DpEvent
from fedshield.common.privacy import ADD_REMOVE, PER_RECORD

KIND_TRAIN = "train"
KIND_EVALUATE = "evaluate"
KIND_COUNT = "count"  # the DP release of a data version's record count (client/count.py)
UNIT_RECORD = PER_RECORD


@dataclass(frozen=True)
class LedgerEntry:
    """One charged DP release: the event, what it was on, and when."""

    event: DpEvent
    delta: float
    run_id: int
    server_round: int
    recorded_at: float
    kind: str = KIND_TRAIN
    data_fingerprint: str = ""
    records: int = 0
    # The neighbouring relation the event was accounted under (``event`` is already the
    # accounted event: privacy.accounted_event).
    relation: str = ADD_REMOVE
    # KIND_COUNT only: the noisy count released, reused by every later round on the same
    # data version so that one version costs one count release.
    released: int | None = None
    # What one contribution was (issue 25): "record", or the owner's privacy-unit column.
    unit: str = UNIT_RECORD
    # KIND_TRAIN with a run key: which kept release (client/releases.py) this charge
    # pays for and the attempt that paid it ("run-round/attempt"), so that a retry after a
    # stop between charge and keep reuses it.
    release: str = ""

    @property
    def charge_id(self) -> str:
        """Names this charge (its attempt) among its run's: ``release`` itself."""
        return self.release

    @property
    def run_name(self) -> str:
        """The run part of ``release`` ("" for a charge without one)."""
        return self.release.partition("-")[0]

    @property
    def round_release(self) -> str:
        """``release`` without its attempt: the run and round it paid for."""
        return self.release.partition("/")[0]

    def as_dict(self) -> dict:
        return {
            **self.event.as_dict(),
            "delta": self.delta,
            "run-id": self.run_id,
            "server-round": self.server_round,
            "recorded-at": self.recorded_at,
            "kind": self.kind,
            "data-fingerprint": self.data_fingerprint,
            "records": self.records,
            "relation": self.relation,
            "released": self.released,
            "unit": self.unit,
            **({"release": self.release} if self.release else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> LedgerEntry:
        return cls(
            event=DpEvent(
                noise_multiplier=float(data["noise_multiplier"]),
                sample_rate=float(data["sample_rate"]),
                steps=int(data["steps"]),
            ),
            delta=float(data["delta"]),
            run_id=int(data["run-id"]),
            server_round=int(data["server-round"]),
            recorded_at=float(data["recorded-at"]),
            kind=str(data.get("kind", KIND_TRAIN)),
            data_fingerprint=str(data.get("data-fingerprint", "")),
            records=int(data.get("records", 0)),
            relation=str(data.get("relation", ADD_REMOVE)),
            released=None if data.get("released") is None else int(data["released"]),
            unit=str(data.get("unit", UNIT_RECORD)),
            release=str(data.get("release", "")),
        )


@dataclass(frozen=True)
class BudgetChange:
    """The owner's budget changed from ``old`` to ``new`` at ``recorded_at``."""

    old: float | None
    new: float
    recorded_at: float

    def as_dict(self) -> dict:
        return {"old": self.old, "new": self.new, "recorded-at": self.recorded_at}

    @classmethod
    def from_dict(cls, data: dict) -> BudgetChange:
        old = data.get("old")
        return cls(
            None if old is None else float(old), float(data["new"]), float(data["recorded-at"])
        )


@dataclass(frozen=True)
class LedgerState:
    ledger_id: str
    entries: list[LedgerEntry]
    budgets: list[BudgetChange]
    migrated_from: list[str]
