"""No key rotation under a running node: a lock on the owner's key folder.

Guarantee: ``fedshield client rotate-key`` never runs while a node that uses the same
key folder runs, and no node starts while a rotation is under way. A rotation under a
running node would leave files the node seals meanwhile under the retired key, and
the key it deletes at the end could be the one the node still holds in memory: caches
rebuilt and kept releases lost for nothing. Nodes share the folder (owners on one
machine may keep their keys together); a rotation needs it alone.

The lock is ``flock`` on ``KEY_DIR/in-use.lock``: shared for each running node,
exclusive for a rotation, released by the kernel when its holder exits however it
exits, so a crashed node never leaves the folder locked. (Hand-written over a library:
``fcntl.flock`` is the whole mechanism; a lock-file package would add a dependency for
a few lines.)
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedshield.common.errors import ConfigError

LOCK_NAME = "in-use.lock"


@contextmanager
def node_uses_keys(key_dir: Path) -> Iterator[None]:
    """A running node's share of ``key_dir``; refused while a rotation holds it."""
    with _locked(
        key_dir,
        fcntl.LOCK_SH,
        "a key rotation is under way on {key_dir}; let `fedshield client rotate-key` "
        "finish, then start the node again",
    ):
        yield


@contextmanager
def rotation_owns_keys(key_dir: Path) -> Iterator[None]:
    """``key_dir`` for a rotation alone; refused while any node that uses it runs."""
    with _locked(
        key_dir,
        fcntl.LOCK_EX,
        "a running node uses {key_dir}; stop every node started with this --key-dir "
        "(Ctrl-C, or its service's stop), then rotate",
    ):
        yield


@contextmanager
def _locked(key_dir: Path, mode: int, refusal: str) -> Iterator[None]:
    key_dir = Path(key_dir).expanduser()
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(refusal.format(key_dir=key_dir)) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
