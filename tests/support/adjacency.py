"""The reply and refusal paths of the real ClientApp, for the adjacency tests: an owner
on D and on a neighbour D' must show the server identical fields outside the DP
releases (tests/unit/test_adjacency.py, tests/unit/test_privacy_unit_owner.py)."""

from __future__ import annotations

import pandas as pd
from flwr.app import ArrayRecord, Message, RecordDict

from fedshield.client.ledger import LEDGER_FILE
from fedshield.common import wire
from fedshield.common.model import build_model
from tests.support.client_app import (
    PLAN,
    client_app,
    evaluate_message,
    owner_context,
    run_train,
    train_message,
)

NOT_COMPARED = {f"{wire.OWNER}.{wire.AUDIT_HEAD}"}
THREE_CLASSES = ("0", "1", "rare")


def observable(kind: str, reply: Message) -> dict:
    """Everything the server sees of a reply, less the DP releases and the commitment."""
    if reply.has_error():
        return {"error": (reply.error.code, reply.error.reason)}
    hidden = wire.DP_RELEASE_FIELDS[kind] | NOT_COMPARED
    seen = {}
    for name, record in reply.content.items():
        if f"{name}.*" in hidden:
            continue
        for key, value in record.items():
            if f"{name}.{key}" not in hidden:
                seen[f"{name}.{key}"] = value
    return seen


def with_classes(plan, classes: tuple[str, ...]) -> Message:
    """A train message whose class list (and model) is ``classes``."""
    config = wire.encode_train_plan(plan, classes)
    config[wire.SERVER_ROUND] = 1
    model = build_model(plan.feat_out_dim, len(classes))
    content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config})
    return Message(content=content, dst_node_id=1, message_type="train")


def paths(data: pd.DataFrame, root, **owner_policy) -> dict[str, tuple[str, Message]]:
    """Each reply and refusal path, on its own fresh ledger, for one data set; every
    owner has ``owner_policy`` (node config keys) besides each path's own."""
    root.mkdir()
    path = root / "owner.csv"
    data.to_csv(path, index=False)

    def context(name: str, **policy):
        ctx = owner_context(path, root / name / "ledgers")
        ctx.node_config.update({**owner_policy, **policy})
        return ctx

    three = PLAN.replace(batch_size=0)
    replies = {
        "train": ("train", run_train(context("train"), train_message(PLAN))),
        "train, full batch": ("train", run_train(context("full"), train_message(three))),
        "train, plan classes without the rare label": (
            "train",
            run_train(context("two"), with_classes(three, ("0", "1"))),
        ),
        "train, plan classes with the rare label": (
            "train",
            run_train(context("three"), with_classes(three, THREE_CLASSES)),
        ),
        "evaluate without consent": ("evaluate", client_app()(evaluate_message(), context("e0"))),
        "evaluate with consent": (
            "evaluate",
            client_app()(evaluate_message(), context("e1", **{"allow-evaluate": True})),
        ),
        "refused: dp off": (
            "train",
            run_train(context("nodp"), train_message(PLAN.replace(dp=False))),
        ),
        "refused: budget": ("train", run_train(context("poor", **{"epsilon-budget": 0.01}))),
        "refused: batch over the released count": (
            "train",
            run_train(context("batch"), train_message(PLAN.replace(batch_size=5000))),
        ),
        "refused: class list mismatch": (
            "train",
            run_train(context("declared", classes="0,1,rare"), train_message(PLAN)),
        ),
        "refused: delta over 1/count": ("train", run_train(context("delta", delta=0.01))),
        "refused: run cap": (
            "train",
            run_train(
                context("cap", **{"run-epsilon-cap": 0.05}),
                train_message(PLAN.replace(target_epsilon=0.04, num_rounds=1)),
            ),
        ),
    }
    # Budget exhausted: a third round after the two the plan's target was calibrated for.
    spent = context("spent", **{"epsilon-budget": 2.05})
    run_train(spent, train_message(PLAN))
    run_train(spent, train_message(PLAN, 2))
    replies["refused: budget exhausted"] = ("train", run_train(spent, train_message(PLAN, 3)))
    corrupted = context("corrupt")
    run_train(corrupted, train_message(PLAN))
    ledger_file = root / "corrupt" / "ledgers" / LEDGER_FILE
    ledger_file.write_text(ledger_file.read_text().replace('"steps": 1', '"steps": 2', 1))
    replies["refused: ledger corrupted"] = ("train", run_train(corrupted, train_message(PLAN, 2)))
    return replies
