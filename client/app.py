"""The ClientApp: one data owner's side of a round, under the owner's own policy.

train: owner policy and pre-flight budget check (N and the plan only) -> encode (frozen,
public part of the model) -> DP-SGD -> charge ledger -> reply.
evaluate: only with the owner's consent (``allow-evaluate``), answered with noise and
charged to the ledger like a training round.

Guarantee: whatever the server sends (plan, model, class list), nothing leaves this
owner but the fields declared in ``wire.REPLY_SCHEMA``: the DP update or DP answer,
charged to the ledger before it leaves, and values public by the privacy definition.
A refusal carries a code and a fixed reason; the details (values, paths) go to the
owner's console and audit log only.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from fedshield.client.accept import check_message_records, check_plan_record
from fedshield.client.charge import (
    charge_and_audit,
    load_global_model,
    record_budget_change,
)
from fedshield.client.count import RecordCount, count_event, released_record_count
from fedshield.client.encoding_cache import owner_inputs
from fedshield.client.evaluate import evaluate_round
from fedshield.client.group_warning import warn_group_privacy
from fedshield.client.integrity import rejection_recorder
from fedshield.client.ledger_entries import KIND_TRAIN
from fedshield.client.owner import (
    Owner,
    desensitisation_policy,
    desensitised_for_round,
    is_simulated,
    owner_allows_evaluate,
    owner_label,
    resolve_owner,
)
from fedshield.client.refusals import (
    MAX_LOGGED_REASON_CHARS,
    record_refusal,
    refusal,
    refusal_audit,
)
from fedshield.client.releases import ReleasedUpdates
from fedshield.client.reply import release_update
from fedshield.client.train import (
    TrainSettings,
    calibrated,
    check_plan_cost,
    planned_dp_event,
    train_locally,
)
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import RunConfig
from fedshield.common.errors import (
    ConfigError,
    DataError,
    FedshieldError,
    PolicyRefusal,
)
from fedshield.common.model import ModelSpec, unwrapped_state_dict
from fedshield.common.plan import Plan
from fedshield.common.privacy import ADD_REMOVE, accounted_event, check_delta
from fedshield.common.sealed import RELEASED_UPDATE

log = logging.getLogger("fedshield.client")
MAX_SERVER_ROUND = 999_999


def training_settings(
    plan: Plan, owner: Owner, num_classes: int, count: RecordCount
) -> TrainSettings:
    """The round's settings; the noise multiplier is fixed or derived from the target.

    A target epsilon is met over the whole run: the noise is chosen so that
    ``num-rounds`` rounds of this owner's training, with its count release, compose to
    at most the target (``train.calibrated``, which refuses plans too long to
    calibrate). Calibrated on the released count, never the exact one. The learning
    rate is the plan's, or per class (``Plan.learning_rate_for``).
    """
    settings = TrainSettings.from_plan(plan)
    settings = replace(
        settings,
        learning_rate=plan.learning_rate_for(num_classes),
        max_records_per_unit=owner.max_records_per_unit,  # the owner's, never the plan's
    )
    if plan.dp and plan.noise_multiplier <= 0:
        settings = calibrated(
            settings,
            count.value,
            plan.num_rounds,
            plan.target_epsilon,
            owner.delta,
            with_events=(count_event(owner),) if count.relation == ADD_REMOVE else (),
            relation=count.relation,
        )
    return settings


def check_batch_fits(count: RecordCount, batch_size: int) -> None:
    """Refuse a batch larger than the released count (0 = full batch always fits).

    On the released count, never N: the answer is post-processing of a DP release."""
    if count.value < batch_size:
        raise DataError(
            f"the owner's released record count {count.value} is below the plan's batch size "
            f"{batch_size}; the operator must lower batch-size"
        )


def _local_run_config(context: Context, overrides: dict) -> RunConfig:
    """The local process's run config. A deployed owner reads nothing of the run config
    the server's ``flwr run`` passes (its settings are its node config): a hostile value
    there could otherwise reach the owner's logs and refusals. A simulated owner is
    played by the operator, whose run config is its policy."""
    if not is_simulated(dict(context.node_config)):
        return RunConfig.from_dict(overrides)
    return RunConfig.from_dict({**dict(context.run_config), **overrides})


def train_round(
    msg: Message,
    context: Context,
    plan: Plan,
    classes: tuple[str, ...],
    server_round: int,
    owner: Owner,
    audit: AuditLog,
) -> Message:
    """One round at one owner: data -> features -> pre-flight -> DP-SGD -> charge -> reply."""
    if not 1 <= server_round <= MAX_SERVER_ROUND:
        # The round names the owner's kept releases and their charges (client/releases.py).
        raise ConfigError(
            f"the plan's server-round is {server_round}; an owner trains rounds 1 to "
            f"{MAX_SERVER_ROUND}"
        )
    spec = ModelSpec.from_config(plan)
    # The server's model is checked (client/accept.py) before anything is logged,
    # charged or trained: a bad model costs nothing.
    model = load_global_model(msg, spec, len(classes))
    audit.append(
        Event.ROUND_START,
        **{
            Field.RUN_ID: context.run_id,
            Field.NODE_ID: context.node_id,
            Field.SERVER_ROUND: server_round,
            Field.DATA_FINGERPRINT: owner.dataset.fingerprint,
            Field.RECORDS: len(owner.dataset),
            "records-left-out": owner.dataset.left_out,
            Field.PRIVACY_UNIT: owner.protected_unit,
            **({"units": owner.dataset.unit_count} if owner.dataset.units is not None else {}),
            Field.CLASS_COUNTS: owner.dataset.class_counts(),
            Field.PLAN: dict(msg.content[wire.CONFIG]),
            "device": str(owner.device),
            Field.TRANSPORT: dict(context.node_config).get("transport", "flower-managed"),
            # The policy in force and its counts per entity type: the owner's own record,
            # never in a reply (wire.REPLY_METRIC_KEYS has no such key).
            Field.DESENSITISATION: desensitisation_policy(owner),
        },
    )
    releases = ReleasedUpdates(
        owner.ledger.directory,
        owner.dataset.fingerprint,
        owner.keys,
        rejection_recorder(audit, owner.owner_id, RELEASED_UPDATE),
    )
    with releases.claimed(plan.run_key):
        return _train_claimed(
            msg, model, context, plan, classes, server_round, owner, audit, releases
        )


def _train_claimed(
    msg: Message,
    model: torch.nn.Module,
    context: Context,
    plan: Plan,
    classes: tuple[str, ...],
    server_round: int,
    owner: Owner,
    audit: AuditLog,
    releases: ReleasedUpdates,
) -> Message:
    """``train_round`` with the run claimed: a kept update re-sent, or train, charge, keep."""
    spec = ModelSpec.from_config(plan)
    global_sha256 = wire.arrays_digest(msg.content[wire.ARRAYS])[0]
    already = releases.find(plan.run_key, server_round, global_sha256)
    if already is not None:
        arrays, metrics = already
        audit.append(
            Event.UPDATE_RE_RELEASED,
            **{
                Field.SERVER_ROUND: server_round,
                Field.UPDATE_SHA256: wire.arrays_digest(arrays)[0],
                Field.REASON: "the server re-sent a round already answered; same update, no new charge",
            },
        )
        return release_update(
            msg,
            owner,
            arrays,
            metrics,
            audit,
            server_round,
            owner.relation(float(metrics["noise-multiplier"]) > 0),
        )
    if not plan.dp and not owner.allow_no_dp:
        # The owner decides: a plan cannot switch DP off for an owner that did not opt in.
        raise PolicyRefusal(
            "the plan asks for a non-private round (dp=false); this owner did not opt in "
            "(allow-no-dp)"
        )
    record_budget_change(owner, audit)
    # Everything below that can leave (weights, rates, steps, noise, the update's divisor,
    # refusals) derives from the released count, never from len(owner.dataset).
    count = released_record_count(owner, audit, context, server_round, plan.dp)
    check_batch_fits(count, plan.batch_size)
    settings = training_settings(plan, owner, len(classes), count)
    planned = planned_dp_event(count.value, settings)
    check_plan_cost(planned, plan.num_rounds)
    accounted = accounted_event(planned, count.relation) if plan.dp else planned
    release = releases.release_id(plan.run_key, server_round)
    # Charged already, never kept (the owner stopped in between), so never sent: the
    # retry releases its one update under that charge (client/releases.py).
    candidate = (
        owner.ledger.unreleased_charge(release, accounted, owner.dataset.fingerprint)
        if plan.dp
        else None
    )
    paid = (
        candidate
        if candidate is not None
        and releases.claim_unsent(plan.run_key, server_round, candidate.charge_id)
        else None
    )
    if plan.dp:
        check_delta(owner.delta, count.at_least_one)
        # Refuse before touching the text: the pre-flight needs only the released count
        # and the plan, so a refused round costs the same whatever the records hold.
        if paid is None:
            owner.ledger.check_budget(accounted, context.run_id)
    owner = desensitised_for_round(owner, audit, server_round)
    inputs = owner_inputs(owner, spec)
    outcome = train_locally(
        model,
        inputs,
        owner.dataset.labels,
        settings,
        owner.device,
        released_count=count.value,
        units=owner.training_units,
    )
    epsilon = 0.0
    attempt = ""  # the charge this update is released under, named in the audit log
    if plan.dp:
        if outcome.dp_event != planned:
            raise RuntimeError(f"training did {outcome.dp_event}, planned {planned}")
        attempt = (
            paid.release if paid is not None else releases.charging(plan.run_key, server_round)
        )
        epsilon = charge_and_audit(
            owner,
            audit,
            accounted,
            context,
            server_round,
            KIND_TRAIN,
            settings.max_grad_norm,
            relation=count.relation,
            trained=planned,
            release=attempt,
            paid=paid,
        )
        warn_group_privacy(owner, audit, server_round)
    else:
        audit.append(
            Event.NON_PRIVATE_ROUND,
            **{
                Field.SERVER_ROUND: server_round,
                Field.WARNING: "NON-PRIVATE: the plan asked for dp=false and the owner opted in "
                "(allow-no-dp); this update is not differentially private",
            },
        )
    arrays = ArrayRecord(unwrapped_state_dict(model))
    metrics = MetricRecord(
        {
            "num-examples": count.value,
            "epsilon": epsilon,
            "epsilon-budget": owner.epsilon_budget if plan.dp else 0.0,
            "noise-multiplier": settings.noise_multiplier if plan.dp else 0.0,
            "sample-rate": planned.sample_rate if plan.dp else 0.0,
            "steps": planned.steps,
            "delta": owner.delta if plan.dp else 0.0,
            "max-grad-norm": settings.max_grad_norm if plan.dp else 0.0,
        }
    )
    if attempt and paid is None and not releases.take_proof(plan.run_key, attempt):
        # A retry took this charge's proof (it reuses the charge): one update per charge.
        raise RuntimeError(
            f"round {server_round}: another attempt is released under this charge; this "
            "update is not sent"
        )
    releases.remember(plan.run_key, server_round, global_sha256, arrays, metrics, attempt)
    return release_update(msg, owner, arrays, metrics, audit, server_round, count.relation, attempt)


def _handle(kind: str, msg: Message, context: Context, overrides: dict, handler) -> Message:
    """Every failure becomes a coded refusal, even one in recording a refusal: nothing
    but a code and a fixed reason leaves (Flower would send the exception's text)."""
    try:
        return _handle_or_refuse(kind, msg, context, overrides, handler)
    except Exception as exc:
        log.exception("%s request failed while refusing", kind)
        return refusal(msg, owner_label(dict(context.node_config)), exc)


def _handle_or_refuse(
    kind: str, msg: Message, context: Context, overrides: dict, handler
) -> Message:
    """Decode, resolve the owner, run ``handler``; every failure becomes a coded refusal."""
    node_config = dict(context.node_config)
    label = owner_label(node_config)
    server_round = 0
    local = None
    try:
        # Judge the server's input before anything reads, logs or decodes it.
        check_message_records(msg.content)
        check_plan_record(msg.content[wire.CONFIG])
        server_round = int(msg.content[wire.CONFIG].get(wire.SERVER_ROUND, 0))
        local = _local_run_config(context, overrides)
        plan, classes, server_round = wire.decode_train_plan(msg.content[wire.CONFIG])
        if kind == "evaluate" and not owner_allows_evaluate(node_config, local):
            # Decided on the owner's settings alone, before its data is read: the answer
            # to a refused request cannot depend on the records.
            raise PolicyRefusal("evaluate requests need the owner's consent (allow-evaluate)")
        owner = resolve_owner(node_config, local, classes)
    except Exception as exc:
        audit = refusal_audit(node_config, local)
        if audit is not None:
            record_refusal(audit, kind, server_round, exc)
            audit.checkpoint("message-end")
        return refusal(msg, label, exc)
    audit = AuditLog(owner.audit_dir / "audit.jsonl", actor=owner.owner_id)
    try:
        return handler(msg, context, plan, classes, server_round, owner, audit)
    except FedshieldError as exc:
        record_refusal(audit, kind, server_round, exc)
        return refusal(msg, owner.owner_id, exc)
    except Exception as exc:
        # Fail closed and say nothing: an exception's text may hold values from the data.
        log.exception("%s: %s request failed", owner.owner_id, kind)
        audit.append(
            Event.ROUND_ERROR,
            **{
                Field.SERVER_ROUND: server_round,
                Field.ERROR: f"{type(exc).__name__}: {str(exc)[:MAX_LOGGED_REASON_CHARS]}",
            },
        )
        return refusal(msg, owner.owner_id, exc)
    finally:
        audit.checkpoint("message-end")


def make_client_app(run_overrides: dict | None = None) -> ClientApp:
    """A ClientApp; ``run_overrides`` stand in for run config that ``flwr run`` would pass."""
    overrides = dict(run_overrides or {})
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _handle("train", msg, context, overrides, train_round)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        def answer(msg, context, plan, classes, server_round, owner, audit):
            return evaluate_round(msg, context, plan, classes, owner, audit)

        return _handle("evaluate", msg, context, overrides, answer)

    return app


app = make_client_app()
