"""Server-side validation and robust aggregation, with real Flower messages: owners named
by their authenticated node key, replies checked against the tasks sent, weights and
update norms bounded."""

from __future__ import annotations

import base64
import hashlib
import re

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedshield.audit.verify import verify_log
from fedshield.common import wire
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import RunConfig
from fedshield.server.identity import DEFAULT_MAX_WEIGHT, OwnerDirectory
from fedshield.server.strategy import build_strategy
from fedshield.server.validate import UpdateNormBound, UpdateRejected, validate_update
from tests.support.strategy import DIM, GLOBAL, StubGrid, arrays

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def reply(
    node_id: int,
    update: ArrayRecord,
    owner: str | None = None,
    num_examples: int | float = 100,
    task: Message | None = None,
    sender: int | None = None,
) -> Message:
    """``node_id``'s reply to ``task`` (a task of its own if none), sent by ``sender``."""
    if task is None:
        task = Message(content=RecordDict(), dst_node_id=node_id, message_type="train")
        task.metadata.__dict__["_message_id"] = f"task-{node_id}"
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
    message = Message(content=content, reply_to=task)
    message.metadata.__dict__["_src_node_id"] = node_id if sender is None else sender
    return message


def strategy(
    aggregation: str,
    tmp_path,
    max_update_norm: float | UpdateNormBound = 0.0,
    nodes=range(1, 10),
    keys: dict[int, bytes] | None = None,
    owners: OwnerDirectory | None = None,
):
    """A strategy that sent round 1's train tasks to ``nodes`` (deployed: with their
    authenticated ``keys``, and the operator's ``owners``); ``s.tasks[node]``."""
    s = build_strategy(
        aggregation,
        audit=AuditLog(tmp_path / f"{aggregation}.jsonl", "server"),
        max_update_norm=max_update_norm,
        server_learning_rate=1.0,
        server_momentum=0.0,
        trim_fraction=0.2,
        min_train_nodes=1,
        min_available_nodes=1,
        owners=owners,
    )
    grid = StubGrid(nodes, keys)
    s.tasks = grid.push(s.configure_train(1, GLOBAL, ConfigRecord(), grid))
    return s


def answer(s, node_id: int, update: ArrayRecord, **kwargs) -> Message:
    return reply(node_id, update, task=s.tasks[node_id], **kwargs)


def honest(s, node_id: int, rng) -> Message:
    return answer(s, node_id, arrays(1.0 + 0.05 * rng.normal(size=(2, DIM))))


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
    poisoned = answer(s, 9, arrays(np.full((2, DIM), np.inf)), owner="mallory")
    result, _ = s.aggregate_train(1, [honest(s, 1, rng), honest(s, 2, rng), poisoned])
    weight = result["weight"].numpy()
    assert np.all(np.isfinite(weight)) and np.allclose(weight, 1.0, atol=0.1)
    # Simulation has no node keys: owners are their node ids, never their own labels.
    assert s.rounds[1].participants == ["node-1", "node-2"]
    assert s.rounds[1].labels == {"node-1": "owner-1", "node-2": "owner-2"}
    assert s.rounds[1].rejected and s.rounds[1].rejected[0].startswith("node-9:")
    s.audit.checkpoint("test")
    types = [e["type"] for e in verify_log(s.audit.path).entries]
    assert types.count("update-received") == 2 and types.count("update-rejected") == 1


def test_only_invalid_updates_leave_the_model_unchanged(tmp_path):
    s = strategy("fedavg", tmp_path)
    assert s.aggregate_train(1, [answer(s, 3, arrays(np.full((2, DIM), np.nan)))]) == (None, None)


def test_median_resists_one_poisoning_client_where_fedavg_does_not(tmp_path):
    # A finite, well-formed but scaled update passes validation (no norm bound set):
    # the mean follows the attacker, the median stays with the honest majority.
    def round_with_poison(aggregation: str) -> np.ndarray:
        # Fresh replies each time: Flower's aggregation consumes the records it reads.
        rng = np.random.default_rng(1)
        s = strategy(aggregation, tmp_path, nodes=[1, 2, 3, 4, 5, 66])
        replies = [honest(s, i, rng) for i in range(1, 6)]
        poison = answer(s, 66, arrays(np.full((2, DIM), -500.0)), owner="mallory")
        return s.aggregate_train(1, [*replies, poison])[0]["weight"].numpy()

    mean, median, trimmed = (round_with_poison(a) for a in ("fedavg", "median", "trimmed-mean"))
    assert np.all(mean < -50)
    assert np.allclose(median, 1.0, atol=0.15)
    assert np.allclose(trimmed, 1.0, atol=0.15)


