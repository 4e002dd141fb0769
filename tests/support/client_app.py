"""The real ClientApp in process, with real Flower messages: a plan, a train or evaluate
message carrying it, an owner's context (node config), and one call of the app.

Tests that use these need the ``flower_task_identity`` fixture (tests/conftest.py)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict

from fedshield.client import app as client_module
from fedshield.common import wire
from fedshield.common.config import RunConfig
from fedshield.common.model import build_model

CLASSES = ("0", "1")

PLAN = RunConfig(
    num_rounds=2, target_epsilon=2.0, batch_size=64, feat_out_dim=256, feat_n_buckets=2**14
)


def train_message(plan: RunConfig = PLAN, server_round: int = 1) -> Message:
    config = wire.encode_train_plan(plan, CLASSES)
    config[wire.SERVER_ROUND] = server_round
    model = build_model(plan.feat_out_dim, len(CLASSES))
    content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config})
    return Message(content=content, dst_node_id=1, message_type="train")


def evaluate_message(plan=PLAN, weights: torch.nn.Module | None = None) -> Message:
    config = wire.encode_train_plan(plan, CLASSES)
    config[wire.SERVER_ROUND] = 1
    model = weights or build_model(plan.feat_out_dim, len(CLASSES))
    content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config})
    return Message(content=content, dst_node_id=1, message_type="evaluate")


def owner_context(data_path, ledger_dir, budget: float = 5.0) -> Context:
    node_config = {
        "data-path": str(data_path),
        "epsilon-budget": budget,
        "delta": 1e-5,
        "ledger-dir": str(ledger_dir),
        "audit-dir": str(ledger_dir.parent / "audit"),
        "owner-id": "hospital-a",
    }
    return Context(run_id=42, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def client_app():
    """A fresh ClientApp, as a SuperNode builds it for each message."""
    return client_module.make_client_app()


def run_train(context: Context, message: Message | None = None) -> Message:
    return client_module.make_client_app()(message or train_message(), context)
