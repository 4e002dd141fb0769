"""The privacy ledger: every DP release a data owner has made, on the owner's own disk.

Guarantees:
- **one ledger per owner** (one file, ``ledger.json``, in the owner's ledger folder), so the
  budget follows the records, not a file's bytes: the same records re-exported,
  reordered, re-encoded, or as a subset or superset of earlier data, draw on the same
  budget. Why not per-record fingerprints: a record whose text changed by one character
  (a fixed typo, other whitespace) is still the same person, and a hash would not see it.
  The cost is conservative accounting: two disjoint data sets of one owner share a budget
  (an owner who must keep them apart uses two ledger folders, a decision it takes itself);
- epsilon is recomputed from the whole event list (common/privacy.py), never summed;
- the owner's budget is recorded with every change (time, old and new value), so raising
  a budget after a refusal shows in the ledger and in the audit log;
- the owner's limits (budget, delta, cap per run: ``OwnerLimits``) are fixed when the
  owner opens its ledger, so no call can check or charge against other figures; a ledger
  opened without them can only be read;
- an owner may cap what one run can spend (``run-epsilon-cap``), so one run cannot take a
  multi-run budget;
- the record count's DP release (``KIND_COUNT``) is an event like any other, with its
  released value, so every later round on the same data reuses it; each entry names the
  neighbouring relation it was accounted under and the privacy unit it protects
  ("record", or the owner's privacy-unit column), and a ledger keeps one of each;
- a write is atomic and durable (temp file, fsync, rename, fsync of the directory), and
  happens before the release it pays for leaves the machine: a crash can over-count,
  never under-count;
- concurrent writers are serialised with an exclusive lock;
- a file whose checksum does not match its contents is refused (LedgerCorrupted), and
  nothing trains until an operator resolves it;
- ledgers of the earlier format (one file per data file, named by its SHA-256) are read
  and folded into the owner's ledger once, conservatively (all of their events count).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedshield.client.ledger_entries import (
    KIND_COUNT,
    KIND_TRAIN,
    UNIT_RECORD,
    BudgetChange,
    LedgerEntry,
    LedgerState,
)
from fedshield.common.dp_event import DpEvent
from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import LedgerCorrupted, PolicyRefusal, PrivacyBudgetExceeded
from fedshield.common.privacy import ADD_REMOVE, epsilon_spent

LEDGER_FORMAT = 2
LEGACY_FORMAT = 1
LEDGER_FILE = "ledger.json"


def _checksum(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _resolve_advice(path: Path) -> str:
    return (
        f"move {path} aside and restore it from a backup, or ask your data protection "
        "officer; do not delete it (that would reset the owner's privacy budget)"
    )


def _read_checked(path: Path, expected_format: int) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        body, stored = data["body"], data["checksum"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LedgerCorrupted(
            f"{path}: unreadable privacy ledger ({exc}); {_resolve_advice(path)}"
        ) from exc
    if _checksum(body) != stored:
        raise LedgerCorrupted(
            f"{path}: checksum mismatch, the ledger was altered or damaged; {_resolve_advice(path)}"
        )
    if not isinstance(body, dict) or body.get("format") != expected_format:
        raise LedgerCorrupted(
            f"{path}: not a ledger of format {expected_format}; {_resolve_advice(path)}"
        )
    return body


@dataclass(frozen=True)
class OwnerLimits:
    """The owner's own limits, fixed when its ledger is opened: the total budget, the
    delta every epsilon is read at, and the most one run may spend (0: no cap)."""

    epsilon_budget: float
    delta: float
    run_epsilon_cap: float = 0.0


class PrivacyLedger:
    """The ledger of one data owner, kept in ``directory`` (the owner's ledger folder).

    Opened with the owner's ``limits`` it checks and charges against them; opened
    without (``ledger show``, an auditor) it can only be read.
    """

    def __init__(self, directory: str | Path, limits: OwnerLimits | None = None) -> None:
        self.directory = Path(directory).expanduser()
        self.path = self.directory / LEDGER_FILE
        self._limits = limits

    @property
    def limits(self) -> OwnerLimits:
        if self._limits is None:
            raise ValueError(
                f"{self.directory}: this ledger was opened to be read; charging or checking "
                "needs the owner's limits (PrivacyLedger(directory, OwnerLimits(...)))"
            )
        return self._limits

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # 0600 like every file of the owner's: open() would leave it 0644 under umask 022.
        lock = os.open(self.directory / "ledger.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            os.close(lock)

    def _legacy_files(self) -> list[Path]:
        return sorted(
            p
            for p in self.directory.glob("*.json")
            if p.name != LEDGER_FILE and len(p.stem) == 64 and not p.name.startswith(".")
        )

    def _read(self) -> LedgerState:
        if self.path.exists():
            body = _read_checked(self.path, LEDGER_FORMAT)
            return LedgerState(
                ledger_id=str(body["ledger-id"]),
                entries=[LedgerEntry.from_dict(e) for e in body["events"]],
                budgets=[BudgetChange.from_dict(b) for b in body["budgets"]],
                migrated_from=list(body.get("migrated-from", [])),
            )
        entries: list[LedgerEntry] = []
        migrated = []
        for legacy in self._legacy_files() if self.directory.is_dir() else []:
            body = _read_checked(legacy, LEGACY_FORMAT)
            for raw in body["events"]:
                entry = LedgerEntry.from_dict(raw)
                entries.append(
                    LedgerEntry(
                        **{
                            **entry.__dict__,
                            "data_fingerprint": str(body["fingerprint"]),
                            "records": int(body.get("num-records", 0)),
                        }
                    )
                )
            migrated.append(legacy.name)
        entries.sort(key=lambda e: e.recorded_at)
        return LedgerState(uuid.uuid4().hex, entries, [], migrated)

    def _write(self, state: LedgerState) -> None:
        body = {
            "format": LEDGER_FORMAT,
            "ledger-id": state.ledger_id,
            "events": [e.as_dict() for e in state.entries],
            "budgets": [b.as_dict() for b in state.budgets],
            "migrated-from": state.migrated_from,
        }
        payload = json.dumps({"body": body, "checksum": _checksum(body)}, indent=1)
        write_bytes_atomic(self.path, payload.encode("utf-8"))

    def state(self) -> LedgerState:
        with self._locked():
            return self._read()

    def entries(self) -> list[LedgerEntry]:
        return self.state().entries

    @staticmethod
    def _refuse_other_unit(entries: list[LedgerEntry], unit: str) -> None:
        """A ledger's privacy unit is fixed by its first charge (docs/design/privacy-unit.md).

        Why: epsilon per patient composed with epsilon per record is neither; a per-record
        charge costs a patient of k records the group-privacy figure, itself a function
        of the data. One unit per ledger keeps every figure exact.
        """
        fixed = next((e.unit for e in entries), None)
        if fixed is not None and fixed != unit:
            raise PolicyRefusal(
                f"this ledger's charges protect one {fixed!r} each and the owner's policy now "
                f"asks for {unit!r}; a ledger keeps one privacy unit: restore the setting it "
                "was charged under (privacy-unit, record-level), or use a new ledger-dir for "
                f"the other unit (what the {fixed!r} charges already cost each {unit!r}: "
                "fedshield ledger show --group-size K)"
            )

    @staticmethod
    def _refuse_other_relation(entries: list[LedgerEntry], relation: str) -> None:
        """A ledger's neighbouring relation is fixed by its first charge.

        Why: its events are accounted under that relation; after an exact count left
        (replace-one) no add/remove claim holds, and add/remove events re-read under
        replace-one would need other noise multipliers than the ones charged.
        """
        fixed = next((e.relation for e in entries), None)
        if fixed is not None and fixed != relation:
            raise PolicyRefusal(
                f"this ledger's charges are accounted under {fixed} adjacency and the owner's "
                f"policy now asks for {relation}; a ledger keeps one relation: restore the "
                f"setting it was charged under (public-record-count "
                f"{'on' if fixed == 'replace-one' else 'off'})"
            )

    def check_relation(self, relation: str, unit: str = UNIT_RECORD) -> None:
        """Refuse (before anything is computed) a relation or a privacy unit other than
        the ledger's."""
        entries = self.entries()
        self._refuse_other_relation(entries, relation)
        self._refuse_other_unit(entries, unit)

    def released_count(self, data_fingerprint: str) -> int | None:
        """The count already released for this data version, if any (the first one)."""
        for entry in self.entries():
            if entry.kind == KIND_COUNT and entry.data_fingerprint == data_fingerprint:
                return entry.released
        return None

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` composed over every event recorded so far."""
        return epsilon_spent((e.event for e in self.entries()), delta)

    def record_budget(self) -> BudgetChange | None:
        """Record the owner's budget if it changed; returns the change (None if unchanged)."""
        epsilon_budget = self.limits.epsilon_budget
        with self._locked():
            state = self._read()
            old = state.budgets[-1].new if state.budgets else None
            if old is not None and old == epsilon_budget:
                return None
            change = BudgetChange(old, float(epsilon_budget), time.time())
            self._write(
                LedgerState(
                    state.ledger_id, state.entries, [*state.budgets, change], state.migrated_from
                )
            )
            return change

    def _refuse_if_over(
        self, entries: list[LedgerEntry], planned: DpEvent, run_id: int, when: str
    ) -> float:
        epsilon_budget, delta, run_epsilon_cap = (
            self.limits.epsilon_budget,
            self.limits.delta,
            self.limits.run_epsilon_cap,
        )
        events = [e.event for e in entries]
        before = epsilon_spent(events, delta)
        after = epsilon_spent([*events, planned], delta)
        if after > epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"{when}: this release would raise epsilon from {before:.3f} to {after:.3f} "
                f"(delta {delta:g}), over the owner's budget {epsilon_budget:g}; nothing was "
                "released. Raise the budget only if your privacy policy allows it, or increase "
                "the noise multiplier."
            )
        if run_epsilon_cap > 0:
            this_run = [e.event for e in entries if e.run_id == run_id]
            run_after = epsilon_spent([*this_run, planned], delta)
            if run_after > run_epsilon_cap:
                raise PrivacyBudgetExceeded(
                    f"{when}: run {run_id} would spend epsilon {run_after:.3f}, over the owner's "
                    f"cap per run {run_epsilon_cap:g} (run-epsilon-cap); nothing was released"
                )
        return after

    def check_budget(self, planned: DpEvent, run_id: int = 0) -> float:
        """Pre-flight: epsilon after ``planned``; raises if that passes the budget or cap."""
        return self._refuse_if_over(self.entries(), planned, run_id, "pre-flight")

    def latest_run_charge(self, release: str) -> LedgerEntry | None:
        """The latest charge of the run ``release`` names (its run part, matched exactly)."""
        run = release.partition("-")[0]
        if not run:
            return None
        return next((e for e in reversed(self.entries()) if e.run_name == run), None)

    def unreleased_charge(
        self, release: str, event: DpEvent, data_fingerprint: str
    ) -> LedgerEntry | None:
        """The training charge already paid for ``release`` (a run's round) that a retry
        may release under: the same event on the same data version, and the latest
        charge of that run (after a later one, nothing proves this round never left).

        The caller proves the rest (``ReleasedUpdates.claimed``, ``claim_unsent``): it holds
        the run's claim, and nothing was kept in the run since this charge, so the
        attempt that paid it stopped before keeping, and its update, kept before it is
        sent, never left.
        """
        latest = self.latest_run_charge(release)
        if (
            latest is not None
            and latest.round_release == release
            and latest.kind == KIND_TRAIN
            and latest.event == event
            and latest.data_fingerprint == data_fingerprint
        ):
            return latest
        return None

    def charge_ledger_before_release(
        self,
        event: DpEvent,
        run_id: int,
        server_round: int,
        *,
        kind: str = KIND_TRAIN,
        data_fingerprint: str = "",
        records: int = 0,
        relation: str = ADD_REMOVE,
        released: int | None = None,
        unit: str = UNIT_RECORD,
        release: str = "",
    ) -> float:
        """Durably append ``event``; returns epsilon composed over all events after it.

        ``release`` names the kept release this charge pays for (``unreleased_charge``).

        The budget is checked again under the lock: another run of this owner may have
        charged since the pre-flight check, and then the release must not happen.
        """
        with self._locked():
            state = self._read()
            self._refuse_other_relation(state.entries, relation)
            self._refuse_other_unit(state.entries, unit)
            after = self._refuse_if_over(
                state.entries,
                event,
                run_id,
                "at charge (another run charged since the pre-flight check)",
            )
            entry = LedgerEntry(
                event,
                self.limits.delta,
                run_id,
                server_round,
                time.time(),
                kind,
                data_fingerprint,
                records,
                relation,
                released,
                unit,
                release,
            )
            self._write(
                LedgerState(
                    state.ledger_id, [*state.entries, entry], state.budgets, state.migrated_from
                )
            )
        return after