def node_key() -> tuple[bytes, str]:
    """A SuperNode key as Flower holds it (PEM) and its fingerprint as the registry shows it."""
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    openssh = public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = base64.b64decode(openssh.split()[1])
    return pem, "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def keyed_strategy(tmp_path, registry=(), norm=0.0):
    """Round 1 sent to nodes 1, 2, 3, each with its authenticated key (deployment)."""
    keys = {n: node_key() for n in (1, 2, 3)}
    s = strategy(
        "fedavg",
        tmp_path,
        max_update_norm=norm,
        nodes=list(keys),
        keys={n: pem for n, (pem, _) in keys.items()},
        owners=OwnerDirectory(registry),
    )
    return s, {n: fp for n, (_, fp) in keys.items()}


def refusal(s, node_id: int, label: str) -> Message:
    error = Error(code=wire.ERROR_BUDGET_EXCEEDED, reason=f"{label}: over budget")
    message = Message(error, reply_to=s.tasks[node_id])
    message.metadata.__dict__["_src_node_id"] = node_id
    return message


def entries(s, kind: str) -> list[dict]:
    s.audit.checkpoint("test")
    return [e["data"] for e in verify_log(s.audit.path).entries if e["type"] == kind]


def test_an_owner_posing_as_another_with_a_huge_count_is_named_by_its_key_and_bounded(
    tmp_path,
):
    """The red team's round: owner-2 refuses; node 3 answers with owner-id owner-2 and
    num-examples 1e9. Before: listed as owner-2 and the global model was exactly its update."""
    s, fingerprint = keyed_strategy(tmp_path)
    honest_update = answer(s, 1, arrays(np.ones((2, DIM))), num_examples=600)
    forged = answer(s, 3, arrays(np.full((2, DIM), -50.0)), owner="owner-2", num_examples=10**9)
    result, _ = s.aggregate_train(1, [honest_update, refusal(s, 2, "owner-2"), forged])
    record = s.rounds[1]
    assert record.participants == [fingerprint[1], fingerprint[3]]
    assert "owner-2" not in record.participants and "owner-2" not in record.epsilon
    assert record.labels[fingerprint[3]] == "owner-2"  # shown only as its own claim
    assert record.refusals == [
        f"{fingerprint[2]}: {wire.REFUSAL_REASONS[wire.ERROR_BUDGET_EXCEEDED]}"
    ]
    # Weighted by at most DEFAULT_MAX_WEIGHT, not by 1e9: not "exactly her update".
    expected = (600 * 1.0 + DEFAULT_MAX_WEIGHT * -50.0) / (600 + DEFAULT_MAX_WEIGHT)
    assert np.allclose(result["weight"].numpy(), expected)
    received = {e["node-id"]: e for e in entries(s, "update-received")}
    assert received[3]["owner"] == received[3]["node-key-fingerprint"] == fingerprint[3]
    assert received[3]["owner-label-self-declared"] == "owner-2"
    assert received[3]["aggregation-weight"] == DEFAULT_MAX_WEIGHT
    assert received[3]["metrics"]["num-examples"] == 10**9  # what she sent, kept as evidence
    (refused,) = entries(s, "client-refused")
    assert refused["owner"] == fingerprint[2] and refused["node-id"] == 2


def test_the_operators_registered_size_caps_an_owners_weight(tmp_path):
    s, fingerprint = keyed_strategy(tmp_path)
    registry = [{"name": "owner-3", "fingerprint": fingerprint[3], "node-id": 3, "max-weight": 600}]
    s.owners.registry = registry
    replies = [
        answer(s, 1, arrays(np.ones((2, DIM))), num_examples=600),
        answer(s, 3, arrays(np.full((2, DIM), -50.0)), num_examples=10**9),
    ]
    result, _ = s.aggregate_train(1, replies)
    assert np.allclose(result["weight"].numpy(), (600 - 50 * 600) / 1200)
    assert {e["node-id"]: e["registered-as"] for e in entries(s, "update-received")} == {
        1: None,
        3: "owner-3",
    }


