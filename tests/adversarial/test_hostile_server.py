"""A hostile server against the real ClientApp: each attack that once worked, refused now.

The server chooses the plan, the model, the class list and what it asks for; the owner's
own configuration (node config) is the only authority over what leaves its machine.
Each test plays one attack with real Flower messages and the real ClientApp in process,
and asserts on what the reply carries, what the ledger charged and what the owner's
audit log recorded.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Message

from fedshield.audit.report import build_report
from fedshield.audit.verify import verify_log
from fedshield.client.ledger import PrivacyLedger
from fedshield.common import wire
from fedshield.common.dp_event import DpEvent
from fedshield.common.model import build_model
from fedshield.common.privacy import epsilon_spent
from tests.support.client_app import (
    CLASSES,
    PLAN,
    client_app,
    evaluate_message,
    owner_context,
    run_train,
    train_message,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def audit_entries(tmp_path, kind: str | None = None) -> list[dict]:
    log = verify_log(tmp_path / "audit" / "audit.jsonl")
    assert log.ok, log.problem
    return [e for e in log.entries if kind is None or e["type"] == kind]


def assert_allowed_fields(kind: str, reply: Message) -> None:
    """Every field of a reply is declared in wire.REPLY_SCHEMA with why it may leave."""
    if reply.has_error():
        assert reply.error.code in wire.REFUSAL_REASONS
        owner, _, reason = reply.error.reason.partition(": ")
        assert reason == wire.REFUSAL_REASONS[reply.error.code]
        return
    assert wire.reply_fields(reply.content) <= set(wire.REPLY_SCHEMA[kind])


def test_the_reply_schema_lists_every_field_and_why_it_may_leave():
    assert set(wire.REPLY_SCHEMA["train"]) == {
        "arrays.*",
        *(f"metrics.{k}" for k in wire.REPLY_METRIC_KEYS),
        "owner.owner-id",
        "owner.audit-head",
        "owner.privacy-definition",
    }
    assert "metrics.train-loss" not in wire.REPLY_SCHEMA["train"]
    assert wire.REPLY_SCHEMA["train"]["arrays.*"] == wire.DP_RELEASE
    assert wire.REPLY_SCHEMA["evaluate"]["metrics.accuracy"] == wire.DP_RELEASE
    assert wire.REPLY_SCHEMA["evaluate"]["metrics.loss"] == wire.DP_RELEASE
    for fields in wire.REPLY_SCHEMA.values():
        assert all(why for why in fields.values())


def test_a_plan_cannot_switch_dp_off(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    reply = run_train(context, train_message(PLAN.replace(dp=False)))
    assert reply.has_error() and reply.error.code == wire.ERROR_POLICY
    assert_allowed_fields("train", reply)
    assert PrivacyLedger(tmp_path / "ledgers").entries() == []
    refused = audit_entries(tmp_path, "round-refused")
    assert refused and "allow-no-dp" in refused[-1]["data"]["reason"]


def test_an_owner_that_opted_in_trains_without_dp_and_its_log_says_so(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    context.node_config["allow-no-dp"] = True
    reply = run_train(context, train_message(PLAN.replace(dp=False)))
    assert not reply.has_error(), reply.error
    assert reply.content[wire.METRICS]["epsilon"] == 0.0
    assert audit_entries(tmp_path, "non-private-round")


def _planted(frame: pd.DataFrame, marker: str, count: int) -> pd.DataFrame:
    planted = frame.copy()
    planted.loc[: count - 1, "text"] = planted.loc[: count - 1, "text"] + f" {marker}"
    return planted


@pytest.mark.parametrize("count", [0, 5, 20])
def test_a_crafted_model_reads_no_exact_statistic_back(
    count, imdb_frame, tmp_path, fixed_count_release
):
    """The attack read 0, 1, 5, 20 records containing a word back from train-loss. Now
    every metric is a function of public values and the owner's DP count only:
    identical whatever the data holds, given the same count release."""
    path = tmp_path / f"owner-{count}.csv"
    _planted(imdb_frame, "zqxcanary", count).to_csv(path, index=False)
    reply = run_train(owner_context(path, tmp_path / f"ledgers-{count}"))
    assert not reply.has_error(), reply.error
    assert_allowed_fields("train", reply)
    metrics = dict(reply.content[wire.METRICS])
    baseline_path = tmp_path / "baseline.csv"
    imdb_frame.to_csv(baseline_path, index=False)
    baseline = run_train(owner_context(baseline_path, tmp_path / f"ledgers-base-{count}"))
    assert dict(baseline.content[wire.METRICS]) == metrics


def test_evaluate_without_the_owners_consent_is_refused_and_costs_nothing(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    reply = client_app()(evaluate_message(), context)
    assert reply.has_error() and reply.error.code == wire.ERROR_POLICY
    assert_allowed_fields("evaluate", reply)
    assert PrivacyLedger(tmp_path / "ledgers").entries() == []
    assert audit_entries(tmp_path, "evaluate-refused")


def test_evaluate_with_consent_is_noised_charged_and_audited(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers", budget=50.0)
    context.node_config["allow-evaluate"] = True
    context.node_config["evaluate-noise-multiplier"] = 2.0
    # A crafted model that predicts class 1 for everything: exact accuracy is the share of
    # label 1, which the answer must not give away exactly.
    model = build_model(PLAN.feat_out_dim, len(CLASSES))
    with torch.no_grad():
        model.bias.copy_(torch.tensor([-50.0, 50.0]))
    exact = float((pd.read_csv(owner_csv)["label"] == 1).mean())
    answers = []
    for _ in range(3):
        reply = client_app()(evaluate_message(weights=model), context)
        assert not reply.has_error(), reply.error
        assert_allowed_fields("evaluate", reply)
        answers.append(reply.content[wire.METRICS]["accuracy"])
    assert len(set(answers)) == 3 and exact not in answers
    assert all(abs(a - exact) < 0.1 for a in answers)  # noise std 2*sqrt(2)/600 ~ 0.005
    entries = PrivacyLedger(tmp_path / "ledgers").entries()
    assert [e.kind for e in entries] == ["count"] + ["evaluate"] * 3
    event = DpEvent(noise_multiplier=2.0, sample_rate=1.0, steps=1)
    count = DpEvent(noise_multiplier=20.0, sample_rate=1.0, steps=1)
    assert reply.content[wire.METRICS]["epsilon"] == pytest.approx(
        epsilon_spent([count, *[event] * 3], 1e-5)
    )
    charged = audit_entries(tmp_path, "dp-charged")
    assert [c["data"]["kind"] for c in charged] == ["count"] + ["evaluate"] * 3
    assert len(audit_entries(tmp_path, "evaluate-released")) == 3


def test_two_releases_on_the_same_inputs_differ(owner_csv, tmp_path):
    """Noise comes from a CSPRNG the server cannot seed or predict: the same plan, model
    and data give two different updates, and the plan's seed changes nothing."""
    torch.manual_seed(0)
    first = run_train(owner_context(owner_csv, tmp_path / "a"), train_message(PLAN))
    torch.manual_seed(0)
    second = run_train(owner_context(owner_csv, tmp_path / "b"), train_message(PLAN))
    a = first.content[wire.ARRAYS].to_torch_state_dict()["weight"]
    b = second.content[wire.ARRAYS].to_torch_state_dict()["weight"]
    assert not torch.equal(a, b)
    assert (a - b).abs().max() > 0


