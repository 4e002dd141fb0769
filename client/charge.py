"""Around a DP computation at the owner: the server's model in, the charge and its
audit record before anything is released.

Guarantee: ``charge_and_audit`` writes the ledger durably first (a crash after it can
over-count, never under-count), then appends a ``dp-charged`` audit entry carrying the
whole ledger history composed (``privacy.composed_history``: one event per mechanism,
steps summed, so an entry's size grows with the mechanisms, not the rounds), from which
an auditor recomputes epsilon independently, and the
name of the accountant the figures rest on (``privacy.accountant_used``: PLD, or RDP
beyond PLD's range). A retried round whose first attempt was charged and stopped before
keeping its update (``paid``: nothing left) adds no ledger entry; its ``dp-charged``
entry names that charge (``reuses-charge-of``), its history unchanged.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message

from fedshield.client.accept import check_model_arrays
from fedshield.client.ledger_entries import LedgerEntry
from fedshield.client.owner import Owner
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.dp_event import DpEvent
from fedshield.common.model import ModelSpec
from fedshield.common.privacy import (
    ADD_REMOVE,
    accountant_used,
    composed_history,
    epsilon_spent,
)


def load_global_model(msg: Message, spec: ModelSpec, num_classes: int) -> torch.nn.Module:
    """The server's model, into the architecture the plan names (keys, shapes, dtypes
    strict, values finite: ``accept.check_model_arrays``, before anything is converted)."""
    model = spec.build(num_classes)
    arrays = msg.content[wire.ARRAYS]
    check_model_arrays(arrays, model.state_dict())
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def record_budget_change(owner: Owner, audit: AuditLog) -> None:
    """Budget changes are the owner's decisions: ledger and audit log keep each one."""
    change = owner.ledger.record_budget()
    if change is not None:
        audit.append(
            Event.BUDGET_CHANGED,
            **{
                Field.OLD_BUDGET: change.old,
                Field.NEW_BUDGET: change.new,
                "changed-at": change.recorded_at,
                Field.LEDGER_ID: owner.ledger.state().ledger_id,
            },
        )


def charge_and_audit(
    owner: Owner,
    audit: AuditLog,
    event: DpEvent,
    context: Context,
    server_round: int,
    kind: str,
    max_grad_norm: float,
    *,
    relation: str = ADD_REMOVE,
    released: int | None = None,
    trained: DpEvent | None = None,
    release: str = "",
    paid: LedgerEntry | None = None,
) -> float:
    """Charge the ledger durably, then record the charge with the whole history, composed.

    ``event`` is what the accountant composes (``privacy.accounted_event`` of the
    ``trained`` event under ``relation``); ``released`` is a count release's value.
    """
    if paid is None:
        # Charge before release: a crash after this line over-counts, never under-counts.
        epsilon = owner.ledger.charge_ledger_before_release(
            event,
            context.run_id,
            server_round,
            kind=kind,
            data_fingerprint=owner.dataset.fingerprint,
            records=len(owner.dataset),
            relation=relation,
            released=released,
            unit=owner.protected_unit,
            release=release,
        )
    else:
        # Paid by an attempt that stopped before keeping its update (none left): recorded
        # again, with the history unchanged, in case that attempt's entry was lost too.
        epsilon = owner.ledger.epsilon(owner.delta)
    state = owner.ledger.state()  # one read
    history = [e.event for e in state.entries]
    before = history[:-1] if paid is None else [e.event for e in state.entries if e != paid]
    audit.append(
        Event.DP_CHARGED,
        **{
            Field.SERVER_ROUND: server_round,
            Field.KIND: kind,
            Field.LEDGER_ID: state.ledger_id,
            Field.DATA_FINGERPRINT: owner.dataset.fingerprint,
            Field.NOISE_MULTIPLIER: event.noise_multiplier,
            "max-grad-norm": max_grad_norm,
            Field.SAMPLE_RATE: event.sample_rate,
            Field.STEPS: event.steps,
            Field.DELTA: owner.delta,
            Field.RELATION: relation,
            # What epsilon protects: one record, or one unit (the privacy-unit column).
            Field.PRIVACY_UNIT: owner.protected_unit,
            **({"released-count": released} if released is not None else {}),
            **(
                {
                    "trained-noise-multiplier": trained.noise_multiplier,
                    "trained-sample-rate": trained.sample_rate,
                }
                if trained is not None and trained != event
                else {}
            ),
            Field.ACCOUNTANT: accountant_used(history, owner.delta),
            "epsilon-before": epsilon_spent(before, owner.delta),
            Field.EPSILON_AFTER: epsilon,
            Field.EPSILON_BUDGET: owner.epsilon_budget,
            "budget-remaining": owner.epsilon_budget - epsilon,
            # The history composed (one event per mechanism, steps summed): the same
            # epsilon, and an entry whose size does not grow with the rounds.
            Field.LEDGER_EVENTS: [e.as_entry() for e in composed_history(history)],
            **({Field.REUSES_CHARGE_OF: paid.recorded_at} if paid is not None else {}),
            **({Field.PAID_BY: release} if release else {}),
        },
    )
    return epsilon
