"""Kill the ClientApp at points around training and the ledger write: the ledger is never
corrupt, never rolls back, and never records less epsilon than left the machine; and
the retry of a round that was charged but never sent costs nothing more."""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import replace

import pytest

from fedshield.audit.owners import owner_audits
from fedshield.audit.verify import verify_log
from fedshield.client import app as client_module
from fedshield.client.ledger import PrivacyLedger
from fedshield.client.releases import ReleasedUpdates
from fedshield.common import wire
from tests.support.client_app import (
    PLAN,
    client_app,
    evaluate_message,
    owner_context,
    run_train,
    train_message,
)

KILLED = 137
# A run key, as every run the server starts has: the owner keeps its releases under it.
KEYED = replace(PLAN, run_key="resume-test")


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _die_after(target, name, when=lambda kwargs: True):
    original = getattr(target, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(kwargs):
            os._exit(KILLED)
        return result

    return wrapper


def _round_in_child(fault: str, data_path, ledger_dir, queue) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 42, 1
    if fault == "after-training":
        client_module.train_locally = _die_after(client_module, "train_locally")
    elif fault == "after-charge":
        PrivacyLedger.charge_ledger_before_release = _die_after(
            PrivacyLedger,
            "charge_ledger_before_release",
            when=lambda kwargs: kwargs.get("kind") == "train",  # not the count's charge
        )
    elif fault == "before-keep":  # charged and logged, the update not kept: never sent
        ReleasedUpdates.take_proof = lambda *a, **k: os._exit(KILLED)
    elif fault == "in-keep":  # its proof taken, then killed: a retry cannot reuse it
        ReleasedUpdates.remember = lambda *a, **k: os._exit(KILLED)
    elif fault == "before-reply":
        ReleasedUpdates.remember = _die_after(ReleasedUpdates, "remember")
    reply = run_train(owner_context(data_path, ledger_dir), train_message(KEYED, server_round=1))
    queue.put(reply.content[wire.METRICS]["epsilon"])


@pytest.mark.parametrize(
    "fault", ["after-training", "after-charge", "before-keep", "in-keep", "before-reply", "none"]
)
def test_a_killed_round_never_under_counts(fault, owner_csv, tmp_path):
    # spawn, not fork: a fork of a process whose torch thread pool has run can hang.
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    ledger_dir = tmp_path / "ledgers"
    child = ctx.Process(target=_round_in_child, args=(fault, owner_csv, ledger_dir, queue))
    child.start()
    child.join(120)
    ledger = PrivacyLedger(ledger_dir)
    # raises if the file were corrupt; the count's release is charged before training
    entries = [e for e in ledger.entries() if e.kind == "train"]
    if fault == "none":
        assert child.exitcode == 0
        assert queue.get(timeout=5) == pytest.approx(ledger.epsilon(1e-5))
        assert len(entries) == 1
    elif fault == "after-training":
        assert child.exitcode == KILLED
        assert entries == []  # trained, never charged, nothing released: no privacy spent
    else:
        assert child.exitcode == KILLED
        assert len(entries) == 1  # charged although the update never left: over-counts only
    # A restarted client answers the same round again, the server re-sending it.
    before = ledger.epsilon(1e-5)
    reply = run_train(owner_context(owner_csv, ledger_dir), train_message(KEYED, server_round=1))
    assert not reply.has_error(), reply.error
    # Killed after training: nothing was charged, the retry charges once. Killed after
    # the charge (logged or not), before the keep: nothing left, the retry reuses that
    # charge. Killed after the keep: the kept update is sent again. One charge each way,
    # but for a kill inside the keep, after the attempt took its charge's proof: the
    # retry cannot tell it from an update sent, and is charged anew (over-counts only).
    charged = 2 if fault == "in-keep" else 1
    assert len([e for e in ledger.entries() if e.kind == "train"]) == charged
    assert reply.content[wire.METRICS]["epsilon"] == pytest.approx(ledger.epsilon(1e-5))
    if fault not in ("after-training", "in-keep"):
        assert ledger.epsilon(1e-5) == pytest.approx(before)
    log = verify_log(tmp_path / "audit" / "audit.jsonl")
    assert log.ok, log.problem
    types = [e["type"] for e in log.entries]
    reused = [e for e in log.entries if "reuses-charge-of" in e["data"]]
    assert len(reused) == (fault in ("after-charge", "before-keep"))
    # The auditor's account of the owner says so, and recomputes the one charge's epsilon.
    (audit,) = owner_audits([log])
    assert audit.charges_reused == (fault in ("after-charge", "before-keep"))
    assert len([c for c in audit.charges if c.kind == "train"]) == charged
    assert audit.problems == []
    # (its own accountant: within 2% of the owner's PLD figure)
    assert audit.final_recomputed == pytest.approx(ledger.epsilon(1e-5), rel=0.02)
    assert types.count("update-re-released") == (fault in ("before-reply", "none"))


def test_a_round_kept_and_maybe_sent_is_never_released_again_for_free(owner_csv, tmp_path):
    """Only a round whose kept file never existed is unsent: a kept file that fails
    authentication, or a round pruned after later rounds, is charged as new."""
    ledger_dir = tmp_path / "ledgers"
    context = owner_context(owner_csv, ledger_dir, budget=50.0)
    for server_round in (1, 2, 3):  # round 3's keep prunes round 1's kept file
        assert not run_train(context, train_message(KEYED, server_round)).has_error()
    kept = sorted((ledger_dir).glob("*.releases/*.pt"))
    assert len(kept) == 2
    kept[-1].write_bytes(b"tampered")  # round 3's: it may have left, it cannot be re-sent
    for server_round in (1, 3):
        assert not run_train(context, train_message(KEYED, server_round)).has_error()
    rounds = [e.server_round for e in PrivacyLedger(ledger_dir).entries() if e.kind == "train"]
    assert rounds == [1, 2, 3, 1, 3]


def _answer_in_child(data_path, ledger_dir, queue) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 42, 1
    reply = run_train(owner_context(data_path, ledger_dir), train_message(KEYED, server_round=1))
    queue.put(None if reply.has_error() else wire.arrays_digest(reply.content[wire.ARRAYS])[0])


def test_a_round_sent_twice_at_once_never_releases_two_updates_for_one_charge(owner_csv, tmp_path):
    """A hostile server sends one round to two processes of the owner at once: every
    distinct update that leaves has a charge of its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    ledger_dir = tmp_path / "ledgers"
    children = [
        ctx.Process(target=_answer_in_child, args=(owner_csv, ledger_dir, queue)) for _ in range(2)
    ]
    for child in children:
        child.start()
    digests = {queue.get(timeout=180) for _ in children}
    for child in children:
        child.join(60)
    assert None not in digests
    charges = [e for e in PrivacyLedger(ledger_dir).entries() if e.kind == "train"]
    assert len(charges) == len(digests) == 1  # the second waited, then re-sent the first


@pytest.mark.parametrize(
    "sends",
    [
        # (round, dp): a round re-sent after later ones (its kept file pruned, or never
        # outliving its own keep), and non-private rounds pruning a private round's file
        [(5, True), (6, True), (3, True), (3, True), (3, True)],
        [(1, True), (2, False), (3, False), (1, True), (1, True)],
        [(999_998, True), (999_999, True), (1, True), (1, True)],
        # the claims folder cleared (its files look disposable): no proof, so a new charge
        [(1, True), (2, False), (3, False), ("wipe", None), (1, True), (1, True)],
    ],
)
def test_a_hostile_order_of_rounds_never_gets_two_updates_for_one_charge(
    sends, owner_csv, tmp_path
):
    """Whatever rounds a hostile server re-sends, in whatever order, every distinct
    private update that leaves has a charge of its own (red team, 2026-12-07)."""
    ledger_dir = tmp_path / "ledgers"
    context = owner_context(owner_csv, ledger_dir, budget=80.0)
    context.node_config["allow-no-dp"] = True
    private = set()
    for server_round, dp in sends:
        if server_round == "wipe":
            for marker in ledger_dir.glob("*.claims/*"):
                marker.unlink()
            continue
        reply = run_train(context, train_message(replace(KEYED, dp=dp), server_round))
        assert not reply.has_error(), reply.error
        if dp:
            private.add(wire.arrays_digest(reply.content[wire.ARRAYS])[0])
    charges = [e for e in PrivacyLedger(ledger_dir).entries() if e.kind == "train"]
    assert len(private) <= len(charges)
    (audit,) = owner_audits([verify_log(tmp_path / "audit" / "audit.jsonl")])
    assert len([c for c in audit.charges if c.kind == "train"]) == len(charges)
    assert audit.problems == []  # every release matched to a charge, or re-sent, or non-DP


@pytest.mark.parametrize("server_round", [0, -1, 1_000_000])
def test_a_round_outside_the_owners_range_is_refused(server_round, owner_csv, tmp_path):
    reply = run_train(
        owner_context(owner_csv, tmp_path / "ledgers"), train_message(KEYED, server_round)
    )
    assert reply.has_error()  # the reply says only that the plan does not fit
    log = verify_log(tmp_path / "audit" / "audit.jsonl")
    (refused,) = [e for e in log.entries if e["type"] == "round-refused"]
    assert "server-round" in refused["data"]["reason"]  # the owner's own record says why
    assert not [e for e in PrivacyLedger(tmp_path / "ledgers").entries() if e.kind == "train"]


def test_the_auditor_flags_a_reused_charge_after_its_update_left(owner_csv, tmp_path):
    """Owner code that claimed a reuse after the round's update was released (a second
    update, no charge) is caught by the auditor from the log alone."""
    from fedshield.common.audit_log import AuditLog

    ledger_dir = tmp_path / "ledgers"
    context = owner_context(owner_csv, ledger_dir)
    context.node_config["allow-evaluate"] = True
    assert not run_train(context, train_message(KEYED, 1)).has_error()
    # An evaluate answer's charge in between neither allows nor hides a reuse.
    assert not client_app()(evaluate_message(KEYED), context).has_error()
    path = tmp_path / "audit" / "audit.jsonl"
    charges = [e for e in verify_log(path).entries if e["type"] == "dp-charged"]
    (charged,) = [e for e in charges if e["data"]["kind"] == "train"]
    history = charges[-1]["data"]["ledger-events"]  # the evaluate charge's: unchanged
    (audit,) = owner_audits([verify_log(path)])
    assert audit.problems == []
    actor = charged["actor"]
    forged = {**charged["data"], "ledger-events": history, "reuses-charge-of": 1.0}
    AuditLog(path, actor).append("dp-charged", **forged)
    (audit,) = owner_audits([verify_log(path)])
    assert audit.charges_reused == 1
    assert any("whose update was released" in p for p in audit.problems), audit.problems


def test_the_auditor_flags_a_reuse_that_does_not_match_the_charge(owner_csv, tmp_path, monkeypatch):
    """A reuse must name an unreleased charge of the same round, event and data: one
    claiming a cheaper event (fewer noise, more steps) than was paid is caught."""
    from fedshield.common.audit_log import AuditLog

    def stop(*args, **kwargs):
        raise OSError("the owner stops before keeping")

    monkeypatch.setattr(ReleasedUpdates, "remember", stop)
    context = owner_context(owner_csv, tmp_path / "ledgers")
    assert run_train(context, train_message(KEYED, 1)).has_error()  # charged, never sent
    path = tmp_path / "audit" / "audit.jsonl"
    (charged,) = [e for e in verify_log(path).entries if e["data"].get("kind") == "train"]
    assert charged["data"]["paid-by"]
    forged = {**charged["data"], "steps": 5000, "noise-multiplier": 0.05}
    AuditLog(path, charged["actor"]).append(
        "dp-charged", **forged, **{"reuses-charge-of": charged["data"]["paid-by"]}
    )
    (audit,) = owner_audits([verify_log(path)])
    assert any("names no unreleased charge" in p for p in audit.problems), audit.problems
    # The honest reuse of the same charge passes.
    monkeypatch.undo()
    assert not run_train(context, train_message(KEYED, 1)).has_error()


def test_the_proof_of_an_unsent_charge_is_taken_once(tmp_path):
    """Two retries of one round (the run's lock file deleted under the first, so both
    run): only the first takes the marker's proof; the second is charged anew."""
    from fedshield.common.owner_keys import open_owner_keys

    releases = ReleasedUpdates(tmp_path / "ledgers", "f" * 64, open_owner_keys(tmp_path / "k"))
    attempt = releases.charging("run", 3)
    assert not releases.claim_unsent("run", 3, attempt + "0")  # another attempt's: no
    attempt = releases.charging("run", 3)
    with releases.claimed("run"):
        for lock in (tmp_path / "ledgers").glob("*.claims/*.lock"):
            lock.unlink()
        with releases.claimed("run"):  # a new lock file: nothing excludes the second
            assert releases.claim_unsent("run", 3, attempt)
            assert not releases.claim_unsent("run", 3, attempt)


