"""The privacy ledger: accumulates, persists across restarts, writes atomically, refuses."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import pytest
from fedshield.client.ledger import PrivacyLedger
from fedshield.common.errors import LedgerCorrupted, PrivacyBudgetExceeded
from fedshield.common.privacy import DpEvent, epsilon_spent

EVENT = DpEvent(noise_multiplier=1.1, sample_rate=0.064, steps=16)
DELTA = 1e-5


def charge(ledger: PrivacyLedger, server_round: int, budget: float = 100.0) -> float:
    return ledger.charge_ledger_before_release(
        EVENT, budget, DELTA, run_id=7, server_round=server_round
    )


def test_epsilon_accumulates_over_rounds_and_is_recomputed_from_all_events(tmp_path):
    ledger = PrivacyLedger(tmp_path, "f" * 64, 2000)
    values = [charge(ledger, r) for r in range(1, 5)]
    assert values == sorted(values) and values[0] > 0
    assert values[-1] == pytest.approx(epsilon_spent([EVENT] * 4, DELTA))
    assert [e.server_round for e in ledger.entries()] == [1, 2, 3, 4]


def test_the_ledger_survives_a_restart(tmp_path):
    charge(PrivacyLedger(tmp_path, "a" * 64, 2000), 1)
    charge(PrivacyLedger(tmp_path, "a" * 64, 2000), 2)
    reopened = PrivacyLedger(tmp_path, "a" * 64, 2000)
    assert len(reopened.entries()) == 2
    assert reopened.epsilon(DELTA) == pytest.approx(epsilon_spent([EVENT] * 2, DELTA))


def test_ledgers_are_per_data_set(tmp_path):
    charge(PrivacyLedger(tmp_path, "a" * 64, 2000), 1)
    assert PrivacyLedger(tmp_path, "b" * 64, 2000).entries() == []


def test_preflight_refuses_a_round_that_would_pass_the_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path, "c" * 64, 2000)
    one_round = epsilon_spent([EVENT], DELTA)
    two_rounds = epsilon_spent([EVENT] * 2, DELTA)
    budget = (one_round + two_rounds) / 2
    assert ledger.check_budget(EVENT, budget, DELTA) == pytest.approx(one_round)
    charge(ledger, 1, budget)
    with pytest.raises(
        PrivacyBudgetExceeded, match=r"would raise epsilon from .* over the owner's budget"
    ):
        ledger.check_budget(EVENT, budget, DELTA)
    with pytest.raises(PrivacyBudgetExceeded, match="withheld"):
        charge(ledger, 2, budget)
    assert len(ledger.entries()) == 1


def test_a_tampered_or_damaged_ledger_is_refused_with_instructions(tmp_path):
    ledger = PrivacyLedger(tmp_path, "d" * 64, 2000)
    charge(ledger, 1)
    charge(ledger, 2)
    data = json.loads(ledger.path.read_text())
    data["body"]["events"].pop()  # someone deletes a round to free budget
    ledger.path.write_text(json.dumps(data))
    with pytest.raises(LedgerCorrupted, match="checksum mismatch.*do not delete it"):
        ledger.epsilon(DELTA)
    ledger.path.write_text('{"body": {"events": [')
    with pytest.raises(LedgerCorrupted, match="unreadable privacy ledger"):
        charge(ledger, 3)


def test_the_file_is_private_to_the_owner(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledgers", "e" * 64, 2000)
    charge(ledger, 1)
    assert oct(ledger.path.stat().st_mode & 0o777) == "0o600"


def _charge_forever(directory: str, ready) -> None:
    ledger = PrivacyLedger(directory, "9" * 64, 2000)
    ready.set()
    server_round = 0
    while True:
        server_round += 1
        charge(ledger, server_round)


def test_a_writer_killed_mid_write_never_leaves_a_corrupt_or_shorter_ledger(tmp_path):
    # Kill a process that charges in a tight loop at random moments; after each kill the
    # ledger must parse, verify and hold at least as many events as before.
    ctx = mp.get_context("fork")
    seen = 0
    for attempt in range(8):
        ready = ctx.Event()
        proc = ctx.Process(target=_charge_forever, args=(str(tmp_path), ready))
        proc.start()
        ready.wait(10)
        time.sleep(0.05 + 0.037 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        entries = PrivacyLedger(tmp_path, "9" * 64, 2000).entries()
        assert len(entries) >= seen
        seen = len(entries)
    assert seen > 0
