"""The ClientApp's train handler, called with real Flower messages, in process.

Covers the privacy invariants at the client: refuse before training, charge the ledger
durably before the update leaves, and release nothing derived from the text but the
model update and aggregate metrics.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from fedshield.audit.verify import verify_log
from fedshield.client import app as client_module
from fedshield.client.ledger import PrivacyLedger
from fedshield.common import wire
from fedshield.common.data import load_dataset
from tests.support.client_app import PLAN, owner_context, run_train, train_message

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def test_a_round_trains_charges_the_ledger_and_replies_with_the_update(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    reply = run_train(context)
    assert not reply.has_error(), reply.error
    audit = verify_log(tmp_path / "audit" / "audit.jsonl")
    assert audit.ok, audit.problem
    types = [e["type"] for e in audit.entries]
    assert types == [
        "log-start",
        "round-start",
        "budget-changed",
        "dp-charged",  # the record count's DP release (client/count.py)
        "text-desensitised",  # after the pre-flight, before anything reads the text
        "dp-charged",
        "update-released",
        "checkpoint",
    ]
    released = audit.entries[6]
    assert released["hash"] == reply.content[wire.OWNER][wire.AUDIT_HEAD]
    assert released["data"]["update-sha256"] == wire.arrays_digest(reply.content[wire.ARRAYS])[0]
    metrics = reply.content[wire.METRICS]
    ledger = PrivacyLedger(tmp_path / "ledgers")
    count, trained = ledger.entries()
    assert (count.kind, trained.kind) == ("count", "train")
    assert metrics["epsilon"] == pytest.approx(ledger.epsilon(1e-5))
    assert 0 < metrics["epsilon"] < 2.0
    # The count leaves only as its DP release (600 records, noise std 20).
    assert metrics["num-examples"] == count.released and abs(count.released - 600) < 150
    assert set(reply.content[wire.ARRAYS].keys()) == {"weight", "bias"}


def test_target_epsilon_is_met_over_the_planned_rounds_and_then_refused(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers", budget=2.0)
    eps = [
        run_train(context, train_message(server_round=r)).content[wire.METRICS]["epsilon"]
        for r in (1, 2)
    ]
    assert eps[0] < eps[1] <= 2.0
    assert eps[1] == pytest.approx(2.0, abs=0.02)
    refusal = run_train(context, train_message(server_round=3))
    assert refusal.has_error()
    entries = verify_log(tmp_path / "audit" / "audit.jsonl").entries
    assert [e["type"] for e in entries][-2:] == ["round-refused", "checkpoint"]
    assert refusal.error.code == wire.ERROR_BUDGET_EXCEEDED
    assert refusal.error.reason == f"hospital-a: {wire.REFUSAL_REASONS[wire.ERROR_BUDGET_EXCEEDED]}"
    assert "over the owner's budget 2" in entries[-2]["data"]["reason"]  # details stay local


def test_refusal_happens_before_training(owner_csv, tmp_path, monkeypatch):
    context = owner_context(owner_csv, tmp_path / "ledgers", budget=0.01)
    calls = []
    monkeypatch.setattr(client_module, "train_locally", lambda *a, **k: calls.append(a))
    reply = run_train(context)
    assert reply.has_error() and reply.error.code == wire.ERROR_BUDGET_EXCEEDED
    assert calls == []
    assert PrivacyLedger(tmp_path / "ledgers").entries() == []


def test_no_update_leaves_when_the_charge_cannot_be_recorded(owner_csv, tmp_path, monkeypatch):
    context = owner_context(owner_csv, tmp_path / "ledgers")

    def failing_charge(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PrivacyLedger, "charge_ledger_before_release", failing_charge)
    reply = run_train(context)
    assert reply.has_error() and reply.error.code == wire.ERROR_INTERNAL
    assert "disk full" not in reply.error.reason  # exception texts stay with the owner


def test_delta_at_or_above_one_over_n_is_refused(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    context.node_config["delta"] = 1 / 300  # over 1/N for any released count near 600
    reply = run_train(context)
    assert reply.has_error() and reply.error.code == wire.ERROR_BAD_DATA_OR_CONFIG
    refused = verify_log(tmp_path / "audit" / "audit.jsonl").entries[-2]
    assert (
        refused["type"] == "round-refused" and "must be > 0 and < 1/N" in refused["data"]["reason"]
    )


def test_nothing_derived_from_the_text_is_in_the_reply(tmp_path, imdb_frame):
    marker = "zqxmarker7731"
    frame = imdb_frame.copy()
    frame.loc[:49, "text"] = frame.loc[:49, "text"] + f" {marker} {marker}"
    path = tmp_path / "planted.csv"
    frame.to_csv(path, index=False)
    reply = run_train(owner_context(path, tmp_path / "ledgers"))
    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {wire.ARRAYS, wire.METRICS, wire.OWNER}
    assert set(reply.content[wire.METRICS].keys()) == set(wire.REPLY_METRIC_KEYS)
    arrays = reply.content[wire.ARRAYS]
    # The update has the public model's shape, nothing vocabulary- or record-sized.
    assert {k: tuple(v.shape) for k, v in arrays.items()} == {"weight": (2, 256), "bias": (2,)}
    wire_bytes = pickle.dumps(reply.content)
    assert marker.encode() not in wire_bytes
    audit_bytes = (tmp_path / "audit" / "audit.jsonl").read_bytes()
    assert b"update-released" in audit_bytes and marker.encode() not in audit_bytes
    assert str(path).encode() not in wire_bytes
    assert load_dataset(path).fingerprint.encode() not in wire_bytes


def test_bad_owner_config_is_a_clear_error_reply(owner_csv, tmp_path):
    context = owner_context(owner_csv, tmp_path / "ledgers")
    context.node_config["epsilon-budget"] = 0
    reply = run_train(context)
    assert reply.has_error() and reply.error.code == wire.ERROR_BAD_DATA_OR_CONFIG
    refused = verify_log(tmp_path / "audit" / "audit.jsonl").entries[-2]
    assert "epsilon-budget" in refused["data"]["reason"]


def test_a_label_outside_the_owners_classes_is_left_out_not_refused(tmp_path):
    """A refusal that depended on one record's label would tell the server the label is
    there; the rows are left out instead, and only the owner's log says how many."""
    path = tmp_path / "three.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(90)], "label": np.arange(90) % 3}).to_csv(
        path, index=False
    )
    reply = run_train(
        owner_context(path, tmp_path / "ledgers"), train_message(PLAN.replace(batch_size=0))
    )
    assert not reply.has_error(), reply.error
    started = verify_log(tmp_path / "audit" / "audit.jsonl").entries[1]["data"]
    assert (started["records"], started["records-left-out"]) == (60, 30)


def test_a_fixed_noise_multiplier_is_used_as_given(owner_csv, tmp_path):
    plan = PLAN.replace(noise_multiplier=1.7, target_epsilon=0.0, epsilon_budget=5.0)
    reply = run_train(owner_context(owner_csv, tmp_path / "ledgers"), train_message(plan))
    assert not reply.has_error(), reply.error
    assert reply.content[wire.METRICS]["noise-multiplier"] == 1.7
