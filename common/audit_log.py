"""Tamper-evident audit log: append-only JSON Lines, hash-chained, Ed25519-signed.

Guarantees:
- every entry carries ``seq`` (0, 1, 2, ...), a UTC timestamp, its ``type`` and ``actor``,
  the SHA-256 of the previous entry (``prev``) and its own SHA-256 (``hash``) over the
  canonical JSON of all its other fields, so any edit, deletion, insertion or reordering
  breaks the chain;
- the first entry (``log-start``) records the party's Ed25519 public key; ``checkpoint``
  entries sign the hash of the entry before them with that key, every ``checkpoint_every``
  entries and whenever the party closes a unit of work (a round, a run), so a rewrite of
  the log needs the private key, and truncation behind the last checkpoint is visible;
- each entry is written with one ``write`` to a file opened with O_APPEND, then fsynced:
  a crash loses at most the entry being written, which the verifier reports as a partial
  last line;
- nothing passed in is stored unless the caller names it; callers log digests, sizes,
  counts and DP parameters, never text (tests plant a marker to check);
- every entry has a declared type and only its declared fields
  (common/audit_events.py ``FIELDS``): any other is refused before anything is written;
- no entry can wedge the log: an entry over ``MAX_ENTRY_BYTES`` is refused before
  anything is written, and the writer finds the chain's head however long the last
  entry is (it reads back from the end until it holds a whole line).

Keys: ``audit-key.pem`` (PKCS#8, 0600) beside the log, made on first use, or one given.
Files: the log, the key and its ``audit-key.pub`` are created 0600 in a folder created
0700: the owner's spending, and the operator's record, are theirs alone.
Hand-written chaining, not a library: the format must be verifiable by anyone with a
JSON parser and SHA-256; the signatures come from ``cryptography``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedshield.common.audit_events import FIELDS, Event, Field
from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import AuditLogError

GENESIS = "0" * 64
LOG_FORMAT = "fedshield-audit/1"
CHECKPOINT = Event.CHECKPOINT
LOG_START = Event.LOG_START
TAIL_WINDOW_BYTES = 256 * 1024
# A dp-charged entry carries the whole ledger history composed (~80 bytes a distinct
# mechanism; it was ~80 bytes a charge before 2026-12-07): 4 MiB holds ~50,000 of them,
# far past any budget; a bigger entry is a bug or an attack. Refused, not
# stored as a digest: a log that silently drops what its caller named is weaker evidence.
MAX_ENTRY_BYTES = 4 * 1024 * 1024


def canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The party's audit signing key; created with 0600 permissions if absent.

    Created whole or not at all: written to a private temporary file, then linked into
    place, so two processes of one party starting at once agree on one key (the second
    reads the first's) and none ever reads a half-written one."""
    if not path.exists():
        _create_signing_key(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise AuditLogError(
            f"{path}: audit signing key is readable by others (mode {oct(mode)}); "
            f"run: chmod 600 {path}"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditLogError(f"{path}: not an Ed25519 private key")
    return key


def _create_signing_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    staged = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(staged, path)  # atomic, and refuses to replace a key already there
    except FileExistsError:
        return  # another process of this party created it first: that one is used
    finally:
        staged.unlink(missing_ok=True)
    # Public, but the owner's like the rest of its folder (0600); share it by copying.
    write_bytes_atomic(path.with_suffix(".pub"), (public_key_hex(key.public_key()) + "\n").encode())


class AuditLog:
    """Appends entries to ``path``; reopening continues the chain where it ended."""

    def __init__(
        self,
        path: str | Path,
        actor: str,
        signing_key: Ed25519PrivateKey | None = None,
        checkpoint_every: int = 50,
    ) -> None:
        self.path = Path(path)
        self.actor = actor
        self.checkpoint_every = checkpoint_every
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = signing_key or load_or_create_signing_key(self.path.parent / "audit-key.pem")
        self.public_key = public_key_hex(self._key.public_key())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _tail(self) -> tuple[int, str, int]:
        """(next seq, hash of the last entry, entries since the last checkpoint).

        Reads only the end of the file; a checkpoint further back than the window counts
        as due, which only adds a signature.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS, 0
        window, whole_file = self._tail_window()
        if not window.endswith(b"\n"):
            raise AuditLogError(
                f"{self.path}: last line is incomplete (a crash mid-write); keep the file as "
                "evidence, run `fedshield audit verify` on it, and point the party at a new "
                "audit folder"
            )
        lines = window.split(b"\n")[:-1]
        if not whole_file:
            lines = lines[1:]  # the first line in the window may be cut
        entries = [json.loads(line) for line in lines]
        last = entries[-1]
        since = len(entries) if whole_file else self.checkpoint_every
        for back, entry in enumerate(reversed(entries)):
            if entry.get("type") == CHECKPOINT:
                since = back
                break
        return int(last["seq"]) + 1, str(last["hash"]), since

    def _tail_window(self) -> tuple[bytes, bool]:
        """The file's last bytes, holding at least one whole line; True if the whole file.

        Starts with ``TAIL_WINDOW_BYTES`` and doubles back while the window holds no line
        break before its last one, so an entry longer than the window cannot hide the head.
        """
        with open(self.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            span = TAIL_WINDOW_BYTES
            while True:
                start = max(0, size - span)
                handle.seek(start)
                window = handle.read()
                if start == 0 or b"\n" in window[:-1]:
                    return window, start == 0
                span *= 2

    def _refuse_undeclared(self, event_type: str, data: dict[str, Any]) -> None:
        """Refuse an entry of an undeclared type, or with a key its type does not declare."""
        # A log that silently gains types or fields no reader knows is weaker evidence.
        declared = FIELDS.get(event_type)
        if declared is None:
            raise AuditLogError(
                f"{self.path}: entry type {event_type!r} is not declared; nothing was "
                "written; declare it in common/audit_events.py (Event and FIELDS)"
            )
        undeclared = sorted(set(data) - declared)
        if undeclared:
            raise AuditLogError(
                f"{self.path}: a {event_type!r} entry may not carry "
                f"{', '.join(map(repr, undeclared))} (its fields: {', '.join(sorted(declared))}); "
                "nothing was written; declare it in common/audit_events.py (FIELDS)"
            )

    def _refuse_oversized(self, event_type: str, data: dict[str, Any]) -> None:
        """Refuse an entry over ``MAX_ENTRY_BYTES`` before anything is written."""
        # seq, ts, prev and hash have bounded lengths: stand-ins of their longest forms.
        probe = {"seq": 2**63, "ts": "0" * 32, "type": event_type, "actor": self.actor}
        size = len(canonical({**probe, "data": data, "prev": GENESIS, "hash": GENESIS}))
        if size > MAX_ENTRY_BYTES:
            largest = sorted(data, key=lambda k: len(canonical({k: data[k]})), reverse=True)
            fields = ", ".join(
                f"{k!r}: {len(canonical({k: data[k]})):,} bytes" for k in largest[:3]
            )
            raise AuditLogError(
                f"{self.path}: a {event_type!r} entry of {size:,} bytes is over the "
                f"{MAX_ENTRY_BYTES:,} an audit entry may take (largest fields: {fields}); "
                "nothing was written; log a digest and a size of a large value instead"
            )

    def _write(self, fd: int, entry: dict[str, Any]) -> None:
        os.write(fd, canonical(entry) + b"\n")
        os.fsync(fd)

    def append(self, event_type: str, **data: Any) -> dict[str, Any]:
        """Append one entry (and a checkpoint when one is due); returns the entry."""
        self._refuse_undeclared(event_type, data)
        self._refuse_oversized(event_type, data)
        with self._locked() as fd:
            seq, prev, since = self._tail()
            if seq == 0 and event_type != LOG_START:
                prev = self._append_log_start(fd, prev)
                seq, since = seq + 1, since + 1
            entry = self._append_entry(fd, seq, prev, event_type, data)
            if since + 1 >= self.checkpoint_every:
                self._append_checkpoint(fd, seq + 1, entry["hash"])
        return entry

    def checkpoint(self, reason: str) -> dict[str, Any]:
        """Sign the current head of the chain (end of a round, a message, a run)."""
        with self._locked() as fd:
            seq, prev, _ = self._tail()
            if seq == 0:
                prev = self._append_log_start(fd, prev)
                seq = 1
            return self._append_checkpoint(fd, seq, prev, reason)

    def _append_log_start(self, fd: int, prev: str) -> str:
        """The first entry (seq 0): the log's format and the public key; returns its hash."""
        data = {Field.FORMAT: LOG_FORMAT, Field.PUBLIC_KEY: self.public_key}
        return self._append_entry(fd, 0, prev, LOG_START, data)["hash"]

    def _append_entry(
        self, fd: int, seq: int, prev: str, event_type: str, data: dict
    ) -> dict[str, Any]:
        entry = {
            "seq": seq,
            "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
            "type": event_type,
            "actor": self.actor,
            "data": data,
            "prev": prev,
        }
        entry["hash"] = entry_hash(entry)
        self._write(fd, entry)
        return entry

    def _append_checkpoint(
        self, fd: int, seq: int, signed_hash: str, reason: str = "periodic"
    ) -> dict[str, Any]:
        signature = self._key.sign(bytes.fromhex(signed_hash)).hex()
        data = {
            Field.SIGNED_HASH: signed_hash,
            Field.SIGNED_SEQ: seq - 1,
            Field.SIGNATURE: signature,
            Field.REASON: reason,
        }
        return self._append_entry(fd, seq, signed_hash, CHECKPOINT, data)