def test_refusals_carry_a_code_and_no_value_from_the_data_or_the_disk(tmp_path):
    labels = ["diagnosis-rare-x", "diagnosis-y", "diagnosis-z"]
    path = tmp_path / "secret-hospital-file.csv"
    pd.DataFrame({"text": [f"note {i}" for i in range(90)], "label": np.arange(90) % 3}).assign(
        label=lambda f: [labels[i] for i in f["label"]]
    ).to_csv(path, index=False)
    context = owner_context(path, tmp_path / "ledgers")
    replies = [
        run_train(context, train_message()),  # classes 0/1: every row left out, then too few
        run_train(context, train_message(PLAN.replace(dp=False))),
        client_app()(evaluate_message(), context),
    ]
    context.node_config["delta"] = 0.5
    replies.append(run_train(context, train_message()))
    for reply in replies:
        assert reply.has_error()
        assert_allowed_fields("train", reply)
        text = pickle.dumps(reply.error.reason)
        for secret in [*labels, str(path), path.name, str(tmp_path)]:
            assert secret.encode() not in text, (secret, reply.error.reason)
    # The owner keeps the details: its own log says its rows were left out.
    assert audit_entries(tmp_path, "round-start")[0]["data"]["records-left-out"] == 90


def test_an_owner_that_declares_its_classes_refuses_other_class_lists_without_reading_data(
    owner_csv, tmp_path
):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    context.node_config["classes"] = "0,1"
    assert not run_train(context, train_message()).has_error()
    context.node_config["data-path"] = str(tmp_path / "no-such-file.csv")
    plan = wire.encode_train_plan(PLAN, ("0", "1", "2"))
    plan[wire.SERVER_ROUND] = 2
    message = train_message()
    message.content[wire.CONFIG] = plan
    reply = run_train(context, message)
    # Policy, not "bad data": the answer depends on the owner's declaration alone.
    assert reply.has_error() and reply.error.code == wire.ERROR_POLICY


