"""One way to write a file that must survive a crash: atomic and durable.

Guarantee: after ``write_atomic`` returns, the file holds exactly the new content, also
after a power cut: the content goes to a temporary file in the same folder (created
with ``mode``), is fsynced, renamed over the target (atomic on POSIX), and the folder
is fsynced so that the rename itself is on disk. A crash at any point leaves the old
file or the new one, never a mix; a reader never sees a partial file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o600) -> None:
    """Replace ``path`` with what ``write(handle)`` writes, atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # A leftover of a crash, or anything planted at the name (a symbolic link to another
    # file), is removed, never written through: the file is created new, here.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    write_atomic(path, lambda handle: handle.write(data), mode)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks: the one file hash (data fingerprints,
    model.pt in model.json, the shipped encoder weights)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
