"""Owners are named by the node key that authenticated, never by a field of their reply:
the fingerprint the server computes from Flower's key equals the operator's registry's;
the gateway's push-messages check (signature, registry, every message's sender), without
processes; and ``server status`` counts every charge an owner reported (evaluate too),
from anchored replies, under its key. The same attacks against a real deployment are in
tests/adversarial/test_hostile_deployment.py."""

from __future__ import annotations

import datetime as dt
import json
from base64 import b64decode, b64encode
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.proto.fleet_pb2 import PushMessagesRequest
from flwr.proto.message_pb2 import Message as MessageProto
from flwr.proto.node_pb2 import NodeInfo

from fedshield.common import wire
from fedshield.common.audit_log import AuditLog
from fedshield.common.pki import create_node_key
from fedshield.server.fleet_sender import (
    RegisteredNodes,
    SenderRefused,
    authenticated_key,
    check_push_senders,
)
from fedshield.server.identity import DEFAULT_MAX_WEIGHT, OwnerDirectory, public_key_fingerprint
from fedshield.server.owner_registry import save_owner_registry
from fedshield.server.status import federation_status
from fedshield.server.strategy import build_strategy
from tests.support.strategy import GLOBAL, StubGrid

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def pem_of(pub: Path) -> bytes:
    """The key as Flower sends and stores it: PEM SubjectPublicKeyInfo."""
    key = serialization.load_ssh_public_key(pub.read_bytes())
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_server_names_a_node_by_the_fingerprint_its_operator_registered(tmp_path):
    pub, fingerprint = create_node_key(tmp_path, "hospital-a")
    assert public_key_fingerprint(pem_of(pub)) == fingerprint
    assert public_key_fingerprint(pub.read_bytes()) == fingerprint
    registry = [
        {"name": "hospital-a", "fingerprint": fingerprint, "node-id": 11, "max-weight": 500},
        {"name": "bank-b", "fingerprint": "SHA256:bank", "node-id": 12},
    ]
    owners = OwnerDirectory(registry)
    owners.learn_node_keys([NodeInfo(node_id=11, public_key=pem_of(pub)), NodeInfo(node_id=13)])
    a, b, c = (owners.identity(n) for n in (11, 12, 13))
    assert (a.name, a.registered_as, a.max_weight) == (fingerprint, "hospital-a", 500)
    # No key from the SuperLink: the registry's node id still names it by its key.
    assert (b.name, b.max_weight) == ("SHA256:bank", DEFAULT_MAX_WEIGHT)
    assert (c.name, c.fingerprint) == ("node-13", None)  # simulation: no keys at all