def test_the_budget_follows_the_records_not_the_files_bytes(owner_csv, tmp_path):
    ledgers = tmp_path / "ledgers"
    first = run_train(owner_context(owner_csv, ledgers, budget=2.1), train_message())
    spent = first.content[wire.METRICS]["epsilon"]
    # The same records, reordered and re-exported as JSON Lines: the same budget.
    frame = pd.read_csv(owner_csv).sample(frac=1.0, random_state=7)
    exported = tmp_path / "re-exported.jsonl"
    frame.to_json(exported, orient="records", lines=True)
    second = run_train(owner_context(exported, ledgers, budget=2.1), train_message(server_round=2))
    assert second.content[wire.METRICS]["epsilon"] > spent
    # ... and a subset: still the same ledger, now over the budget.
    subset = tmp_path / "subset.csv"
    frame.iloc[:400].to_csv(subset, index=False)
    third = run_train(owner_context(subset, ledgers, budget=2.1), train_message(server_round=3))
    assert third.has_error() and third.error.code == wire.ERROR_BUDGET_EXCEEDED
    assert {e.data_fingerprint for e in PrivacyLedger(ledgers).entries()} == {
        e["data"]["data-fingerprint"] for e in audit_entries(tmp_path, "dp-charged")
    }


def test_a_budget_raised_after_a_refusal_is_an_audit_entry_the_report_shows(owner_csv, tmp_path):
    ledgers = tmp_path / "ledgers"
    first = run_train(owner_context(owner_csv, ledgers, budget=1.6), train_message())
    assert not first.has_error(), first.error
    refused = run_train(
        owner_context(owner_csv, ledgers, budget=1.6), train_message(server_round=2)
    )
    assert refused.has_error() and refused.error.code == wire.ERROR_BUDGET_EXCEEDED
    raised = run_train(owner_context(owner_csv, ledgers, budget=4.0), train_message(server_round=3))
    assert not raised.has_error(), raised.error
    changes = audit_entries(tmp_path, "budget-changed")
    assert [(c["data"]["old-budget"], c["data"]["new-budget"]) for c in changes] == [
        (None, 1.6),
        (1.6, 4.0),
    ]
    report = build_report([tmp_path / "audit" / "audit.jsonl"])
    (owner,) = report["owners"]
    first, last = owner["budget_changes"]
    assert (first["old"], first["new"], last["old"], last["new"]) == (None, 1.6, 1.6, 4.0)
    assert last["raised_after_refusal"] and "RAISED" in owner["status"]
    assert json.dumps(report)  # serialisable as report.json


