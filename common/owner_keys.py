"""The data owner's keys, in a folder of its own: created on first start, never sent.

Guarantees:
- two keys, 32 bytes each from the operating system's CSPRNG (``secrets``): ``at-rest.key``
  (AES-256-GCM, common/sealed.py: every file fedshield keeps that is derived from the
  owner's text) and ``pseudonym.key`` (HMAC key of the desensitisation policy's keyed
  pseudonyms: the same person gets the same pseudonym across data versions, so it is
  never rotated);
- the folder is 0700 and each key 0600; a folder or key that the owner's group or others
  can read is refused with the ``chmod`` that fixes it, and so is a key of the wrong
  length: a key is used as it is or not at all;
- a key file appears whole or not at all (written to a private temporary file, fsynced,
  then hard-linked to its name, which fails if the name exists): two processes starting
  together keep one key, the one that was linked first;
- rotation (``rotate_at_rest_key``) keeps the old at-rest key as ``at-rest.key.previous``
  until every sealed file was re-sealed (``finish_rotation``), and can be run again after
  a crash at any point without losing a key that a file is still sealed under.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from fedshield.common.durable import _fsync_dir, write_bytes_atomic
from fedshield.common.errors import ConfigError

KEY_BYTES = 32
AT_REST = "at-rest.key"
AT_REST_PREVIOUS = "at-rest.key.previous"
PSEUDONYM = "pseudonym.key"
_KEY_ID_LABEL = b"fedshield key id"


@dataclass(frozen=True, repr=False)
class OwnerKeys:
    """The owner's key material; ``repr`` shows only the public key id."""

    at_rest: bytes
    pseudonym: bytes

    @property
    def key_id(self) -> str:
        """A public name of the at-rest key (written in sealed files' headers, printed)."""
        return key_id(self.at_rest)

    def __repr__(self) -> str:
        return f"OwnerKeys(key_id={self.key_id!r})"


def key_id(at_rest: bytes) -> str:
    return hmac.new(at_rest, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def check_private(path: Path, label: str) -> None:
    """Refuse a folder (``label`` e.g. ``--key-dir``) or file others can read or enter,
    naming the mode and the fix."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        private = 0o700 if path.is_dir() else 0o600
        raise ConfigError(
            f"{label} {path}: permissions {oct(mode)} let others on this machine read it; "
            f"run: chmod {private:o} {path}"
        )


def open_owner_keys(key_dir: Path, *, create: bool = True) -> OwnerKeys:
    """The owner's keys from ``key_dir``, created there on first use unless ``create``
    is false (then a missing folder or key is refused)."""
    key_dir = Path(key_dir).expanduser()
    if not key_dir.is_dir():
        if not create:
            raise ConfigError(
                f"--key-dir {key_dir}: no such folder; pass the --key-dir you gave "
                "`fedshield client start`"
            )
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_private(key_dir, "--key-dir")
    return OwnerKeys(
        at_rest=_read_or_create(key_dir / AT_REST, create),
        pseudonym=_read_or_create(key_dir / PSEUDONYM, create),
    )


def open_previous_keys(key_dir: Path) -> OwnerKeys | None:
    """The keys as they were before an unfinished rotation (None: no rotation pending)."""
    key_dir = Path(key_dir).expanduser()
    if not (key_dir / AT_REST_PREVIOUS).exists():
        return None
    current = open_owner_keys(key_dir, create=False)
    return OwnerKeys(_read_key(key_dir / AT_REST_PREVIOUS), current.pseudonym)


def rotate_at_rest_key(key_dir: Path) -> tuple[str, str]:
    """A new at-rest key; the old one stays as ``at-rest.key.previous`` until
    ``finish_rotation``. Returns (old key id, new key id).

    Run again after an interruption, it resumes: a pending rotation (a previous key
    other than the current one) is finished, not started anew, so the key that files are
    still sealed under is never overwritten. The pseudonym key is not touched.
    """
    key_dir = Path(key_dir).expanduser()
    current = open_owner_keys(key_dir, create=False)
    previous_path = key_dir / AT_REST_PREVIOUS
    if previous_path.exists():
        previous = _read_key(previous_path)
        if previous != current.at_rest:
            return key_id(previous), current.key_id
    else:
        # The old key is safe on disk before the new one replaces it: a crash in between
        # leaves both names holding the old key, and the next run rotates from there.
        write_bytes_atomic(previous_path, current.at_rest, mode=0o600)
    write_bytes_atomic(key_dir / AT_REST, secrets.token_bytes(KEY_BYTES), mode=0o600)
    return current.key_id, open_owner_keys(key_dir, create=False).key_id


def finish_rotation(key_dir: Path) -> None:
    """Forget the previous at-rest key: call once every file is sealed under the new one."""
    key_dir = Path(key_dir).expanduser()
    (key_dir / AT_REST_PREVIOUS).unlink(missing_ok=True)
    _fsync_dir(key_dir)


def _read_or_create(path: Path, create: bool) -> bytes:
    if not path.exists():
        if not create:
            raise ConfigError(
                f"{path}: no such key; pass the --key-dir you gave `fedshield client start`"
            )
        _create_key(path)
    return _read_key(path)


def _create_key(path: Path) -> None:
    """Write a fresh key under ``path`` unless one is there already (then keep that one)."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # link() fails if the name exists: the first process to get here wins, and a
            # reader never sees a key half written.
            os.link(tmp, path)
        except FileExistsError:
            return
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _read_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{path}: is a symbolic link; a key must be a file of its own in --key-dir"
            ) from exc
        raise ConfigError(f"{path}: cannot read the key ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path}: permissions {oct(mode)} let others on this machine read your key; "
                f"run: chmod 600 {path}"
            )
        data = handle.read(KEY_BYTES + 1)
    if len(data) != KEY_BYTES:
        raise ConfigError(
            f"{path}: holds {len(data)}{'+' if len(data) > KEY_BYTES else ''} bytes, not "
            f"{KEY_BYTES}: not a fedshield key, or damaged; restore it from your backup "
            "(without it the files sealed under it cannot be read)"
        )
    return data
