"""Updates already released, kept so that a re-sent round costs no new privacy.

When a server crashes and resumes, it re-sends the round that was in flight. Training
again would draw fresh noise and release a second, differently noised update: a new
privacy cost. Instead the owner answers with the very update it already released for
that (run key, round, global model): re-sending an output is post-processing and costs
nothing, so the ledger is not charged twice. Stored next to the ledger, atomically,
before the update leaves, sealed under the owner's at-rest key (common/sealed.py); only
the two latest rounds of each run are kept.

A charge made for a round whose update was never kept (the owner stopped between the
charge and the keep) is reused by the retry, not charged again: the update is kept before
it is sent, so none left. ``claimed`` holds the run's lock from the lookup to the keep,
so a round in flight in another process is never mistaken for one that stopped (the
kernel drops a dead holder's lock); the ledger side is
``PrivacyLedger.unreleased_charge``.

A kept release that fails authentication (edited, truncated, another owner's, sealed
under a key since rotated) is never sent: it counts as absent, so the round trains
again and is charged as new (a cost, never a leak); the owner's console and audit log
name the file (client/integrity.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MetricRecord

from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import SealedFileError
from fedshield.common.owner_keys import OwnerKeys
from fedshield.common.sealed import RELEASED_UPDATE, read_sealed, write_sealed

_log = logging.getLogger(__name__)
CHARGING = "charging "


class ReleasedUpdates:
    def __init__(
        self,
        ledger_dir: Path,
        fingerprint: str,
        keys: OwnerKeys,
        on_rejected: Callable[[SealedFileError, str], None] | None = None,
    ) -> None:
        self.directory = Path(ledger_dir).expanduser() / f"{fingerprint}.releases"
        # Empty lock files, apart: the releases folder holds sealed files only.
        self.claims = Path(ledger_dir).expanduser() / f"{fingerprint}.claims"
        self.keys = keys
        self.on_rejected = on_rejected

    @staticmethod
    def _run_name(run_key: str) -> str:
        # The run key comes from the server: hashed, it can name no path outside this
        # folder and match no other run's files.
        return hashlib.sha256(run_key.encode("utf-8")).hexdigest()[:32]

    def release_id(self, run_key: str, server_round: int) -> str:
        """What the ledger's charge for this round names ("" without a run key: nothing
        is kept, so nothing can be reused)."""
        return f"{self._run_name(run_key)}-{server_round:06d}" if run_key else ""

    def _path(self, run_key: str, server_round: int) -> Path:
        return self.directory / f"{self.release_id(run_key, server_round)}.pt"

    @contextlib.contextmanager
    def claimed(self, run_key: str) -> Iterator[None]:
        """Hold the run's lock: no other process of this owner answers a round of the
        run meanwhile (a re-sent round waits, then finds the kept update)."""
        if not run_key:
            yield
            return
        path = self.claims / f"{self._run_name(run_key)}.lock"
        while True:
            self.claims.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = os.lstat(path)
            except FileNotFoundError:
                current = None
            held = os.fstat(lock)
            if current is not None and (current.st_dev, current.st_ino) == (
                held.st_dev,
                held.st_ino,
            ):
                break
            # The file was removed or replaced while we waited (someone cleaned the
            # folder): a lock on it excludes nobody, so lock the file now there.
            os.close(lock)
        try:
            yield
        finally:
            os.close(lock)  # closing drops the lock

    def _marker(self, run_key: str) -> Path:
        return self.claims / f"{self._run_name(run_key)}.kept"

    def charging(self, run_key: str, server_round: int) -> str:
        """Before a charge: a fresh attempt's name (the ledger entry's ``release``),
        durably marked as charging. Only a marker that still names it when the round is
        retried proves the attempt stopped before its keep ("" without a run key)."""
        if not run_key:
            return ""
        attempt = f"{self.release_id(run_key, server_round)}/{secrets.token_hex(8)}"
        self._mark(run_key, f"{CHARGING}{attempt}")
        return attempt

    def _mark(self, run_key: str, text: str) -> None:
        self.claims.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_bytes_atomic(self._marker(run_key), text.encode("utf-8"))

    def claim_unsent(self, run_key: str, server_round: int, charge_id: str) -> bool:
        """Take the proof that the attempt ``charge_id`` was the run's last to charge and
        nothing was kept since: the run's marker still reads "charging" it (every keep
        takes it first; pruning cannot undo that) and no kept file of the round exists
        in any state. At most one process ever takes it (``take_proof``).
        A missing or unreadable marker proves nothing: the round is charged anew."""
        if not run_key or not charge_id or os.path.lexists(self._path(run_key, server_round)):
            return False
        return self.take_proof(run_key, charge_id)

    def take_proof(self, run_key: str, attempt: str) -> bool:
        """Rename the run's marker away, atomically, and say whether it read "charging
        ``attempt``". Every attempt takes it before it keeps (or reuses), so one charge
        releases one update even with the lock file deleted under its holder: a second
        process finds no marker (a retry is charged anew; an attempt is not sent)."""
        taken = self.claims / f"{self._run_name(run_key)}.taken-{secrets.token_hex(8)}"
        try:
            os.rename(self._marker(run_key), taken)
        except OSError:
            return False
        try:
            return taken.read_text(encoding="utf-8") == f"{CHARGING}{attempt}"
        except (OSError, UnicodeDecodeError):
            return False
        finally:
            taken.unlink(missing_ok=True)

    def find(
        self, run_key: str, server_round: int, global_sha256: str
    ) -> tuple[ArrayRecord, MetricRecord] | None:
        path = self._path(run_key, server_round)
        if not run_key or not path.is_file():
            return None
        try:
            sealed = read_sealed(path, self.keys, RELEASED_UPDATE)
        except SealedFileError as exc:
            if self.on_rejected is None:
                _log.warning("%s", exc)
            else:
                self.on_rejected(exc, "treated as absent: the round trains again, charged as new")
            return None
        saved = torch.load(io.BytesIO(sealed), weights_only=True)
        if saved["global-sha256"] != global_sha256:
            return None  # a different global model: a new computation, charged as such
        return ArrayRecord(saved["arrays"]), MetricRecord(saved["metrics"])

    def remember(
        self,
        run_key: str,
        server_round: int,
        global_sha256: str,
        arrays: ArrayRecord,
        metrics: MetricRecord,
        attempt: str,
    ) -> None:
        """Keep the update before it is sent. The marker is overwritten first (naming
        ``attempt``, the charge the update is released under, for the reader; "" for a
        non-private round), so that no charge made before this keep is ever reused
        (``claim_unsent``)."""
        if not run_key:
            return
        self._mark(run_key, f"kept {attempt}")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(run_key, server_round)
        saved = {
            "global-sha256": global_sha256,
            "arrays": arrays.to_torch_state_dict(),
            "metrics": dict(metrics),
        }
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        write_sealed(path, buffer.getvalue(), self.keys, RELEASED_UPDATE)
        kept = [
            (int(p.stem.rpartition("-")[2]), p)
            for p in self.directory.glob(f"{self._run_name(run_key)}-*.pt")
            if p.stem.rpartition("-")[2].isdigit()
        ]
        # The two latest rounds stay, and always the one just kept.
        for _, old in sorted(kept)[:-2]:
            if old != path:
                old.unlink(missing_ok=True)
