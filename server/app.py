"""The ServerApp: the operator's side of every round.

configure (the training plan) -> send to owners -> validate and aggregate replies
(server/strategy.py) -> evaluate the new global model on the held-out split ->
record the round (metrics.json) -> next round; at the end, save the model.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedshield.common import wire
from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import RunConfig
from fedshield.common.errors import FedshieldError
from fedshield.common.model import ModelSpec, evaluate_model, resolve_device
from fedshield.common.simulation_split import heldout_test_split
from fedshield.server.checkpoint import ServerCheckpoint
from fedshield.server.outputs import RunOutputs
from fedshield.server.strategy import build_strategy

log = logging.getLogger("fedshield.server")

RoundCallback = Callable[[dict], None]


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def make_server_app(
    run_overrides: dict | None = None, on_round: RoundCallback | None = None
) -> ServerApp:
    """A ServerApp; ``run_overrides`` stand in for run config that ``flwr run`` would pass."""
    overrides = dict(run_overrides or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = RunConfig.from_dict({**dict(context.run_config), **overrides})
        run_federation(grid, config, on_round)

    return app


def run_federation(grid: Grid, config: RunConfig, on_round: RoundCallback | None = None) -> dict:
    outputs = RunOutputs(Path(config.out_dir) if config.out_dir else default_out_dir())
    audit_dir = Path(config.audit_dir) if config.audit_dir else outputs.out_dir / "audit"
    audit = AuditLog(audit_dir / "server" / "audit.jsonl", actor="server", checkpoint_every=100)
    spec = ModelSpec.from_config(config)
    test = heldout_test_split(config)
    classes = test.classes
    device = resolve_device(config.device)
    test_inputs = spec.encode(test.texts, device)
    model = spec.build(len(classes))
    audit.append(
        Event.RUN_START,
        **{
            "config": config.as_dict(),
            "classes": list(classes),
            "model": spec.describe(),
            "test-records": len(test),
            "transport": config.transport or "unspecified (flwr run)",
        },
    )
    strategy = build_strategy(
        config.aggregation,
        audit=audit,
        max_update_norm=config.max_update_norm,
        trim_fraction=config.trim_fraction,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=config.min_train_nodes if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.min_train_nodes,
        server_learning_rate=config.server_learning_rate,
        server_momentum=config.server_momentum,
    )
    epsilon_so_far: dict[str, float] = {}
    history: list[dict] = []
    initial_arrays = ArrayRecord(model.state_dict())
    run_key = config.run_key or uuid.uuid4().hex
    if config.resume:
        checkpoint = ServerCheckpoint.load(outputs.out_dir)
        strategy.resume(checkpoint.server_round, checkpoint.momentum)
        initial_arrays = checkpoint.arrays
        epsilon_so_far.update(checkpoint.epsilon_so_far)
        history.extend(checkpoint.history)
        outputs.metrics["rounds"] = list(checkpoint.history)
        run_key = checkpoint.run_key
        checkpoint.restore_random_state()
        audit.append(
            Event.RUN_RESUMED,
            **{
                "from-round": checkpoint.server_round,
                "model-sha256": wire.arrays_digest(initial_arrays)[0],
            },
        )
    config = config.replace(run_key=run_key)

    def evaluate_global(flower_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round = flower_round + strategy.round_offset
        model.load_state_dict(arrays.to_torch_state_dict())
        if history and history[-1]["round"] >= server_round:
            return MetricRecord({"accuracy": history[-1]["accuracy"], "loss": history[-1]["loss"]})
        loss, accuracy = evaluate_model(model, test_inputs, test.labels, device)
        record = strategy.rounds.get(server_round)
        if record is not None:
            epsilon_so_far.update(record.epsilon)
        entry = {
            "round": server_round,
            "time": time.time(),
            "accuracy": accuracy,
            "loss": loss,
            "epsilon": dict(sorted(epsilon_so_far.items())),
            "participants": record.participants if record else [],
            "refusals": record.refusals if record else [],
            "rejected": record.rejected if record else [],
        }
        history.append(entry)
        outputs.record_round(entry)
        audit.append(
            Event.ROUND_EVALUATED,
            **{
                "server-round": server_round,
                "accuracy": accuracy,
                "loss": loss,
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
        if on_round is not None:
            on_round(entry)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    plan = wire.encode_train_plan(config, classes)
    remaining = config.num_rounds - strategy.round_offset
    if remaining < 1:
        raise FedshieldError(
            f"{outputs.out_dir}: all {config.num_rounds} rounds are done; nothing to resume"
        )
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=remaining,
        timeout=config.round_timeout_s,
        train_config=plan,
        evaluate_config=ConfigRecord(dict(plan)),
        evaluate_fn=evaluate_global,
    )
    final_arrays = result.arrays if len(result.arrays) else initial_arrays
    outputs.save_model(final_arrays, classes, spec)
    final = {
        "accuracy": history[-1]["accuracy"],
        "loss": history[-1]["loss"],
        "epsilon_max": max(epsilon_so_far.values(), default=0.0),
        "dp": config.dp,
        "rounds_completed": len(history) - 1,
    }
    outputs.record_final(final, config.as_dict())
    audit.append(
        Event.RUN_END,
        **{
            "final": final,
            "model-sha256": json.loads((outputs.out_dir / "model.json").read_text())[
                "model-sha256"
            ],
        },
    )
    audit.checkpoint("run-end")
    return {"final": final, "rounds": history, "out_dir": str(outputs.out_dir)}


app = make_server_app()
