"""A sealed file that failed authentication, in the owner's own audit log.

Guarantee: every file the owner sealed at rest (its desensitised texts, its encodings,
its kept releases: common/sealed.py) that fails authentication when read is never used,
and the owner's audit log says so: the file's name (a hash, never content), what it was
for, why it failed (edited, truncated, another owner's, under a rotated key) and what
was done instead. An auditor reading the log sees integrity failures at rest as well
as in transit; a console warning alone would be gone with the terminal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.common.errors import SealedFileError

_log = logging.getLogger(__name__)


def rejection_recorder(
    audit: AuditLog | Path | None, actor: str, purpose: str
) -> Callable[[SealedFileError, str], None]:
    """``record(error, action)`` for files sealed for ``purpose``: warns on the console
    and appends ``sealed-file-rejected`` to ``audit`` (a log, or the owner's audit folder;
    None: the console only)."""

    def record(error: SealedFileError, action: str) -> None:
        _log.warning("%s", error)
        if audit is None:
            return
        log = audit if isinstance(audit, AuditLog) else AuditLog(audit / "audit.jsonl", actor=actor)
        log.append(
            Event.SEALED_FILE_REJECTED,
            file=Path(str(error.path)).name,
            purpose=purpose,
            reason=error.reason,
            action=action,
        )

    return record
