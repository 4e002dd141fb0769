"""Independent verification of an audit log (common/audit_log.py's format).

Reports the first bad line exactly: what is wrong, at which line and sequence number.
Checks, in order for each line: it is complete JSON; ``seq`` equals its position;
``prev`` is the previous entry's hash; ``hash`` matches the entry's canonical encoding;
the first entry is ``log-start`` with the signing key (and, when given, the pinned key);
every checkpoint signs the entry before it with that key. Finally, a log must end with
a signed checkpoint: entries after the last one could have been cut or appended by
anyone, so they fail verification.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedshield.common.audit_events import Field
from fedshield.common.audit_log import CHECKPOINT, GENESIS, LOG_START, canonical, entry_hash

REQUIRED = ("seq", "ts", "type", "actor", "data", "prev", "hash")


@dataclass
class Verification:
    path: Path
    entries: list[dict] = field(default_factory=list)
    problem: str | None = None
    public_key: str | None = None
    last_checkpoint_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.ok:
            return (
                f"{self.path}: OK, {len(self.entries)} entries, chain intact, last signed "
                f"checkpoint at seq {self.last_checkpoint_seq}, key {self.public_key[:16]}..."
            )
        return f"{self.path}: FAILED: {self.problem}"


def _fail(result: Verification, line_no: int, message: str) -> Verification:
    result.problem = f"line {line_no}: {message}"
    return result


def verify_log(path: str | Path, pinned_public_key: str | None = None) -> Verification:
    """Verify one log file; ``result.problem`` names the first thing wrong, if any."""
    path = Path(path)
    result = Verification(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        result.problem = f"cannot read: {exc}"
        return result
    if not raw:
        result.problem = "empty file (no log-start entry)"
        return result
    lines = raw.split(b"\n")
    complete, trailing = lines[:-1], lines[-1]
    prev_hash, key = GENESIS, None
    for index, line in enumerate(complete):
        line_no = index + 1
        try:
            entry = json.loads(line)
        except ValueError:
            return _fail(result, line_no, "not valid JSON (edited or corrupted)")
        if not isinstance(entry, dict) or any(k not in entry for k in REQUIRED):
            return _fail(result, line_no, "not an audit entry (fields missing)")
        if canonical(entry) != line:
            return _fail(result, line_no, "not in canonical form (the line was edited)")
        if entry["seq"] != index:
            return _fail(
                result,
                line_no,
                f"seq {entry['seq']} where {index} was expected (an entry was deleted, inserted or moved)",
            )
        if entry["prev"] != prev_hash:
            return _fail(
                result,
                line_no,
                f"seq {index}: prev does not match the hash of the entry before it (chain broken)",
            )
        if entry_hash(entry) != entry["hash"]:
            return _fail(
                result,
                line_no,
                f"seq {index}: content does not match its hash (the entry was edited)",
            )
        if index == 0:
            if entry["type"] != LOG_START or Field.PUBLIC_KEY not in entry["data"]:
                return _fail(
                    result, line_no, "the first entry is not a log-start with a public key"
                )
            result.public_key = entry["data"][Field.PUBLIC_KEY]
            if pinned_public_key and result.public_key != pinned_public_key.strip():
                return _fail(
                    result,
                    line_no,
                    f"signing key {result.public_key[:16]}... is not the pinned key {pinned_public_key.strip()[:16]}...",
                )
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(result.public_key))
        if entry["type"] == CHECKPOINT:
            data = entry["data"]
            if data.get(Field.SIGNED_HASH) != prev_hash or data.get(Field.SIGNED_SEQ) != index - 1:
                return _fail(
                    result, line_no, f"seq {index}: checkpoint does not sign the entry before it"
                )
            try:
                key.verify(bytes.fromhex(data[Field.SIGNATURE]), bytes.fromhex(prev_hash))
            except (InvalidSignature, ValueError, KeyError):
                return _fail(result, line_no, f"seq {index}: checkpoint signature does not verify")
            result.last_checkpoint_seq = index
        result.entries.append(entry)
        prev_hash = entry["hash"]
    if trailing:
        return _fail(
            result,
            len(complete) + 1,
            f"incomplete last line ({len(trailing)} bytes, no newline): a crash mid-write or truncation",
        )
    if not result.entries:
        result.problem = "no complete entry"
        return result
    if result.entries[-1]["type"] != CHECKPOINT:
        unsigned = (
            len(result.entries)
            - 1
            - (result.last_checkpoint_seq if result.last_checkpoint_seq is not None else -1)
        )
        return _fail(
            result,
            len(result.entries),
            f"the log ends with {unsigned} entries after the last signed checkpoint "
            f"(seq {result.last_checkpoint_seq}); it was truncated, appended to, or its writer crashed",
        )
    return result