def test_an_owner_cap_per_run_stops_one_run_from_taking_a_multi_run_budget(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers", budget=20.0)
    context.node_config["run-epsilon-cap"] = 1.0
    greedy = PLAN.replace(num_rounds=1, target_epsilon=15.0)
    reply = run_train(context, train_message(greedy))
    assert reply.has_error() and reply.error.code == wire.ERROR_BUDGET_EXCEEDED
    # Only the count release (well under the cap) was charged; nothing trained.
    assert [e.kind for e in PrivacyLedger(tmp_path / "ledgers").entries()] == ["count"]


def test_a_record_with_a_non_finite_gradient_cannot_mark_the_update():
    """A crafted model could make a record's gradient NaN only when it holds a chosen word;
    a NaN would pass clipping and show in the update. Such a record contributes zero."""
    from fedshield.client.train import TrainSettings, train_locally

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(200, 16)).astype(np.float32)
    inputs[:5] = np.nan  # five records whose gradient the server made non-finite
    labels = rng.integers(0, 2, size=200)
    model = build_model(16, 2)
    settings = TrainSettings(noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=1.0)
    outcome = train_locally(model, (inputs,), labels, settings, torch.device("cpu"))
    assert outcome.dp_event is not None
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.parametrize(
    "hostile",
    [
        {"feat-ngram-max": 700},  # featurising cost grows with a record's length
        {"max-grad-norm": 0.75e-45},  # subnormal clipping: float32 rounding eats the noise
        {"run-key": "../../models/*"},  # a path and a glob in the owner's folders
        {"target-epsilon": 1e15},  # the noise search would never end
        {"noise-multiplier": 1e-200},
        {"local-epochs": 3000, "noise-multiplier": 1e6},  # pins the owner's CPU for free
        {"classes": ",".join(str(i) for i in range(5000))},  # the model's size at the owner
        {"classes": "0,0"},
    ],
)
def test_hostile_plan_values_are_refused_before_the_data_is_touched(
    hostile, owner_csv, tmp_path, monkeypatch
):
    from fedshield.client import app as client_module

    touched = []
    monkeypatch.setattr(client_module, "owner_inputs", lambda *a: touched.append(a))
    message = train_message()
    for key, value in hostile.items():
        message.content[wire.CONFIG][key] = value
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"), message)
    assert reply.has_error() and reply.error.code == wire.ERROR_BAD_DATA_OR_CONFIG
    assert touched == [] and PrivacyLedger(tmp_path / "ledgers").entries() == []


def test_a_plan_of_billions_of_steps_is_refused_before_any_noise_search(
    owner_csv, tmp_path, monkeypatch
):
    """Calibrating noise for 1e15 steps would pin the owner's CPU for minutes."""
    import time

    from fedshield.client import app as client_module

    touched = []
    monkeypatch.setattr(client_module, "owner_inputs", lambda *a: touched.append(a))
    message = train_message()
    message.content[wire.CONFIG]["num-rounds"] = 10**12
    message.content[wire.CONFIG]["batch-size"] = 1
    started = time.monotonic()
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"), message)
    assert reply.has_error() and reply.error.code == wire.ERROR_POLICY
    assert time.monotonic() - started < 10 and touched == []


def test_a_round_refused_for_budget_never_featurises_the_text(owner_csv, tmp_path, monkeypatch):
    """Refusal time and memory must not depend on the records (lengths, contents)."""
    from fedshield.client import app as client_module

    touched = []
    monkeypatch.setattr(client_module, "owner_inputs", lambda *a: touched.append(a))
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers", budget=0.01))
    assert reply.has_error() and reply.error.code == wire.ERROR_BUDGET_EXCEEDED
    assert touched == []


def test_evaluate_consent_is_decided_before_the_data_is_read(tmp_path):
    context = owner_context(tmp_path / "missing.csv", tmp_path / "ledgers")
    reply = client_app()(evaluate_message(), context)
    # Policy (1004), not "bad data" (1003): the answer cannot depend on the data file.
    assert reply.has_error() and reply.error.code == wire.ERROR_POLICY


def test_released_updates_are_named_by_a_hash_of_the_run_key(tmp_path):
    from fedshield.client.releases import ReleasedUpdates
    from fedshield.common.owner_keys import open_owner_keys

    releases = ReleasedUpdates(tmp_path / "ledgers", "f" * 64, open_owner_keys(tmp_path / "keys"))
    path = releases._path("run-1", 3)
    assert path.parent == releases.directory and "run-1" not in path.name


