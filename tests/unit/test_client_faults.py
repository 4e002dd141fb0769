"""Kill the ClientApp at points around training and the ledger write: the ledger is never
corrupt, never rolls back, and never records less epsilon than left the machine."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from fedshield.client import app as client_module
from fedshield.client.ledger import PrivacyLedger
from fedshield.client.releases import ReleasedUpdates
from fedshield.common import wire
from tests.support.client_app import owner_context, run_train, train_message

KILLED = 137


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
    elif fault == "before-reply":
        ReleasedUpdates.remember = _die_after(ReleasedUpdates, "remember")
    reply = run_train(owner_context(data_path, ledger_dir), train_message(server_round=1))
    queue.put(reply.content[wire.METRICS]["epsilon"])


@pytest.mark.parametrize("fault", ["after-training", "after-charge", "before-reply", "none"])
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
    # A restarted client answers the same round again; it is never charged below what
    # the first attempt recorded.
    before = ledger.epsilon(1e-5)
    reply = run_train(owner_context(owner_csv, ledger_dir), train_message(server_round=1))
    assert not reply.has_error(), reply.error
    assert ledger.epsilon(1e-5) >= before
