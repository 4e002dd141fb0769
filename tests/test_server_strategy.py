"""Server-side validation and robust aggregation, with real Flower messages."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedshield.audit.verify import verify_log
from fedshield.common import wire
from fedshield.common.audit_log import AuditLog
from fedshield.server.strategy import build_strategy
from fedshield.server.validate import UpdateRejected, validate_update

DIM = 8


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def arrays(weight: np.ndarray, bias: np.ndarray | None = None) -> ArrayRecord:
    state = {
        "weight": torch.from_numpy(weight.astype(np.float32)),
        "bias": torch.from_numpy((bias if bias is not None else np.zeros(2)).astype(np.float32)),
    }
    return ArrayRecord(state)


GLOBAL = arrays(np.zeros((2, DIM)))


def reply(
    node_id: int, update: ArrayRecord, owner: str | None = None, num_examples: int = 100
) -> Message:
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type="train")
    request.metadata.__dict__["_src_node_id"] = 1
    metrics = MetricRecord(
        {k: 0.0 for k in wire.REPLY_METRIC_KEYS} | {"num-examples": num_examples, "steps": 1}
    )
    content = RecordDict(
        {
            wire.ARRAYS: update,
            wire.METRICS: metrics,
            wire.OWNER: ConfigRecord(
                {wire.OWNER_ID: owner or f"owner-{node_id}", wire.AUDIT_HEAD: "0" * 64}
            ),
        }
    )
    message = Message(content=content, reply_to=request)
    message.metadata.__dict__["_src_node_id"] = node_id
    return message


def strategy(aggregation: str, tmp_path, max_update_norm: float = 0.0):
    s = build_strategy(
        aggregation,
        audit=AuditLog(tmp_path / f"{aggregation}.jsonl", "server"),
        max_update_norm=max_update_norm,
        server_learning_rate=1.0,
        server_momentum=0.0,
        trim_fraction=0.2,
        min_train_nodes=1,
        min_available_nodes=1,
    )
    s._global_arrays, s._sampled = GLOBAL, []
    return s


def honest(node_id: int, rng) -> Message:
    return reply(node_id, arrays(1.0 + 0.05 * rng.normal(size=(2, DIM))))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (arrays(np.full((2, DIM), np.nan)), "NaN or infinite"),
        (arrays(np.zeros((3, DIM))), "float32[3, 8], expected float32[2, 8]"),
        (ArrayRecord({"weight": torch.zeros(2, DIM)}), "keys"),
        (
            ArrayRecord(
                {"weight": torch.zeros(2, DIM, dtype=torch.float64), "bias": torch.zeros(2)}
            ),
            "float64",
        ),
    ],
)
def test_malformed_updates_are_rejected_with_a_reason(bad, reason):
    with pytest.raises(UpdateRejected, match=re.escape(reason)):
        validate_update(reply(5, bad), GLOBAL)


def test_the_norm_bound_rejects_a_huge_update():
    with pytest.raises(UpdateRejected, match="exceeds the bound 10"):
        validate_update(reply(5, arrays(np.full((2, DIM), 100.0))), GLOBAL, max_update_norm=10.0)
    assert validate_update(reply(5, arrays(np.ones((2, DIM)))), GLOBAL, 10.0) == pytest.approx(4.0)


def test_a_rejected_update_leaves_the_global_model_to_the_others_and_is_audited(tmp_path):
    rng = np.random.default_rng(0)
    s = strategy("fedavg", tmp_path)
    poisoned = reply(9, arrays(np.full((2, DIM), np.inf)), owner="mallory")
    result, _ = s.aggregate_train(1, [honest(1, rng), honest(2, rng), poisoned])
    weight = result["weight"].numpy()
    assert np.all(np.isfinite(weight)) and np.allclose(weight, 1.0, atol=0.1)
    assert s.rounds[1].participants == ["owner-1", "owner-2"]
    assert s.rounds[1].rejected and s.rounds[1].rejected[0].startswith("mallory:")
    s.audit.checkpoint("test")
    types = [e["type"] for e in verify_log(s.audit.path).entries]
    assert types.count("update-received") == 2 and types.count("update-rejected") == 1


def test_only_invalid_updates_leave_the_model_unchanged(tmp_path):
    s = strategy("fedavg", tmp_path)
    assert s.aggregate_train(1, [reply(3, arrays(np.full((2, DIM), np.nan)))]) == (None, None)


def test_median_resists_one_poisoning_client_where_fedavg_does_not(tmp_path):
    # A finite, well-formed but scaled update passes validation (no norm bound set):
    # the mean follows the attacker, the median stays with the honest majority.
    def round_with_poison(aggregation: str) -> np.ndarray:
        # Fresh replies each time: Flower's aggregation consumes the records it reads.
        rng = np.random.default_rng(1)
        replies = [honest(i, rng) for i in range(1, 6)]
        poison = reply(66, arrays(np.full((2, DIM), -500.0)), owner="mallory")
        return (
            strategy(aggregation, tmp_path)
            .aggregate_train(1, [*replies, poison])[0]["weight"]
            .numpy()
        )

    mean, median, trimmed = (round_with_poison(a) for a in ("fedavg", "median", "trimmed-mean"))
    assert np.all(mean < -50)
    assert np.allclose(median, 1.0, atol=0.15)
    assert np.allclose(trimmed, 1.0, atol=0.15)
