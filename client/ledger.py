"""The privacy ledger: every DP event a data set has been through, on its owner's disk.

Guarantees:
- one file per data set, named by the data fingerprint, so every run on the same data
  charges the same budget;
- epsilon is recomputed from the whole event list (common/privacy.py), never summed;
- a write is atomic and durable (temp file, fsync, rename, fsync of the directory), and
  happens before the update it pays for leaves the machine: a crash can over-count,
  never under-count;
- concurrent writers are serialised with an exclusive lock;
- a file whose checksum does not match its contents is refused (LedgerCorrupted), and
  nothing trains on that data until an operator resolves it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedshield.common.errors import LedgerCorrupted, PrivacyBudgetExceeded
from fedshield.common.privacy import DpEvent, epsilon_spent

LEDGER_FORMAT = 1


@dataclass(frozen=True)
class LedgerEntry:
    event: DpEvent
    delta: float
    run_id: int
    server_round: int
    recorded_at: float

    def as_dict(self) -> dict:
        return {
            **self.event.as_dict(),
            "delta": self.delta,
            "run-id": self.run_id,
            "server-round": self.server_round,
            "recorded-at": self.recorded_at,
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
        )


def _checksum(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PrivacyLedger:
    """The ledger of one data set (``fingerprint``) held by one owner in ``directory``."""

    def __init__(self, directory: str | Path, fingerprint: str, num_records: int) -> None:
        self.directory = Path(directory).expanduser()
        self.fingerprint = fingerprint
        self.num_records = num_records
        self.path = self.directory / f"{fingerprint}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / f"{self.fingerprint}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        resolve = (
            f"move it aside and restore it from a backup, or ask your data protection "
            f"officer; do not delete it (that would reset the privacy budget of {self.fingerprint[:12]})"
        )
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            body, stored = data["body"], data["checksum"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerCorrupted(
                f"{self.path}: unreadable privacy ledger ({exc}); {resolve}"
            ) from exc
        if _checksum(body) != stored:
            raise LedgerCorrupted(
                f"{self.path}: checksum mismatch, the ledger was altered or damaged; {resolve}"
            )
        if body.get("fingerprint") != self.fingerprint or body.get("format") != LEDGER_FORMAT:
            raise LedgerCorrupted(
                f"{self.path}: ledger belongs to another data set or format; {resolve}"
            )
        return [LedgerEntry.from_dict(e) for e in body["events"]]

    def _write(self, entries: list[LedgerEntry]) -> None:
        body = {
            "format": LEDGER_FORMAT,
            "fingerprint": self.fingerprint,
            "num-records": self.num_records,
            "events": [e.as_dict() for e in entries],
        }
        payload = json.dumps({"body": body, "checksum": _checksum(body)}, indent=1)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)

    def entries(self) -> list[LedgerEntry]:
        with self._locked():
            return self._read()

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` composed over every event recorded so far."""
        return epsilon_spent((e.event for e in self.entries()), delta)

    def check_budget(self, planned: DpEvent, epsilon_budget: float, delta: float) -> float:
        """Pre-flight: epsilon after ``planned``; raises if that passes the budget."""
        events = [e.event for e in self.entries()]
        before = epsilon_spent(events, delta)
        after = epsilon_spent([*events, planned], delta)
        if after > epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"data set {self.fingerprint[:12]}: this round would raise epsilon from "
                f"{before:.3f} to {after:.3f} (delta {delta:g}), over the owner's budget "
                f"{epsilon_budget:g}; no training was done. Raise the budget only if your "
                "privacy policy allows it, or increase the noise multiplier."
            )
        return after

    def charge_ledger_before_release(
        self,
        event: DpEvent,
        epsilon_budget: float,
        delta: float,
        run_id: int,
        server_round: int,
    ) -> float:
        """Durably append ``event``; returns epsilon composed over all events after it.

        The budget is checked again under the lock: another run on the same data may have
        charged since the pre-flight check, and then this update must not be released.
        """
        with self._locked():
            entries = self._read()
            events = [e.event for e in entries]
            after = epsilon_spent([*events, event], delta)
            if after > epsilon_budget:
                raise PrivacyBudgetExceeded(
                    f"data set {self.fingerprint[:12]}: another run charged this data since "
                    f"the pre-flight check; releasing this update would reach epsilon "
                    f"{after:.3f} > budget {epsilon_budget:g}, so it is withheld"
                )
            entries.append(LedgerEntry(event, delta, run_id, server_round, time.time()))
            self._write(entries)
        return after
