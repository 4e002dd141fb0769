"""The privacy ledger: accumulates, persists across restarts, writes atomically, refuses."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from fedshield.client.ledger import OwnerLimits, PrivacyLedger
from fedshield.common.dp_event import DpEvent
from fedshield.common.errors import LedgerCorrupted, PrivacyBudgetExceeded
from fedshield.common.privacy import epsilon_spent

EVENT = DpEvent(noise_multiplier=1.1, sample_rate=0.064, steps=16)
DELTA = 1e-5


def owners_ledger(directory, budget: float = 100.0, cap: float = 0.0) -> PrivacyLedger:
    """The ledger as an owner opens it: with its budget, delta and cap per run."""
    return PrivacyLedger(directory, OwnerLimits(budget, DELTA, cap))


def charge(ledger: PrivacyLedger, server_round: int) -> float:
    return ledger.charge_ledger_before_release(EVENT, run_id=7, server_round=server_round)


def test_epsilon_accumulates_over_rounds_and_is_recomputed_from_all_events(tmp_path):
    ledger = owners_ledger(tmp_path)
    values = [charge(ledger, r) for r in range(1, 5)]
    assert values == sorted(values) and values[0] > 0
    assert values[-1] == pytest.approx(epsilon_spent([EVENT] * 4, DELTA))
    assert [e.server_round for e in ledger.entries()] == [1, 2, 3, 4]


def test_the_ledger_survives_a_restart(tmp_path):
    charge(owners_ledger(tmp_path), 1)
    charge(owners_ledger(tmp_path), 2)
    reopened = PrivacyLedger(tmp_path)
    assert len(reopened.entries()) == 2
    assert reopened.epsilon(DELTA) == pytest.approx(epsilon_spent([EVENT] * 2, DELTA))


def test_ledgers_are_per_owner_folder(tmp_path):
    charge(owners_ledger(tmp_path / "a"), 1)
    assert PrivacyLedger(tmp_path / "b").entries() == []


def test_a_ledger_of_the_earlier_format_is_folded_in_once(tmp_path):
    """Old ledgers (one file per data file) keep counting: all their events are charged."""
    import hashlib

    legacy = {
        "format": 1,
        "fingerprint": "ab" * 32,
        "num-records": 2000,
        "events": [
            {**EVENT.as_dict(), "delta": DELTA, "run-id": 1, "server-round": r, "recorded-at": r}
            for r in (1, 2)
        ],
    }
    canonical = json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode()
    (tmp_path / f"{'ab' * 32}.json").write_text(
        json.dumps({"body": legacy, "checksum": hashlib.sha256(canonical).hexdigest()})
    )
    ledger = owners_ledger(tmp_path)
    assert [e.data_fingerprint for e in ledger.entries()] == ["ab" * 32] * 2
    charge(ledger, 3)
    state = ledger.state()
    assert len(state.entries) == 3 and state.migrated_from == [f"{'ab' * 32}.json"]
    assert ledger.epsilon(DELTA) == pytest.approx(epsilon_spent([EVENT] * 3, DELTA))


def test_budget_changes_are_recorded_with_old_and_new_values(tmp_path):
    first = owners_ledger(tmp_path, 3.0).record_budget()
    assert first is not None and (first.old, first.new) == (None, 3.0)
    assert owners_ledger(tmp_path, 3.0).record_budget() is None
    raised = owners_ledger(tmp_path, 5.0).record_budget()
    assert raised is not None and (raised.old, raised.new) == (3.0, 5.0)
    assert [(b.old, b.new) for b in PrivacyLedger(tmp_path).state().budgets] == [
        (None, 3.0),
        (3.0, 5.0),
    ]


def test_an_owner_cap_per_run_limits_what_one_run_spends(tmp_path):
    one_round = epsilon_spent([EVENT], DELTA)
    cap = (one_round + epsilon_spent([EVENT] * 2, DELTA)) / 2
    ledger = owners_ledger(tmp_path, cap=cap)
    ledger.charge_ledger_before_release(EVENT, run_id=1, server_round=1)
    with pytest.raises(PrivacyBudgetExceeded, match="cap per run"):
        ledger.check_budget(EVENT, run_id=1)
    # another run starts from its own cap, within the same total budget
    assert ledger.check_budget(EVENT, run_id=2) > one_round


def test_preflight_refuses_a_round_that_would_pass_the_budget(tmp_path):
    one_round = epsilon_spent([EVENT], DELTA)
    two_rounds = epsilon_spent([EVENT] * 2, DELTA)
    ledger = owners_ledger(tmp_path, (one_round + two_rounds) / 2)
    assert ledger.check_budget(EVENT) == pytest.approx(one_round)
    charge(ledger, 1)
    with pytest.raises(
        PrivacyBudgetExceeded, match=r"would raise epsilon from .* over the owner's budget"
    ):
        ledger.check_budget(EVENT)
    with pytest.raises(PrivacyBudgetExceeded, match="another run charged"):
        charge(ledger, 2)
    assert len(ledger.entries()) == 1


def test_a_tampered_or_damaged_ledger_is_refused_with_instructions(tmp_path):
    ledger = owners_ledger(tmp_path)
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
    ledger = owners_ledger(tmp_path / "ledgers")
    charge(ledger, 1)
    assert oct(ledger.path.stat().st_mode & 0o777) == "0o600"


def _charge_forever(directory: str, ready) -> None:
    ledger = owners_ledger(directory)
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
        entries = PrivacyLedger(tmp_path).entries()
        assert len(entries) >= seen
        seen = len(entries)
    assert seen > 0


def test_a_ledger_opened_to_be_read_cannot_charge(tmp_path):
    """The owner's limits come with the ledger when the owner opens it; a reader (ledger
    show, an auditor) has none and cannot charge or check by mistake."""
    charge(owners_ledger(tmp_path), 1)
    reader = PrivacyLedger(tmp_path)
    assert len(reader.entries()) == 1
    with pytest.raises(ValueError, match="opened to be read"):
        reader.check_budget(EVENT)
