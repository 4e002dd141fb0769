"""The ServerApp: the operator's side of every round.

start from an untrained model or a finished run's model (``continue-from``) ->
configure (the training plan) -> send to owners -> validate and aggregate replies
(server/validating_strategy.py) -> evaluate the new global model on the evaluation data ->
record the round (metrics.json) -> next round, or stop early once every owner refuses
for budget; at the end, the outcome (completed, stopped-early, failed: no accepted
update) and, if any update was accepted, the model.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.class_metrics import round_metrics
from fedshield.common.config import RunConfig
from fedshield.common.data import TextDataset, builtin_class_names
from fedshield.common.desensitise import desensitiser_for
from fedshield.common.desensitised_data import desensitised
from fedshield.common.errors import FedshieldError
from fedshield.common.model import (
    ModelSpec,
    evaluate_with_predictions,
    head_bias,
    resolve_device,
)
from fedshield.common.owner_keys import open_owner_keys
from fedshield.common.simulation_split import heldout_test_split
from fedshield.server.checkpoint import ServerCheckpoint
from fedshield.server.class_descriptions import read_class_descriptions, set_description_head
from fedshield.server.class_priors import published_priors, set_prior_bias
from fedshield.server.identity import OwnerDirectory
from fedshield.server.outputs import RunOutputs, load_parent_model
from fedshield.server.poll import prompt_grid
from fedshield.server.round_timeout import RoundTimeouts
from fedshield.server.strategy import build_strategy
from fedshield.server.validate import UpdateNormBound
from fedshield.server.validating_strategy import UpdateObserver

log = logging.getLogger("fedshield.server")

RoundCallback = Callable[[dict], None]


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def make_server_app(
    run_overrides: dict | None = None,
    on_round: RoundCallback | None = None,
    on_update: UpdateObserver | None = None,
) -> ServerApp:
    """A ServerApp; ``run_overrides`` stand in for run config that ``flwr run`` would pass.

    ``on_update`` sees every accepted update (server/validating_strategy.py ``UpdateObserver``)."""
    overrides = dict(run_overrides or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = RunConfig.from_dict({**dict(context.run_config), **overrides})
        run_federation(grid, config, on_round, flower_run_id=context.run_id, on_update=on_update)

    return app


class _StopRun(Exception):
    """Raised from the end-of-round callback to leave Flower's round loop early."""


def run_outcome(history: list[dict], stopped_after: int | None) -> dict:
    """What the run achieved, in the words an operator and a script can act on."""
    rounds = [entry for entry in history if entry["round"] > 0]
    with_updates = sum(1 for entry in rounds if entry["participants"])
    refusals = Counter(
        r
        for entry in rounds
        for r in (*entry["refusals"], *entry["rejected"], *entry.get("impersonated", []))
    )
    reasons = [f"{count} x {reason}" for reason, count in refusals.most_common()]
    silent = sum(1 for entry in rounds if not (entry["participants"] or entry["refusals"]))
    if silent:
        reasons.append(
            f"{silent} round(s) without any reply (fewer owners than min-train-nodes "
            "connected, or replies after round-timeout-s)"
        )
    if with_updates == 0:
        status = "failed"
    elif stopped_after is not None:
        status = "stopped-early"
        reasons.insert(0, f"stopped after round {stopped_after}: every owner refused for budget")
    else:
        status = "completed"
    return {"outcome": status, "rounds_with_updates": with_updates, "reasons": reasons}


def operator_evaluation_data(config: RunConfig, out_dir: Path) -> TextDataset:
    """The operator's evaluation data through its desensitisation policy (the run
    config's; in simulation the simulated owners' too, with their keys), so that the
    model is judged on text like the text it was trained on."""
    test = heldout_test_split(config)
    key_dir = Path(config.out_dir or out_dir).expanduser() / "keys"
    keys = open_owner_keys(key_dir) if config.desensitise else None
    desensitiser = desensitiser_for(
        config.desensitise, config.desensitise_policy, keys.pseudonym if keys else None
    )
    if desensitiser is None:
        return test
    return desensitised(test, desensitiser, keys, Path(out_dir) / "cache")[0]


def prepare_operator_evaluation_data(config: RunConfig) -> None:
    """Desensitise the evaluation data into the run's sealed cache ahead of the run."""
    operator_evaluation_data(config, Path(config.out_dir))


