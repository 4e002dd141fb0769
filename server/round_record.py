"""What the server records of each round, and the replies it refuses into that record.

Guarantee: a reply counts as an owner's only if it answers a task this server sent in
this step, from the node the task went to, once (``check_senders``); the owner is named
by that node's authenticated key (server/identity.py), never by a field of the reply.
Every other reply, every coded refusal and every rejected update is written, in the same
words, to the round's ``RoundRecord`` (metrics.json), the operator's log and the audit log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flwr.app import Message

from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.untrusted import printable
from fedshield.server.identity import OwnerDirectory, OwnerIdentity
from fedshield.server.validate import UpdateRejected

log = logging.getLogger("fedshield.server")


@dataclass
class RoundRecord:
    """One round as metrics.json and the operator see it; owners by authenticated name."""

    server_round: int
    participants: list[str] = field(default_factory=list)  # owners' authenticated names
    epsilon: dict[str, float] = field(default_factory=dict)  # name -> newest reported total
    labels: dict[str, str] = field(default_factory=dict)  # name -> self-declared label
    refusals: list[str] = field(default_factory=list)
    refusal_codes: list[int] = field(default_factory=list)
    connected: int = 0  # owners connected when the round was configured
    rejected: list[str] = field(default_factory=list)
    impersonated: list[str] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    late: list[str] = field(default_factory=list)  # names of sampled owners with no reply


def check_senders(
    server_round: int,
    kind: str,
    replies: list[Message],
    tasks: list[Message],
    *,
    record: RoundRecord,
    owners: OwnerDirectory,
    audit: AuditLog,
) -> list[tuple[Message, OwnerIdentity]]:
    """The replies that answer a task of ``tasks`` from the node it was sent to, once,
    each with its owner; every other reply is refused, logged and audited."""
    sent = {m.metadata.message_id: m.metadata.dst_node_id for m in tasks}
    sent.pop("", None)  # a task the grid did not push has no id and no valid reply
    if tasks and not sent:
        log.error(
            "round %d: none of the %d %s tasks has a message id after sending; flwr 1.42's "
            "grids set it when they push (server/round_record.py relies on it): every reply "
            "is refused until this is fixed",
            server_round,
            len(tasks),
            kind,
        )
    answered: set[str] = set()
    checked = []
    for reply in replies:
        task_id = reply.metadata.reply_to_message_id
        sender = reply.metadata.src_node_id
        task_node = sent.get(task_id)
        if task_node is None:
            reason = "replies to a task this server did not send in this step"
        elif sender != task_node:
            reason = f"node {sender} sent the reply to the task sent to node {task_node}"
        elif task_id in answered:
            reason = "a second reply to the same task"
        else:
            answered.add(task_id)
            checked.append((reply, owners.identity(task_node)))
            continue
        victim = owners.identity(task_node).name if task_node is not None else None
        record.impersonated.append(
            f"{kind} reply from node {sender}"
            + (f" for {victim}'s task" if victim else "")
            + f": {reason}"
        )
        log.warning(
            "round %d: refused a %s reply from node %s: %s", server_round, kind, sender, reason
        )
        audit.append(
            Event.REPLY_IMPERSONATED,
            **{
                Field.SERVER_ROUND: server_round,
                Field.MESSAGE_TYPE: kind,
                Field.SENDER_NODE_ID: sender,
                Field.REPLY_TO_MESSAGE_ID: printable(task_id, 80),
                Field.TASK_NODE_ID: task_node,
                Field.TASK_OWNER: victim,
                Field.REASON: reason,
            },
        )
    return checked


def record_refusal(
    server_round: int,
    kind: str,
    reply: Message,
    owner: OwnerIdentity,
    *,
    record: RoundRecord,
    audit: AuditLog,
) -> None:
    """An owner's coded refusal: the server's own words for known codes."""
    code = int(reply.error.code)
    said = wire.REFUSAL_REASONS.get(code)
    if said is None:
        said = f"error {code}: " + printable(reply.error.reason or "no reason", 200)
    reason = f"{owner.name}: {said}"
    if kind == "train":
        record.refusals.append(reason)
        record.refusal_codes.append(code)
    log.warning("round %d: %s refused the %s request: %s", server_round, owner.name, kind, said)
    audit.append(
        Event.CLIENT_REFUSED,
        **{
            Field.SERVER_ROUND: server_round,
            Field.MESSAGE_TYPE: kind,
            **owner.describe(),
            "reason-as-sent": printable(reply.error.reason or "", 300),
            Field.CODE: code,
            Field.REASON: reason,
        },
    )


def record_rejection(
    server_round: int,
    kind: str,
    owner: OwnerIdentity,
    exc: UpdateRejected,
    *,
    record: RoundRecord,
    audit: AuditLog,
) -> None:
    """An update or evaluate answer that failed validation (server/validate.py)."""
    record.rejected.append(f"{owner.name}: {exc}")
    log.warning("round %d: rejected a %s reply from %s: %s", server_round, kind, owner.name, exc)
    audit.append(
        Event.UPDATE_REJECTED,
        **{
            Field.SERVER_ROUND: server_round,
            Field.MESSAGE_TYPE: kind,
            **owner.describe(),
            Field.REASON: str(exc),
        },
    )
