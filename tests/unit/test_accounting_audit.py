"""The owner's accounting against the auditor's, at the edges a red-team review found:
honest figures over many subsampled steps or past PLD's range pass the audit, and a
crafted log cannot crash or exhaust the auditor."""

from __future__ import annotations

from fedshield.audit.epsilon import claim_problem
from fedshield.audit.owners import owner_audits
from fedshield.audit.verify import verify_log
from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.common.dp_event import DpEvent
from fedshield.common.privacy import (
    ACCOUNTANT,
    PLD_MAX_STEPS,
    accountant_used,
    epsilon_spent,
)

DELTA = 1e-5


def _honest_claim(sigma: float, q: float, steps: int) -> str | None:
    events = [DpEvent(sigma, q, steps)]
    claimed, used = epsilon_spent(events, DELTA), accountant_used(events, DELTA)
    return claim_problem(claimed, [DpEvent(sigma, q, steps)], DELTA, used)[2]


def test_an_honest_pld_claim_over_many_subsampled_steps_passes_the_audit():
    # 40 rounds of 1,000 steps at sample rate 0.001, sigma 1: pessimistic PLD at 1e-3
    # nats over-states by 4% here, beyond the audit's 1%; the owner uses 1e-4 past
    # 1,000 subsampled steps.
    assert _honest_claim(1.0, 0.001, 40_000) is None


def test_an_honest_claim_past_pld_max_steps_passes_the_audit():
    # Past PLD_MAX_STEPS the owner charges by RDP and names it; the auditor checks it
    # by RDP (a "pld" label there is flagged below).
    assert accountant_used([DpEvent(1000.0, 1.0, PLD_MAX_STEPS + 1)], DELTA) == "rdp"
    assert _honest_claim(1000.0, 1.0, PLD_MAX_STEPS + 1) is None
    claimed = epsilon_spent([DpEvent(1000.0, 1.0, PLD_MAX_STEPS + 1)], DELTA)
    events = [DpEvent(1000.0, 1.0, PLD_MAX_STEPS + 1)]
    assert "beyond PLD's range" in claim_problem(claimed, events, DELTA, ACCOUNTANT)[2]


def test_a_crafted_step_count_cannot_crash_the_auditor(tmp_path):
    # A log entry with 10^12 steps: Opacus's PRV tries to allocate petabytes
    # (MemoryError, the whole report fails); 2e6 steps takes > 20 GB and gets OOM-killed.
    history = [DpEvent(50.0, 0.01, 10**12)]
    entry = {
        "server-round": 1,
        "kind": "train",
        "ledger-id": "L1",
        "data-fingerprint": "f" * 64,
        "noise-multiplier": 50.0,
        "sample-rate": 0.01,
        "steps": 10**12,
        "delta": DELTA,
        "accountant": ACCOUNTANT,
        "epsilon-after": 1.0,
        "epsilon-budget": 5.0,
        "ledger-events": [e.as_entry() for e in history],
    }
    log = AuditLog(tmp_path / "owner" / "audit.jsonl", actor="hospital-a")
    log.append(Event.DP_CHARGED, **entry)
    log.checkpoint("test")
    [owner] = owner_audits([verify_log(tmp_path / "owner" / "audit.jsonl")])
    assert not owner.ok and "beyond PLD's range" in owner.problems[0]  # not a crash