def run_federation(
    grid: Grid,
    config: RunConfig,
    on_round: RoundCallback | None = None,
    flower_run_id: int | None = None,
    on_update: UpdateObserver | None = None,
) -> dict:
    outputs = RunOutputs(
        Path(config.out_dir) if config.out_dir else default_out_dir(), resume=config.resume
    )
    audit_dir = Path(config.audit_dir) if config.audit_dir else outputs.out_dir / "audit"
    audit = AuditLog(audit_dir / "server" / "audit.jsonl", actor="server", checkpoint_every=100)
    spec = ModelSpec.from_config(config)
    test = operator_evaluation_data(config, outputs.out_dir)
    classes = test.classes
    device = resolve_device(config.device)
    test_inputs = spec.encode(test.texts, device)
    model = spec.build(len(classes))
    priors = published_priors(config.class_priors, test.labels, classes)
    set_prior_bias(model, priors)
    descriptions, digest = read_class_descriptions(config.class_descriptions, classes)
    if descriptions:
        set_description_head(model, spec, descriptions, config.class_description_scale, device)
    initial_arrays = ArrayRecord(model.state_dict())
    lineage: list[dict] = []
    if config.continue_from:
        initial_arrays, lineage = load_parent_model(Path(config.continue_from), spec, classes)
        model.load_state_dict(initial_arrays.to_torch_state_dict())
    checkpoint = ServerCheckpoint.load(outputs.out_dir) if config.resume else None
    run_key = checkpoint.run_key if checkpoint else (config.run_key or uuid.uuid4().hex)
    norm_bound = UpdateNormBound.from_plan(config, len(classes))
    timeouts = RoundTimeouts.for_plan(config.round_timeout_s, config.model)
    grid = prompt_grid(grid, timeouts)
    owners = OwnerDirectory.from_environment()
    audit.append(
        Event.RUN_START,
        **{
            Field.RUN_KEY: run_key,
            Field.FLOWER_RUN_ID: flower_run_id,
            Field.CONFIG: config.as_dict(),
            Field.CLASSES: list(classes),
            Field.MODEL: spec.describe(),
            # The head's starting bias and where it came from (a continued run keeps its
            # parent model's), in full precision so an auditor rebuilds it.
            "class-priors": {
                "from": "the parent model" if config.continue_from else config.class_priors,
                "shares": None if config.continue_from else [float(p) for p in priors],
                "bias": [float(b) for b in head_bias(model).detach()],
                "bias-trained-by-owners": config.train_bias,
            },
            # The zero-shot head's public source, so an auditor rebuilds the weights.
            "class-descriptions": (
                {
                    "from": config.class_descriptions,
                    "sha256": digest,
                    "scale": config.class_description_scale,
                    "descriptions": descriptions,
                }
                if descriptions
                else None
            ),
            "test-records": len(test),
            Field.EVAL_DATA: test.source,
            Field.TRANSPORT: config.transport or "unspecified (flwr run)",
            Field.INITIAL_MODEL: lineage[0] if lineage else "untrained",
            Field.UPDATE_NORM_BOUND: norm_bound.describe(),
            "round-timeout": timeouts.describe(),
            "owners-named-by": "the node key the SuperLink authenticated (SHA-256 "
            "fingerprint; node-<id> without one); owner-id is a self-declared label",
            "registered-owners": [
                {k: o.get(k) for k in ("name", "fingerprint", "node-id", "max-weight")}
                for o in owners.registry
            ],
        },
    )
    strategy = build_strategy(
        config.aggregation,
        audit=audit,
        max_update_norm=norm_bound,
        trim_fraction=config.trim_fraction,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=config.min_train_nodes if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.min_train_nodes,
        server_learning_rate=config.server_learning_rate,
        server_momentum=config.server_momentum,
        observer=on_update,
        owners=owners,
    )
    epsilon_so_far: dict[str, float] = {}
    history: list[dict] = []
    if checkpoint is not None:
        strategy.resume(checkpoint.server_round, checkpoint.momentum)
        initial_arrays = checkpoint.arrays
        epsilon_so_far.update(checkpoint.epsilon_so_far)
        history.extend(checkpoint.history)
        outputs.metrics["rounds"] = list(checkpoint.history)
        checkpoint.restore_random_state()
        audit.append(
            Event.RUN_RESUMED,
            **{
                Field.FROM_ROUND: checkpoint.server_round,
                Field.MODEL_SHA256: wire.arrays_digest(initial_arrays)[0],
            },
        )
    config = config.replace(run_key=run_key)
    last_arrays = [initial_arrays]  # the newest global model, whatever ends the loop

    def evaluate_global(flower_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round = flower_round + strategy.round_offset
        model.load_state_dict(arrays.to_torch_state_dict())
        if history and history[-1]["round"] >= server_round:
            return MetricRecord({"accuracy": history[-1]["accuracy"], "loss": history[-1]["loss"]})
        loss, accuracy, predicted = evaluate_with_predictions(
            model, test_inputs, test.labels, device
        )
        per_class = round_metrics(test.labels, predicted, classes)
        record = strategy.rounds.get(server_round)
        if record is not None:
            epsilon_so_far.update(record.epsilon)
        entry = {
            "round": server_round,
            "time": time.time(),
            "accuracy": accuracy,
            "loss": loss,
            **per_class,  # macro-f1, recall-per-class, never-predicted (the operator's data)
            "epsilon": dict(sorted(epsilon_so_far.items())),
            "participants": record.participants if record else [],
            "refusals": record.refusals if record else [],
            "rejected": record.rejected if record else [],
            "impersonated": record.impersonated if record else [],
            "late": record.late if record else [],
            "round-timeout-s": timeouts.longest_wait_since_last_asked(),
            "labels-self-declared": dict(record.labels) if record else {},
        }
        history.append(entry)
        outputs.record_round(entry)
        audit.append(
            Event.ROUND_EVALUATED,
            **{
                Field.SERVER_ROUND: server_round,
                "accuracy": accuracy,
                "loss": loss,
                **per_class,
                "epsilon-reported": entry["epsilon"],
                "dropped-node-ids": record.dropped if record else [],
            },
        )
        ServerCheckpoint(
            server_round=server_round,
            arrays=arrays,
            momentum=strategy.momentum,
            epsilon_so_far=dict(epsilon_so_far),
            history=list(history),
            run_key=run_key,
            config=config.as_dict(),
            random_state=random.getstate(),
        ).save(outputs.out_dir)
        audit.checkpoint(f"round-{server_round}-end")
        last_arrays[0] = arrays
        if on_round is not None:
            on_round(entry)
        if strategy.every_owner_refused_for_budget(server_round):
            raise _StopRun(server_round)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    plan = wire.encode_train_plan(config, classes)
    remaining = config.num_rounds - strategy.round_offset
    if remaining < 1:
        raise FedshieldError(
            f"{outputs.out_dir}: all {config.num_rounds} rounds are done; nothing to resume"
        )
    stopped_after = None
    try:
        strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=remaining,
            timeout=config.round_timeout_s,  # a fixed wait; 0: the grid's learnt one
            train_config=plan,
            evaluate_config=ConfigRecord(dict(plan)),
            evaluate_fn=evaluate_global,
        )
    except _StopRun as stop:
        stopped_after = int(str(stop))
        log.warning("every owner refused for budget in round %d: stopping", stopped_after)
    outcome = run_outcome(history, stopped_after)
    final = {
        "accuracy": history[-1]["accuracy"],
        "loss": history[-1]["loss"],
        "initial_accuracy": history[0]["accuracy"],
        "macro_f1": history[-1].get("macro-f1"),
        "worst_class_recall": min(history[-1].get("recall-per-class", {}).values(), default=None),
        "never_predicted": history[-1].get("never-predicted", []),
        "epsilon_max": max(epsilon_so_far.values(), default=0.0),
        "dp": config.dp,
        "rounds_completed": len(history) - 1,
        "rounds_planned": config.num_rounds,
        **outcome,
        "model_saved": outcome["rounds_with_updates"] > 0,
    }
    model_sha256 = None
    if final["model_saved"]:  # a run that changed nothing saves nothing
        names = builtin_class_names(config.eval_data or config.data)
        outputs.save_model(last_arrays[0], classes, spec, lineage, names)
        model_sha256 = json.loads((outputs.out_dir / "model.json").read_text())["model-sha256"]
    outputs.record_final(final, config.as_dict())
    audit.append(Event.RUN_END, **{Field.FINAL: final, Field.MODEL_SHA256: model_sha256})
    audit.checkpoint("run-end")
    return {"final": final, "rounds": history, "out_dir": str(outputs.out_dir)}


app = make_server_app()