def test_replies_to_another_nodes_task_or_to_no_task_are_refused_and_audited(tmp_path):
    s, fingerprint = keyed_strategy(tmp_path)
    stranger_task = Message(content=RecordDict(), dst_node_id=3, message_type="train")
    stranger_task.metadata.__dict__["_message_id"] = "not-sent-by-this-server"
    replies = [
        answer(s, 1, arrays(np.ones((2, DIM))), sender=3),  # node 3 answers node 1's task
        reply(3, arrays(np.ones((2, DIM))), task=stranger_task),  # a task never sent
        answer(s, 2, arrays(np.ones((2, DIM)))),
        answer(s, 2, arrays(np.full((2, DIM), 9.0))),  # a second answer to one task
    ]
    result, _ = s.aggregate_train(1, replies)
    record = s.rounds[1]
    assert record.participants == [fingerprint[2]]
    assert np.allclose(result["weight"].numpy(), 1.0)
    assert len(record.impersonated) == 3
    assert f"for {fingerprint[1]}'s task" in record.impersonated[0]
    assert record.dropped == [1, 3]
    # named by key, as the operator's console and metrics.json show them
    assert record.late == [fingerprint[1], fingerprint[3]]
    assert entries(s, "clients-dropped")[0]["owners"] == record.late
    refused = entries(s, "reply-impersonated")
    assert [(e["sender-node-id"], e["task-node-id"]) for e in refused] == [
        (3, 1),
        (3, None),
        (2, 2),
    ]
    assert refused[0]["task-owner"] == fingerprint[1]
    assert "second reply" in refused[2]["reason"]


@pytest.mark.parametrize("count", [-1, 1.5, float("nan"), float("inf")])
def test_a_record_count_that_is_not_a_whole_number_is_rejected(tmp_path, count):
    s = strategy("fedavg", tmp_path, nodes=[1, 2])
    good = answer(s, 1, arrays(np.ones((2, DIM))))
    bad = answer(s, 2, arrays(np.full((2, DIM), 5.0)), num_examples=count)
    result, _ = s.aggregate_train(1, [good, bad])
    assert np.allclose(result["weight"].numpy(), 1.0)
    assert s.rounds[1].rejected and "num-examples" in s.rounds[1].rejected[0]


def test_a_dp_count_of_zero_weighs_one_record(tmp_path):
    s = strategy("fedavg", tmp_path, nodes=[1, 2])
    replies = [
        answer(s, 1, arrays(np.ones((2, DIM))), num_examples=0),
        answer(s, 2, arrays(np.full((2, DIM), 4.0)), num_examples=2),
    ]
    result, _ = s.aggregate_train(1, replies)
    assert np.allclose(result["weight"].numpy(), (1 + 2 * 4.0) / 3)


def test_the_default_norm_bound_passes_the_demos_honest_updates_and_stops_a_huge_one(tmp_path):
    plan = RunConfig()  # the demo's plan: fedshield simulate defaults
    bound = UpdateNormBound.from_plan(plan, num_classes=2)
    assert bound.for_reply(669, 0.0, 8194) == pytest.approx(250.0)  # 34 x the demo's largest
    assert UpdateNormBound.from_plan(RunConfig(max_update_norm=3.0), 2).for_reply(9, 8.8, 5) == 3.0
    # A small owner whose DP count came out near 0 divides its noisy sum by 1: its honest
    # update is mostly noise, sigma C sqrt(d) x lr = 8.82 x 90.5 x 5 = 3,992; it passes.
    small = bound.for_reply(0, 8.82, 8194)
    assert 3992 * 1.5 < small < 3992 * 3
    # A claimed noise multiplier buys a bounded room only.
    assert bound.for_reply(0, 1e12, 8194) == bound.for_reply(0, 1000.0, 8194)
    assert bound.for_reply(0, "not a number", 8194) == bound.for_reply(0, 0.0, 8194)
    s = strategy("fedavg", tmp_path, max_update_norm=bound, nodes=[1, 2])
    demo_sized = arrays(np.full((2, DIM), 7.33 / 4.0))  # L2 norm 7.33
    huge = arrays(np.full((2, DIM), 100.0))  # L2 norm 400
    s.aggregate_train(1, [answer(s, 1, demo_sized), answer(s, 2, huge)])
    assert s.rounds[1].participants == ["node-1"]
    assert "exceeds the bound 250" in s.rounds[1].rejected[0]


def test_an_evaluate_answer_outside_the_honest_range_is_rejected():
    """The red team's finding: one reply with accuracy -1e9 set the federation's figure."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from fedshield.common import wire
    from fedshield.server.validate import UpdateRejected, validate_evaluate_reply

    def answer(accuracy: float, loss: float) -> Message:
        metrics = MetricRecord(
            {
                "num-examples": 600,
                "accuracy": accuracy,
                "loss": loss,
                "epsilon": 1.0,
                "noise-multiplier": 10.0,
            }
        )
        content = RecordDict({wire.METRICS: metrics, wire.OWNER: ConfigRecord({})})
        return Message(content=content, dst_node_id=1, message_type="evaluate")

    assert validate_evaluate_reply(answer(0.8, 0.5)) == 600
    for accuracy, loss in ((-1e9, 0.5), (1.5, 0.5), (0.8, 1e300), (0.8, -1.0)):
        with pytest.raises(UpdateRejected):
            validate_evaluate_reply(answer(accuracy, loss))
