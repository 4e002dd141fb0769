"""Bounds on everything a hostile server sends a data owner, checked before use.

A hostile server once wedged an owner with one 263 KB plan key (copied into the audit
log past its tail window), made it spend seconds and gigabytes on a huge extra array,
and had float64, float16, int64 and NaN weights cast or trained and charged. Each attack
is played here against the real ClientApp in process (``client/accept.py`` holds the
checks, tested alone below), with the audit log's own bound and tail reading.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from fedshield.audit.verify import verify_log
from fedshield.client import accept
from fedshield.client.ledger import PrivacyLedger
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import MAX_ENTRY_BYTES, TAIL_WINDOW_BYTES, AuditLog
from fedshield.common.errors import AuditLogError, ConfigError
from fedshield.common.model import build_model
from fedshield.common.plan import MAX_CLASSES
from tests.support.client_app import CLASSES, PLAN, owner_context, run_train, train_message

pytestmark = pytest.mark.usefixtures("flower_task_identity")

HUGE = 263_000  # over the audit log's 256 KiB tail window
REFUSED = wire.ERROR_BAD_DATA_OR_CONFIG


def expected_model() -> dict[str, torch.Tensor]:
    return build_model(PLAN.feat_out_dim, len(CLASSES)).state_dict()


def honest_plan() -> ConfigRecord:
    record = wire.encode_train_plan(PLAN, CLASSES)
    record[wire.SERVER_ROUND] = 1
    record[wire.SERVER_AUDIT_HEAD] = "ab" * 32
    return record


def with_arrays(arrays: dict[str, Array], server_round: int = 1) -> Message:
    message = train_message(server_round=server_round)
    message.content[wire.ARRAYS] = ArrayRecord(arrays)
    return message


def honest_arrays(**changes: np.ndarray) -> dict[str, Array]:
    arrays = {k: t.numpy() for k, t in expected_model().items()}
    arrays.update(changes)
    return {k: Array(v) for k, v in arrays.items()}


def audit_log(tmp_path):
    log = verify_log(tmp_path / "audit" / "audit.jsonl")
    assert log.ok, log.problem
    return log.entries


def assert_refused_at_no_cost(reply: Message, tmp_path, *words: str) -> str:
    """Refused with a code, nothing charged or released, the log intact; the reason."""
    assert reply.has_error() and reply.error.code == REFUSED
    assert reply.error.reason == f"hospital-a: {wire.REFUSAL_REASONS[REFUSED]}"
    assert PrivacyLedger(tmp_path / "ledgers").entries() == []
    entries = audit_log(tmp_path)
    types = [e["type"] for e in entries]
    assert "dp-charged" not in types and "update-released" not in types
    assert types[-2:] == ["round-refused", "checkpoint"]
    reason = entries[-2]["data"]["reason"]
    assert all(word in reason for word in words), reason
    assert len(reason) < 600  # names the key and the sizes, never echoes a huge value
    return reason


def assert_next_honest_round_trains(context, tmp_path) -> None:
    reply = run_train(context, train_message(server_round=2))
    assert not reply.has_error(), reply.error
    assert "dp-charged" in [e["type"] for e in audit_log(tmp_path)]


# --- the hostile server against the real ClientApp -------------------------------------


def test_an_oversized_plan_key_is_refused_and_the_owner_is_not_wedged(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    message = train_message()
    message.content[wire.CONFIG]["padding"] = "A" * HUGE
    reply = run_train(context, message)
    assert_refused_at_no_cost(reply, tmp_path, "'padding'", "does not know")
    assert (tmp_path / "audit" / "audit.jsonl").stat().st_size < 16 * 1024
    assert_next_honest_round_trains(context, tmp_path)


def test_an_oversized_value_of_a_known_plan_key_is_refused(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    message = train_message()
    message.content[wire.CONFIG]["run-key"] = "r" * HUGE
    reason = assert_refused_at_no_cost(run_train(context, message), tmp_path, "'run-key'")
    assert f"{HUGE:,} characters" in reason and "r" * 100 not in reason
    assert_next_honest_round_trains(context, tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("proximal-mu", 0.1),  # a key this owner cannot judge: refused, not ignored
        ("audit-canaries", "/etc/passwd"),  # a RunConfig key the server never sends
        ("batch-size", "64"),  # a number as text
        ("dp", 1),  # a number for a flag
        ("learning-rate", float("nan")),
        ("seed", 2**70),
        ("classes", "0," + "x" * 101),  # a class name longer than an operator may declare
        (wire.SERVER_AUDIT_HEAD, "not-a-hash"),
    ],
)
def test_a_hostile_plan_key_or_value_is_refused_before_the_plan_is_read(
    key, value, owner_csv, tmp_path
):
    message = train_message()
    message.content[wire.CONFIG][key] = value
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"), message)
    assert_refused_at_no_cost(reply, tmp_path, repr(key))
    assert [e["type"] for e in audit_log(tmp_path)] == ["log-start", "round-refused", "checkpoint"]


def test_a_message_with_a_record_besides_arrays_and_config_is_refused(owner_csv, tmp_path):
    message = train_message()
    message.content["extra"] = ConfigRecord({"x": "y"})
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"), message)
    assert_refused_at_no_cost(reply, tmp_path, "'extra'")


def test_a_huge_extra_array_is_refused_before_it_is_converted(owner_csv, tmp_path, monkeypatch):
    converted = []
    original = ArrayRecord.to_torch_state_dict
    monkeypatch.setattr(
        ArrayRecord,
        "to_torch_state_dict",
        lambda self, **kw: converted.append(list(self.keys())) or original(self, **kw),
    )
    arrays = honest_arrays()
    arrays["extra"] = Array(np.zeros(10**8, dtype=np.float32))
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"), with_arrays(arrays))
    assert_refused_at_no_cost(reply, tmp_path, "unexpected 'extra'")
    assert converted == []


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64])
def test_weights_of_another_dtype_are_refused_not_cast(dtype, owner_csv, tmp_path):
    weight = expected_model()["weight"].numpy().astype(dtype)
    message = with_arrays(honest_arrays(weight=weight))
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"), message)
    assert_refused_at_no_cost(reply, tmp_path, "'weight'", np.dtype(dtype).name, "float32")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_and_cost_no_charge(bad, owner_csv, tmp_path):
    weight = expected_model()["weight"].numpy().copy()
    weight[1, 7] = bad
    context = owner_context(owner_csv, tmp_path / "ledgers")
    reply = run_train(context, with_arrays(honest_arrays(weight=weight)))
    assert_refused_at_no_cost(reply, tmp_path, "'weight'", "1 non-finite")
    assert_next_honest_round_trains(context, tmp_path)


@pytest.mark.parametrize(
    "arrays",
    [
        {"weight": Array(np.zeros((2, 128), np.float32)), "bias": Array(np.zeros(2, np.float32))},
        {"weight": Array(np.zeros((3, 256), np.float32)), "bias": Array(np.zeros(3, np.float32))},
        {"weight": Array(np.zeros((2, 256), np.float32))},
        {},
    ],
    ids=["narrow", "three-classes", "no-bias", "empty"],
)
def test_a_model_of_the_wrong_shape_or_keys_is_refused(arrays, owner_csv, tmp_path):
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"), with_arrays(arrays))
    assert_refused_at_no_cost(reply, tmp_path, "server's")


def test_an_existing_log_with_an_entry_longer_than_the_window_still_trains(owner_csv, tmp_path):
    log = AuditLog(tmp_path / "audit" / "audit.jsonl", actor="hospital-a")
    log.append(Event.ROUND_ERROR, **{Field.ERROR: "z" * (2 * TAIL_WINDOW_BYTES)})
    log.checkpoint("message-end")
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"))
    assert not reply.has_error(), reply.error
    assert audit_log(tmp_path)[-2]["type"] == "update-released"


def test_the_servers_own_messages_pass_the_owners_checks(tmp_path):
    """The plan keys the owner accepts are exactly those the real server strategy sends."""
    from fedshield.server.strategy import build_strategy

    class TwoNodes:
        def get_node_ids(self):
            return [1, 2]

    for aggregation in ("fedavg", "median", "trimmed-mean"):
        strategy = build_strategy(
            aggregation,
            audit=AuditLog(tmp_path / aggregation / "audit.jsonl", actor="server"),
            max_update_norm=0.0,
            server_learning_rate=1.0,
            server_momentum=0.0,
            trim_fraction=0.2,
            fraction_evaluate=1.0,
            min_train_nodes=2,
            min_evaluate_nodes=2,
            min_available_nodes=2,
        )
        arrays = ArrayRecord(expected_model())
        plan = wire.encode_train_plan(PLAN, CLASSES)
        sent = [
            *strategy.configure_train(1, arrays, ConfigRecord(dict(plan)), TwoNodes()),
            *strategy.configure_evaluate(1, arrays, ConfigRecord(dict(plan)), TwoNodes()),
        ]
        assert len(sent) == 4
        for message in sent:
            accept.check_message_records(message.content)
            accept.check_plan_record(message.content[wire.CONFIG])
            accept.check_model_arrays(message.content[wire.ARRAYS], expected_model())
        assert wire.SERVER_AUDIT_HEAD in sent[0].content[wire.CONFIG]


# --- accept.py alone --------------------------------------------------------------------


def test_an_honest_plan_and_the_largest_honest_class_list_are_accepted():
    accept.check_plan_record(honest_plan())
    plan = honest_plan()
    plan[wire.CLASSES] = ",".join(f"{i:0100d}" for i in range(MAX_CLASSES))
    accept.check_plan_record(plan)
    plan[wire.CLASSES] += ",x"
    with pytest.raises(ConfigError, match="at most 101,000"):
        accept.check_plan_record(plan)


@pytest.mark.parametrize(
    "value", [[1, 2], b"bytes", ["a"], True], ids=["list", "bytes", "strings", "bool"]
)
def test_plan_values_of_other_types_are_refused(value):
    plan = honest_plan()
    plan["batch-size"] = value
    with pytest.raises(ConfigError, match="'batch-size' is of type .*; an owner accepts type int"):
        accept.check_plan_record(plan)


def test_an_int_stands_for_a_float_but_not_the_reverse():
    plan = honest_plan()
    plan["learning-rate"] = 1
    accept.check_plan_record(plan)
    plan["batch-size"] = 64.0
    with pytest.raises(ConfigError, match="'batch-size' is of type float"):
        accept.check_plan_record(plan)


def test_a_refusal_never_echoes_a_huge_key_or_value():
    plan = honest_plan()
    plan["k" * HUGE] = 1
    with pytest.raises(ConfigError) as unknown:
        accept.check_plan_record(plan)
    plan = honest_plan()
    plan[wire.CLASSES] = "0," + "c" * HUGE
    with pytest.raises(ConfigError) as long_value:
        accept.check_plan_record(plan)
    for refusal in (unknown.value, long_value.value):
        assert len(str(refusal)) < 400


def test_many_unknown_keys_are_counted_and_a_few_named():
    plan = honest_plan()
    for i in range(50):
        plan[f"extra-{i:02d}"] = i
    with pytest.raises(ConfigError, match=r"50 key\(s\).*'extra-00'.* and 45 more"):
        accept.check_plan_record(plan)


def test_an_honest_model_is_accepted():
    accept.check_model_arrays(ArrayRecord(expected_model()), expected_model())


def npy(values: np.ndarray, pad: int = 0) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue() + b"\0" * pad


def test_metadata_that_lies_about_the_payload_is_refused():
    expected = {"w": torch.zeros(2, 256)}
    # float32 (2, 256) declared, float64 (2, 128) inside: the same byte count.
    lying = Array("float32", (2, 256), "numpy.ndarray", npy(np.zeros((2, 128), np.float64)))
    with pytest.raises(ConfigError, match="decodes as float64"):
        accept.check_model_arrays(ArrayRecord({"w": lying}), expected)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (Array("float32", (2, 256), "numpy.ndarray", npy(np.zeros((2, 256)))), "4,224 bytes"),
        (Array("float32", (2, 256), "numpy.ndarray", b"\0" * 2048), "does not decode"),
        (
            Array("float32", (2, 256), "torch.Tensor", npy(np.zeros((2, 256), np.float32))),
            "torch.Tensor",
        ),
        (
            Array("float32", (2, 256), "numpy.ndarray", npy(np.zeros((2, 256), np.float32), 2000)),
            "bytes",
        ),
    ],
    ids=["twice-the-bytes", "not-npy", "other-stype", "padded"],
)
def test_arrays_whose_bytes_do_not_fit_their_metadata_are_refused(array, match):
    with pytest.raises(ConfigError, match=match):
        accept.check_model_arrays(ArrayRecord({"w": array}), {"w": torch.zeros(2, 256)})


# --- the audit log: no entry's size can wedge it ----------------------------------------


def test_entries_longer_than_the_tail_window_still_append_and_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(path, "owner-a").append(
        Event.ROUND_ERROR, **{Field.ERROR: "a" * (3 * TAIL_WINDOW_BYTES)}
    )
    log = AuditLog(path, "owner-a")  # reopened: finds the head behind a long line
    log.append(Event.ROUND_ERROR, **{Field.ERROR: "b" * (5 * TAIL_WINDOW_BYTES)})
    # the last line is 5 windows long, with more before
    log.append(Event.ROUND_NOT_AGGREGATED, **{Field.SERVER_ROUND: 1})
    log.checkpoint("run-end")
    result = verify_log(path)
    assert result.ok, result.problem
    assert [e["seq"] for e in result.entries] == list(range(6))
    assert [e["type"] for e in result.entries] == [
        Event.LOG_START,
        Event.ROUND_ERROR,
        Event.ROUND_ERROR,
        Event.ROUND_NOT_AGGREGATED,
        Event.CHECKPOINT,  # no checkpoint within the lines read back: one counts as due
        Event.CHECKPOINT,
    ]
    assert result.entries[4]["data"]["reason"] == "periodic"


def test_an_entry_over_the_bound_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "owner-a")
    log.append(Event.ROUND_NOT_AGGREGATED, **{Field.SERVER_ROUND: 1})
    before = path.read_bytes()
    with pytest.raises(AuditLogError, match="'error'.*nothing was written") as refused:
        log.append(Event.ROUND_ERROR, **{Field.ERROR: "x" * MAX_ENTRY_BYTES, Field.SERVER_ROUND: 1})
    assert len(str(refused.value)) < 600
    assert path.read_bytes() == before
    log.checkpoint("run-end")
    assert verify_log(path).ok
