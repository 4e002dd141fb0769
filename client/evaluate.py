"""Evaluate at a data owner: only with its consent, and then a DP answer, charged.

Guarantee: an evaluate reply carries a Gaussian-noised accuracy and loss whose DP event
(one Gaussian mechanism, noise multiplier ``evaluate-noise-multiplier``) is charged to
the owner's ledger before the answer leaves; without the owner's ``allow-evaluate``
nothing is computed and the request is refused.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedshield.client.charge import charge_and_audit, load_global_model, record_budget_change
from fedshield.client.count import released_record_count
from fedshield.client.encoding_cache import owner_inputs
from fedshield.client.ledger_entries import KIND_EVALUATE
from fedshield.client.owner import RECORD, Owner, desensitised_for_round
from fedshield.client.secure_random import SecureRandom
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.dp_event import DpEvent
from fedshield.common.errors import PolicyRefusal
from fedshield.common.model import ModelSpec, evaluate_model
from fedshield.common.plan import Plan

# A DP evaluate answer bounds each record's loss to wire.EVALUATE_LOSS_CLIP, so one
# record moves the loss sum by at most that and the correct count by at most 1.
EVALUATE_LOSS_CLIP = wire.EVALUATE_LOSS_CLIP


def evaluate_round(
    msg: Message,
    context: Context,
    plan: Plan,
    classes: tuple[str, ...],
    owner: Owner,
    audit: AuditLog,
) -> Message:
    """A DP answer to "how does this model do on your data?", only with consent.

    Released: (correct count, clipped loss sum / EVALUATE_LOSS_CLIP), each moved by at most
    1 by adding or removing a record (L2 sensitivity sqrt(2)), plus Gaussian noise of std
    ``evaluate-noise-multiplier * sqrt(2)`` from the CSPRNG: one Gaussian mechanism,
    charged as a DP event (q = 1, one step) before the answer leaves.
    """
    server_round = int(msg.content[wire.CONFIG].get(wire.SERVER_ROUND, 0))
    if not owner.allow_evaluate:
        raise PolicyRefusal("evaluate requests need the owner's consent (allow-evaluate)")
    if owner.protected_unit != RECORD:
        # Decided on the owner's settings alone. One unit moves the answer by up to its
        # record count, not 1; an answer per unit is not built, so none is given.
        raise PolicyRefusal(
            f"evaluate answers are DP per record and this owner protects each "
            f"'{owner.protected_unit}' (privacy-unit); set allow-evaluate off"
        )
    spec = ModelSpec.from_config(plan)
    model = load_global_model(msg, spec, len(classes))  # checked before any charge
    event = DpEvent(noise_multiplier=owner.evaluate_noise_multiplier, sample_rate=1.0, steps=1)
    record_budget_change(owner, audit)
    # The answer is divided by the released count, never N (client/count.py).
    count = released_record_count(owner, audit, context, server_round, dp=True)
    owner.ledger.check_budget(event, context.run_id)
    owner = desensitised_for_round(owner, audit, server_round)
    inputs = owner_inputs(owner, spec)
    # Batches bounded like training passes: the plan chooses the model's size.
    batch = min(256, spec.default_physical_batch_size(model, owner.device, len(owner.dataset)))
    mean_loss, accuracy = evaluate_model(
        model,
        inputs,
        owner.dataset.labels,
        owner.device,
        batch_size=batch,
        loss_clip=EVALUATE_LOSS_CLIP,
    )
    # Sums over the records (no count in them): each record moves each by at most 1
    # under add/remove and under replace-one alike.
    exact = np.array(
        [accuracy * len(owner.dataset), mean_loss * len(owner.dataset) / EVALUATE_LOSS_CLIP]
    )
    epsilon = charge_and_audit(
        owner,
        audit,
        event,
        context,
        server_round,
        KIND_EVALUATE,
        math.sqrt(2),
        relation=count.relation,
    )
    divisor = count.at_least_one
    noisy = exact + SecureRandom().standard_normal(2) * event.noise_multiplier * math.sqrt(2)
    metrics = MetricRecord(
        {
            "num-examples": count.value,
            "accuracy": float(np.clip(noisy[0] / divisor, 0.0, 1.0)),
            "loss": float(np.clip(noisy[1] / divisor, 0.0, 1.0) * EVALUATE_LOSS_CLIP),
            "epsilon": epsilon,
            "noise-multiplier": event.noise_multiplier,
        }
    )
    released = audit.append(
        Event.EVALUATE_RELEASED,
        **{Field.SERVER_ROUND: server_round, Field.METRICS: dict(metrics)},
    )
    owner_record = ConfigRecord({wire.OWNER_ID: owner.owner_id, wire.AUDIT_HEAD: released["hash"]})
    content = RecordDict({wire.METRICS: metrics, wire.OWNER: owner_record})
    wire.check_reply_fields("evaluate", content)
    return Message(content=content, reply_to=msg)
