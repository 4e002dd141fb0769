"""An owner's refusals: a code and a fixed reason for the server, the details for the
owner's own console and audit log.

Guarantee: a refusal reply carries only ``wire.REFUSAL_REASONS[code]`` and the owner's
label, never the exception's text (which may hold values from the data or the server);
the owner's log keeps the reason, cut at ``MAX_LOGGED_REASON_CHARS``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Error, Message

from fedshield.client.owner import owner_audit_dir, owner_label
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import RunConfig
from fedshield.common.errors import (
    FedshieldError,
    LedgerCorrupted,
    PolicyRefusal,
    PrivacyBudgetExceeded,
)

log = logging.getLogger("fedshield.client")


def refusal_code(exc: Exception) -> int:
    return {
        PrivacyBudgetExceeded: wire.ERROR_BUDGET_EXCEEDED,
        LedgerCorrupted: wire.ERROR_LEDGER_CORRUPTED,
        PolicyRefusal: wire.ERROR_POLICY,
    }.get(
        type(exc),
        wire.ERROR_BAD_DATA_OR_CONFIG if isinstance(exc, FedshieldError) else wire.ERROR_INTERNAL,
    )


def refusal(msg: Message, owner_id: str, exc: Exception) -> Message:
    """An error reply with a code and a fixed reason: the details stay with the owner."""
    code = refusal_code(exc)
    log.warning("%s refused the %s request: %s", owner_id, msg.metadata.message_type, exc)
    return Message(
        Error(code=code, reason=f"{owner_id}: {wire.REFUSAL_REASONS[code]}"), reply_to=msg
    )


# A refusal's reason in the owner's log: enough to act on, never a server-sized value.
MAX_LOGGED_REASON_CHARS = 2000


def record_refusal(audit: AuditLog, kind: str, server_round: int, exc: Exception) -> None:
    """The details of a refusal, for the owner's own log only."""
    reason = str(exc)
    if len(reason) > MAX_LOGGED_REASON_CHARS:
        reason = reason[:MAX_LOGGED_REASON_CHARS] + f"... ({len(reason)} characters)"
    audit.append(
        Event.EVALUATE_REFUSED if kind == "evaluate" else Event.ROUND_REFUSED,
        **{Field.SERVER_ROUND: server_round, Field.CODE: refusal_code(exc), Field.REASON: reason},
    )


def refusal_audit(node_config: dict, run_config: RunConfig | None) -> AuditLog | None:
    """The owner's audit log when its data or settings could not be loaded."""
    try:
        directory = owner_audit_dir(node_config, run_config or RunConfig())
    except (FedshieldError, ValueError, TypeError):
        return None
    if directory is None:
        return None
    return AuditLog(Path(directory) / "audit.jsonl", actor=owner_label(node_config))
