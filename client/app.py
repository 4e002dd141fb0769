"""The ClientApp: one data owner's side of a round.

train: load data -> encode (frozen, public part of the model) -> pre-flight budget check -> DP-SGD -> charge ledger ->
reply. A refusal (budget, ledger, data, config) is an error reply with a clear reason;
the server reports it and carries on with the other owners.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from fedshield.client.owner import Owner, owner_inputs, resolve_owner
from fedshield.client.releases import ReleasedUpdates
from fedshield.client.train import TrainSettings, planned_dp_event, train_locally
from fedshield.common import wire
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import RunConfig
from fedshield.common.data import check_batch_fits
from fedshield.common.errors import (
    FedshieldError,
    LedgerCorrupted,
    PrivacyBudgetExceeded,
)
from fedshield.common.federation import model_spec
from fedshield.common.model import ModelSpec, evaluate_model, unwrapped_state_dict
from fedshield.common.privacy import epsilon_spent, noise_for_target_epsilon
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

log = logging.getLogger("fedshield.client")


@lru_cache(maxsize=64)
def _derived_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    return noise_for_target_epsilon(target_epsilon, delta, sample_rate, steps)


def training_settings(plan: RunConfig, owner: Owner) -> TrainSettings:
    """The round's settings; the noise multiplier is fixed or derived from the target.

    A target epsilon is met over the whole run: the noise is chosen so that
    ``num-rounds`` rounds of this owner's training compose to at most the target.
    """
    settings = TrainSettings.from_plan(plan)
    if plan.dp and plan.noise_multiplier <= 0:
        one_round = planned_dp_event(len(owner.dataset), settings)
        sigma = _derived_noise(
            plan.target_epsilon,
            owner.delta,
            one_round.sample_rate,
            one_round.steps * plan.num_rounds,
        )
        settings = TrainSettings(**{**settings.__dict__, "noise_multiplier": sigma})
    return settings


def _local_run_config(context: Context, overrides: dict) -> RunConfig:
    return RunConfig.from_dict({**dict(context.run_config), **overrides})


def _load_global_model(msg: Message, spec: ModelSpec, num_classes: int) -> torch.nn.Module:
    model = spec.build(num_classes)
    model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
    return model


def _refusal(msg: Message, owner_id: str, exc: FedshieldError) -> Message:
    code = {
        PrivacyBudgetExceeded: wire.ERROR_BUDGET_EXCEEDED,
        LedgerCorrupted: wire.ERROR_LEDGER_CORRUPTED,
    }.get(type(exc), wire.ERROR_BAD_DATA_OR_CONFIG)
    log.warning("%s refused the round: %s", owner_id, exc)
    return Message(Error(code=code, reason=f"{owner_id}: {exc}"), reply_to=msg)


def train_round(
    msg: Message,
    context: Context,
    plan: RunConfig,
    classes: tuple[str, ...],
    server_round: int,
    owner: Owner,
    audit: AuditLog,
) -> Message:
    """One round at one owner: data -> features -> pre-flight -> DP-SGD -> charge -> reply."""
    audit.append(
        "round-start",
        **{
            "run-id": context.run_id,
            "node-id": context.node_id,
            "server-round": server_round,
            "data-fingerprint": owner.dataset.fingerprint,
            "records": len(owner.dataset),
            "class-counts": owner.dataset.class_counts(),
            "plan": dict(msg.content[wire.CONFIG]),
            "device": str(owner.device),
            "transport": dict(context.node_config).get("transport", "flower-managed"),
        },
    )
    releases = ReleasedUpdates(owner.ledger.directory, owner.dataset.fingerprint)
    global_sha256 = wire.arrays_digest(msg.content[wire.ARRAYS])[0]
    already = releases.find(plan.run_key, server_round, global_sha256)
    if already is not None:
        arrays, metrics = already
        audit.append(
            "update-re-released",
            **{
                "server-round": server_round,
                "update-sha256": wire.arrays_digest(arrays)[0],
                "reason": "the server re-sent a round already answered; same update, no new charge",
            },
        )
        return _reply(msg, owner, arrays, metrics, audit, server_round)
    check_batch_fits(owner.dataset, plan.batch_size)
    spec = model_spec(plan)
    inputs = owner_inputs(owner, spec)
    settings = training_settings(plan, owner)
    planned = planned_dp_event(len(owner.dataset), settings)
    if plan.dp:
        # Refuse before training: nothing is computed on the data past the budget.
        owner.ledger.check_budget(planned, owner.epsilon_budget, owner.delta)
    model = _load_global_model(msg, spec, len(classes))
    outcome = train_locally(model, inputs, owner.dataset.labels, settings, owner.device)
    epsilon = 0.0
    if plan.dp:
        if outcome.dp_event != planned:
            raise RuntimeError(f"training did {outcome.dp_event}, planned {planned}")
        # Charge before release: a crash after this line over-counts, never under-counts.
        epsilon = owner.ledger.charge_ledger_before_release(
            outcome.dp_event, owner.epsilon_budget, owner.delta, context.run_id, server_round
        )
        history = [e.event for e in owner.ledger.entries()]  # one read: this charge is last
        audit.append(
            "dp-charged",
            **{
                "server-round": server_round,
                "data-fingerprint": owner.dataset.fingerprint,
                "noise-multiplier": settings.noise_multiplier,
                "max-grad-norm": settings.max_grad_norm,
                "sample-rate": planned.sample_rate,
                "steps": planned.steps,
                "delta": owner.delta,
                "epsilon-before": epsilon_spent(history[:-1], owner.delta),
                "epsilon-after": epsilon,
                "epsilon-budget": owner.epsilon_budget,
                "budget-remaining": owner.epsilon_budget - epsilon,
                "ledger-events": [[e.noise_multiplier, e.sample_rate, e.steps] for e in history],
            },
        )
    else:
        audit.append(
            "non-private-round",
            **{"server-round": server_round, "warning": "dp disabled by the plan"},
        )
    arrays = ArrayRecord(unwrapped_state_dict(model))
    metrics = MetricRecord(
        {
            "num-examples": outcome.num_examples,
            "train-loss": outcome.train_loss,
            "epsilon": epsilon,
            "epsilon-budget": owner.epsilon_budget if plan.dp else 0.0,
            "noise-multiplier": settings.noise_multiplier if plan.dp else 0.0,
            "sample-rate": planned.sample_rate if plan.dp else 0.0,
            "steps": planned.steps,
            "delta": owner.delta if plan.dp else 0.0,
            "max-grad-norm": settings.max_grad_norm if plan.dp else 0.0,
        }
    )
    releases.remember(plan.run_key, server_round, global_sha256, arrays, metrics)
    return _reply(msg, owner, arrays, metrics, audit, server_round)


def _reply(
    msg: Message,
    owner: Owner,
    arrays: ArrayRecord,
    metrics: MetricRecord,
    audit: AuditLog,
    server_round: int,
) -> Message:
    """Log the release, then build the reply (arrays, aggregate metrics, owner record)."""
    digest, size = wire.arrays_digest(arrays)
    released = audit.append(
        "update-released",
        **{
            "server-round": server_round,
            "update-sha256": digest,
            "update-bytes": size,
            "update-l2-distance": wire.arrays_l2_distance(arrays, msg.content[wire.ARRAYS]),
            "metrics": dict(metrics),
        },
    )
    owner_record = ConfigRecord({wire.OWNER_ID: owner.owner_id, wire.AUDIT_HEAD: released["hash"]})
    content = RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics, wire.OWNER: owner_record})
    return Message(content=content, reply_to=msg)


def make_client_app(run_overrides: dict | None = None) -> ClientApp:
    """A ClientApp; ``run_overrides`` stand in for run config that ``flwr run`` would pass."""
    overrides = dict(run_overrides or {})
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            plan, classes, server_round = wire.decode_train_plan(msg.content[wire.CONFIG])
            owner = resolve_owner(
                context.node_config, _local_run_config(context, overrides), classes
            )
        except FedshieldError as exc:
            return _refusal(msg, "client", exc)
        audit = AuditLog(owner.audit_dir / "audit.jsonl", actor=owner.owner_id)
        try:
            return train_round(msg, context, plan, classes, server_round, owner, audit)
        except FedshieldError as exc:
            audit.append("round-refused", **{"server-round": server_round, "reason": str(exc)})
            return _refusal(msg, owner.owner_id, exc)
        except Exception as exc:
            audit.append(
                "round-error", **{"server-round": server_round, "error": type(exc).__name__}
            )
            raise
        finally:
            audit.checkpoint("message-end")

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        # Off by default (fraction-evaluate 0): accuracy on an owner's records is not
        # covered by the DP guarantee, only the training updates are.
        owner_id = "client"
        try:
            plan, classes, _ = wire.decode_train_plan(msg.content[wire.CONFIG])
            owner = resolve_owner(
                context.node_config, _local_run_config(context, overrides), classes
            )
            owner_id = owner.owner_id
            spec = model_spec(plan)
            inputs = owner_inputs(owner, spec)
        except FedshieldError as exc:
            return _refusal(msg, owner_id, exc)
        model = _load_global_model(msg, spec, len(classes))
        loss, accuracy = evaluate_model(model, inputs, owner.dataset.labels, owner.device)
        metrics = MetricRecord(
            {"num-examples": len(owner.dataset), "loss": loss, "accuracy": accuracy}
        )
        return Message(content=RecordDict({wire.METRICS: metrics}), reply_to=msg)

    return app


app = make_client_app()