def test_an_attempt_whose_charge_a_retry_took_is_not_sent(owner_csv, tmp_path, monkeypatch):
    """The lock file deleted while the first attempt sits between its charge and its
    keep: a re-send gets in and reuses the charge; the first attempt then sends nothing
    (red team, 2026-12-07)."""
    context = owner_context(owner_csv, tmp_path / "ledgers")
    charge = client_module.charge_and_audit
    nested, started = [], []

    def charge_then_resend(*args, **kwargs):
        epsilon = charge(*args, **kwargs)
        if not started:
            started.append(True)
            for lock in (tmp_path / "ledgers").glob("*.claims/*.lock"):
                lock.unlink()
            nested.append(run_train(context, train_message(KEYED, 1)))
        return epsilon

    monkeypatch.setattr(client_module, "charge_and_audit", charge_then_resend)
    first = run_train(context, train_message(KEYED, 1))
    (resent,) = nested
    assert not resent.has_error()  # the re-send reused the charge and sent its update
    assert first.has_error()  # the first attempt's proof was taken: nothing sent
    charges = [e for e in PrivacyLedger(tmp_path / "ledgers").entries() if e.kind == "train"]
    assert len(charges) == 1
    (audit,) = owner_audits([verify_log(tmp_path / "audit" / "audit.jsonl")])
    assert audit.problems == [] and audit.updates_released == 1


def test_the_auditor_flags_a_release_under_no_unreleased_charge(owner_csv, tmp_path):
    from fedshield.common.audit_log import AuditLog

    context = owner_context(owner_csv, tmp_path / "ledgers")
    assert not run_train(context, train_message(KEYED, 1)).has_error()
    path = tmp_path / "audit" / "audit.jsonl"
    (released,) = [e for e in verify_log(path).entries if e["type"] == "update-released"]
    log = AuditLog(path, released["actor"])
    for paid_by in (released["data"]["paid-by"], "bogus"):  # again, and an unknown charge
        log.append("update-released", **{**released["data"], "paid-by": paid_by})
    unnamed = {k: v for k, v in released["data"].items() if k != "paid-by"}
    log.append("update-released", **{**unnamed, "update-sha256": "f" * 64})  # naming none
    (audit,) = owner_audits([verify_log(path)])
    assert len([p for p in audit.problems if "an update without a charge" in p]) == 2
    assert len([p for p in audit.problems if "under no charge of its round" in p]) == 1
