"""The train reply: the release logged in the owner's audit log, then the message.

Guarantee: the ``update-released`` entry (digest, size, distance from the global model,
metrics, and the charge attempt it is released under) is written before the reply is
built, and the reply carries only the fields ``wire.check_reply_fields`` allows.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedshield.client.owner import Owner
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog


def release_update(
    msg: Message,
    owner: Owner,
    arrays: ArrayRecord,
    metrics: MetricRecord,
    audit: AuditLog,
    server_round: int,
    relation: str,
    paid_by: str = "",
) -> Message:
    """Log the release, then build the reply (arrays, aggregate metrics, owner record
    with the privacy definition the update was released under). ``paid_by``: the charge
    attempt the update is released under (the ledger entry's ``release``), for the
    auditor to match a reused charge against the releases."""
    digest, size = wire.arrays_digest(arrays)
    released = audit.append(
        Event.UPDATE_RELEASED,
        **{
            Field.SERVER_ROUND: server_round,
            Field.UPDATE_SHA256: digest,
            Field.UPDATE_BYTES: size,
            Field.UPDATE_L2_DISTANCE: wire.arrays_l2_distance(arrays, msg.content[wire.ARRAYS]),
            Field.METRICS: dict(metrics),
            **({Field.PAID_BY: paid_by} if paid_by else {}),
        },
    )
    owner_record = ConfigRecord(
        {
            wire.OWNER_ID: owner.owner_id,
            wire.AUDIT_HEAD: released["hash"],
            wire.PRIVACY_DEFINITION: relation,
        }
    )
    content = RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics, wire.OWNER: owner_record})
    wire.check_reply_fields("train", content)
    return Message(content=content, reply_to=msg)