def test_a_plan_or_run_config_naming_canaries_adds_no_record_to_a_deployed_owner(
    owner_csv, tmp_path
):
    """The empirical audit's simulation-only key, set by a hostile server in the plan and
    in the run config, neither adds records nor reads the named file at a deployed owner."""
    from fedshield.common.simulation_split import CANARY_FORMAT

    canaries = tmp_path / "included.json"
    records = [{"text": f"zzcanary{i} words", "label": CLASSES[0]} for i in range(50)]
    canaries.write_text(json.dumps({"format": CANARY_FORMAT, "owners": {"0": records}}))
    context = owner_context(owner_csv, tmp_path / "ledgers")
    context.run_config["audit-canaries"] = str(canaries)
    reply = run_train(context, train_message(PLAN.replace(audit_canaries=str(canaries))))
    assert not reply.has_error(), reply.error
    own_records = len(pd.read_csv(owner_csv))
    started = audit_entries(tmp_path, "round-start")[-1]["data"]
    assert started["records"] == own_records


def test_a_plan_of_endless_cheap_steps_is_refused_before_training(owner_csv, tmp_path):
    """The red team's compute attack: huge fixed noise (almost no budget), batches of one,
    100 local epochs: hours of the owner's CPU a round. Refused on the plan and the
    released count, with only the count's release charged."""
    context = owner_context(owner_csv, tmp_path / "ledgers")
    endless = PLAN.replace(noise_multiplier=1e6, target_epsilon=0.0, batch_size=1, local_epochs=100)
    reply = run_train(context, train_message(endless))
    assert reply.has_error() and reply.error.code == wire.ERROR_POLICY
    assert [e.kind for e in PrivacyLedger(tmp_path / "ledgers").entries()] == ["count"]


def test_a_huge_model_trains_in_passes_that_fit_the_cpu_budget():
    """The red team's memory attack: 1,000 classes over 16,384 features took 117 MB a
    record in one pass on CPU; passes are now cut to CPU_PASS_BYTES."""
    from fedshield.common.model import CPU_PASS_BYTES, ModelSpec

    spec = ModelSpec.from_config(PLAN.replace(feat_out_dim=16384))
    model = spec.build(1000)
    per_pass = spec.default_physical_batch_size(model, torch.device("cpu"), 600)
    assert 1 <= per_pass < 600
    assert per_pass * spec.bytes_per_record(model) <= CPU_PASS_BYTES


def test_the_servers_run_config_does_not_reach_a_deployed_owner(owner_csv, tmp_path):
    """The red team's leak: a 5 MB run-config value made the refusal's audit entry too big,
    and Flower replied with the exception's text, the owner's path in it. A deployed
    owner's settings are its node config; the run config is not read at all."""
    context = owner_context(owner_csv, tmp_path / "ledgers")
    context.run_config["run-key"] = "x" * 5_000_000
    context.run_config["not-a-key"] = 1
    reply = run_train(context)
    assert not reply.has_error(), reply.error
    assert audit_entries(tmp_path, "update-released")


def test_a_partition_node_config_outside_a_simulation_takes_no_policy_from_the_server(
    owner_csv, tmp_path, monkeypatch
):
    """The red team's second pass: Flower's docs show ``partition-id`` node configs for
    deployed SuperNodes too; there the server's run config (dp off, a data file of its
    choosing, a fresh ledger) must not become the owner's policy. Only a process that
    ``fedshield simulate`` marked plays simulated owners."""
    from flwr.app import Context, RecordDict

    from fedshield.client.owner import SIMULATED_OWNERS_ENV

    monkeypatch.delenv(SIMULATED_OWNERS_ENV, raising=False)
    hostile = {"dp": False, "data": str(owner_csv), "out-dir": str(tmp_path / "chosen")}
    context = Context(
        run_id=42,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=hostile,
    )
    reply = run_train(context, train_message(PLAN.replace(dp=False)))
    assert reply.has_error() and reply.error.code in wire.REFUSAL_REASONS
    assert not (tmp_path / "chosen").exists()


@pytest.mark.parametrize(
    "values",
    [
        {"feat-n-buckets": 2**22, "feat-entries-per-bucket": 64},  # 13 GB of projection
        {"learning-rate": 1e37},  # an update of infinities, charged
    ],
)
def test_near_free_plans_that_cost_gigabytes_or_infinities_are_refused(values):
    """The red team's second pass: inside every per-key bound, with noise 1e6 (about no
    budget), these took 13 GB at a 200-record owner or released a non-finite update."""
    from fedshield.common.config import RunConfig
    from fedshield.common.errors import ConfigError

    with pytest.raises(ConfigError):
        RunConfig.from_dict({"noise-multiplier": 1e6, "target-epsilon": 0.0, **values})
