"""Sealed files: what an owner keeps derived from its text, encrypted and authenticated.

Guarantee: ``read_sealed`` returns exactly the bytes ``write_sealed`` was given for that
file, under that owner's at-rest key, for that purpose, or raises ``SealedFileError``;
it never returns bytes from a file that was edited, truncated, renamed, written for
another purpose, or sealed under another key (another owner's, or one since rotated).
AES-256-GCM (``cryptography``) with a fresh random 96-bit nonce per write; the
associated data binds the header (format, key id, nonce), the purpose, the file's
name and its folder's name. Files are written atomically, 0600 (common/durable.py).

Format: ``FSEAL1`` | key id (16 ASCII hex) | nonce (12 bytes) | ciphertext and tag.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import SealedFileError
from fedshield.common.owner_keys import OwnerKeys

MAGIC = b"FSEAL1"
_KEY_ID_BYTES = 16
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = len(MAGIC) + _KEY_ID_BYTES + _NONCE_BYTES

# What is sealed, one purpose each (bound into every file, so one cannot stand in for another).
ENCODED_RECORDS = "encoded-records"  # client/owner.py: the encoder's output for the owner's text
RELEASED_UPDATE = "released-update"  # client/releases.py: an update kept for a re-sent round
DESENSITISED_TEXT = (
    "desensitised-text"  # common/desensitised_data.py: the owner's texts, desensitised
)


def write_sealed(path: Path, data: bytes, keys: OwnerKeys, purpose: str) -> None:
    """Encrypt ``data`` under the owner's at-rest key into ``path`` (atomic, 0600)."""
    path = Path(path)
    nonce = os.urandom(_NONCE_BYTES)  # random per write: GCM must not reuse a nonce
    header = MAGIC + keys.key_id.encode("ascii") + nonce
    sealed = AESGCM(keys.at_rest).encrypt(nonce, data, _associated(header, purpose, path))
    write_bytes_atomic(path, header + sealed, mode=0o600)


def read_sealed(path: Path, keys: OwnerKeys, purpose: str) -> bytes:
    """The bytes sealed in ``path``, authenticated; ``SealedFileError`` otherwise."""
    path = Path(path)
    blob = path.read_bytes()
    header = blob[:_HEADER_BYTES]
    if len(blob) < _HEADER_BYTES + _TAG_BYTES or not header.startswith(MAGIC):
        raise SealedFileError(
            path, "is not a sealed file (written before encryption at rest, or not by fedshield)"
        )
    written_id = _key_id_of(header)
    if written_id != keys.key_id:
        raise SealedFileError(
            path,
            f"was written under another key (id {written_id!r}; this owner's key is "
            f"{keys.key_id}): another owner's file, or one sealed under a key since rotated "
            "(`fedshield client rotate-key` re-seals those)",
        )
    nonce = header[len(MAGIC) + _KEY_ID_BYTES :]
    try:
        return AESGCM(keys.at_rest).decrypt(
            nonce, blob[_HEADER_BYTES:], _associated(header, purpose, path)
        )
    except InvalidTag:
        raise SealedFileError(
            path,
            "fails authentication: it was edited, truncated, renamed, or copied from "
            "another file or owner",
        ) from None


def sealed_key_id(path: Path) -> str | None:
    """The key id a sealed file's header names (unauthenticated; None: not a sealed file)."""
    with Path(path).open("rb") as handle:
        header = handle.read(_HEADER_BYTES)
    if len(header) < _HEADER_BYTES or not header.startswith(MAGIC):
        return None
    return _key_id_of(header)


def reseal(path: Path, old_keys: OwnerKeys, new_keys: OwnerKeys, purpose: str) -> None:
    """Re-encrypt ``path`` from ``old_keys`` to ``new_keys`` (atomic: old or new on disk)."""
    write_sealed(path, read_sealed(path, old_keys, purpose), new_keys, purpose)


@dataclass
class ResealCounts:
    """What ``reseal_files`` did: files re-sealed, already under the new key, and left
    alone because neither key opens them (the node rebuilds or ignores those)."""

    resealed: int = 0
    already: int = 0
    unreadable: list[Path] = field(default_factory=list)


def reseal_files(
    files: Iterable[tuple[Path, str]], old_keys: OwnerKeys | None, new_keys: OwnerKeys
) -> ResealCounts:
    """Bring every (path, purpose) under ``new_keys``; idempotent, so a rotation that was
    interrupted finishes when run again."""
    counts = ResealCounts()
    for path, purpose in files:
        try:
            read_sealed(path, new_keys, purpose)
            counts.already += 1
            continue
        except SealedFileError:
            pass
        try:
            if old_keys is None:
                raise SealedFileError(path, "no previous key")
            reseal(path, old_keys, new_keys, purpose)
            counts.resealed += 1
        except SealedFileError:
            counts.unreadable.append(path)
    return counts


def _key_id_of(header: bytes) -> str:
    return header[len(MAGIC) : len(MAGIC) + _KEY_ID_BYTES].decode("ascii", errors="replace")


def _associated(header: bytes, purpose: str, path: Path) -> bytes:
    # The name and its folder's name are bound too: a cache copied over another cache's
    # name, or a release moved to another round's name or another data version's folder,
    # fails authentication instead of standing in for it.
    where = f"{path.parent.name}/{path.name}".encode()
    return header + b"\0" + purpose.encode("utf-8") + b"\0" + where