def signed_headers(private_key, when: dt.datetime | None = None) -> dict[str, str]:
    """Flower 1.42's SuperNode authentication headers (node_auth_http_interceptor.py)."""
    timestamp = (when or dt.datetime.now(dt.UTC)).isoformat()
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = private_key.sign(timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return {
        "flwr-public-key": b64encode(public).decode(),
        "flwr-timestamp": timestamp,
        "flwr-signature": b64encode(signature).decode(),
    }


def push_body(node_id: int, *senders: int) -> bytes:
    request = PushMessagesRequest()
    request.node.node_id = node_id
    for sender in senders:
        message = MessageProto()
        message.metadata.src_node_id = sender
        message.metadata.reply_to_message_id = "task-of-" + str(sender)
        request.messages_list.append(message)
    return request.SerializeToString()


def test_the_gateway_verifies_the_signed_key_and_refuses_a_forged_or_stale_one():
    key = ec.generate_private_key(ec.SECP384R1())
    headers = signed_headers(key)
    fingerprint = authenticated_key(headers)
    assert fingerprint == public_key_fingerprint(b64decode(headers["flwr-public-key"]))
    other = signed_headers(ec.generate_private_key(ec.SECP384R1()))
    forged = {**headers, "flwr-signature": other["flwr-signature"]}
    stale = signed_headers(key, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    for bad in (forged, stale, {k: v for k, v in headers.items() if k != "flwr-signature"}):
        with pytest.raises(SenderRefused) as refused:
            authenticated_key(bad)
        assert refused.value.status == 401


def test_a_push_is_forwarded_only_when_every_message_comes_from_the_signing_node(tmp_path):
    save_owner_registry(
        tmp_path,
        [
            {"name": "a", "fingerprint": "SHA256:a", "node-id": 7, "removed": None},
            {"name": "gone", "fingerprint": "SHA256:gone", "node-id": 9, "removed": {"t": 1}},
        ],
    )
    nodes = RegisteredNodes(tmp_path)
    assert check_push_senders(push_body(7, 7), "SHA256:a", nodes.node_id("SHA256:a")) == 7
    with pytest.raises(SenderRefused, match="claiming to come from node 8") as refused:
        check_push_senders(push_body(7, 7, 8), "SHA256:a", 7)  # one forged message is enough
    assert refused.value.status == 403
    assert refused.value.details["claimed-src-node-id"] == 8
    with pytest.raises(SenderRefused, match="registered as node 7"):
        check_push_senders(push_body(8, 8), "SHA256:a", 7)
    # A key this folder never learnt a node id for: the request's node, which the
    # SuperLink binds to the key itself, must still be every message's sender.
    assert nodes.node_id("SHA256:unknown") is None
    with pytest.raises(SenderRefused):
        check_push_senders(push_body(5, 6), "SHA256:unknown", None)
    with pytest.raises(SenderRefused, match="removed"):
        nodes.node_id("SHA256:gone")
    with pytest.raises(SenderRefused) as garbage:
        check_push_senders(b"\xff\xff\xff", "SHA256:a", 7)
    assert garbage.value.status == 400


def evaluate_reply(task: Message, epsilon: float, label: str) -> Message:
    metrics = MetricRecord(
        {"num-examples": 600, "accuracy": 0.7, "loss": 0.6, "epsilon": epsilon}
        | {"noise-multiplier": 10.0}
    )
    owner = ConfigRecord({wire.OWNER_ID: label, wire.AUDIT_HEAD: "e" * 64})
    message = Message(RecordDict({wire.METRICS: metrics, wire.OWNER: owner}), reply_to=task)
    message.metadata.__dict__["_src_node_id"] = task.metadata.dst_node_id
    return message


def train_reply(task: Message, epsilon: float, label: str) -> Message:
    metrics = MetricRecord(
        {k: 0.0 for k in wire.REPLY_METRIC_KEYS}
        | {"num-examples": 600, "epsilon": epsilon, "epsilon-budget": 5.0}
    )
    owner = ConfigRecord({wire.OWNER_ID: label, wire.AUDIT_HEAD: "t" * 64})
    content = RecordDict({wire.ARRAYS: ArrayRecord(GLOBAL.to_torch_state_dict())})
    content[wire.METRICS] = metrics
    content[wire.OWNER] = owner
    message = Message(content, reply_to=task)
    message.metadata.__dict__["_src_node_id"] = task.metadata.dst_node_id
    return message


def test_status_counts_the_evaluate_charge_under_the_owners_key(tmp_path):
    """The red team saw 2.424 (the train reply's figure) where the owner's ledger said
    2.4996 after its evaluate answer; and the owner's own label as its name."""
    state = tmp_path / "state"
    state.mkdir()
    pub, fingerprint = create_node_key(tmp_path, "owner-0")
    registry = [
        {"name": "owner-0", "key": str(pub), "fingerprint": fingerprint, "node-id": 4}
        | {"time": "2026-12-01T00:00:00+00:00", "removed": None}
    ]
    save_owner_registry(state, registry)
    run = state / "runs" / "r1"
    s = build_strategy(
        "fedavg",
        audit=AuditLog(run / "audit" / "server" / "audit.jsonl", "server"),
        max_update_norm=0.0,
        server_learning_rate=1.0,
        server_momentum=0.0,
        trim_fraction=0.2,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        owners=OwnerDirectory(registry),
    )
    grid = StubGrid([4], {4: pem_of(pub)})
    tasks = grid.push(s.configure_train(1, GLOBAL, ConfigRecord(), grid))
    s.aggregate_train(1, [train_reply(tasks[4], 2.424, "owner-2")])
    tasks = grid.push(s.configure_evaluate(1, GLOBAL, ConfigRecord(), grid))
    assert s.aggregate_evaluate(1, [evaluate_reply(tasks[4], 2.4996, "owner-2")]) is not None
    assert s.rounds[1].epsilon == {fingerprint: 2.4996}
    (run / "metrics.json").write_text(json.dumps({"run": {"num-rounds": 1}, "rounds": []}))

    (row,) = federation_status(state)["owners"]
    assert (row["name"], row["fingerprint"], row["node-id"]) == ("owner-0", fingerprint, "4")
    assert row["epsilon-spent"] == 2.4996 and row["epsilon-budget"] == 5.0
    assert row["epsilon-left"] == pytest.approx(5.0 - 2.4996)
    assert "evaluate reply" in row["epsilon-from"]
    assert row["label-self-declared"] == "owner-2"  # the claim, shown as a claim only


def test_a_reply_without_the_owners_audit_anchor_does_not_set_its_epsilon(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    save_owner_registry(
        state, [{"name": "a", "key": "a.pub", "fingerprint": "SHA256:a", "node-id": 4}]
    )
    log = AuditLog(state / "runs" / "r1" / "audit" / "server" / "audit.jsonl", "server")
    for epsilon, head in ((1.0, "h" * 64), (9.0, None)):
        log.append(
            "update-received",
            **{
                "server-round": 1,
                "node-id": 4,
                "owner": "SHA256:a",
                "node-key-fingerprint": "SHA256:a",
                "metrics": {"epsilon": epsilon, "epsilon-budget": 5.0},
                "owner-audit-head": head,
            },
        )
    (state / "runs" / "r1" / "metrics.json").write_text(json.dumps({"rounds": []}))
    (row,) = federation_status(state)["owners"]
    assert row["epsilon-spent"] == 1.0
