"""The audit report's pure parts, on small logs built in process (no Flower, no subprocess):
owner summaries, independent recomputation, budget changes, cross-anchors, requirements."""

from __future__ import annotations

import pytest

from fedshield.audit.report import (
    TOLERANCE,
    _anchors,
    _owner_audits,
    _requirements,
    build_report,
    independent_epsilon,
)
from fedshield.audit.verify import Verification, verify_log
from fedshield.common.audit_events import Event, LoggedDpEvent
from fedshield.common.audit_log import AuditLog
from fedshield.common.privacy import DpEvent, epsilon_spent

DELTA = 1e-5
EVENT = LoggedDpEvent(noise_multiplier=1.1, sample_rate=0.05, steps=20)


def charged(history: list[LoggedDpEvent], claimed: float | None = None, budget: float = 5.0):
    events = [DpEvent(e.noise_multiplier, e.sample_rate, e.steps) for e in history]
    return {
        "server-round": len(history),
        "kind": "train",
        "ledger-id": "L1",
        "data-fingerprint": "f" * 64,
        "noise-multiplier": history[-1].noise_multiplier,
        "sample-rate": history[-1].sample_rate,
        "steps": history[-1].steps,
        "delta": DELTA,
        "epsilon-after": epsilon_spent(events, DELTA) if claimed is None else claimed,
        "epsilon-budget": budget,
        "ledger-events": [e.as_entry() for e in history],
    }


def owner_log(tmp_path, *entries: tuple[str, dict]) -> Verification:
    log = AuditLog(tmp_path / "owner" / "audit.jsonl", actor="hospital-a")
    for event_type, data in entries:
        log.append(event_type, **data)
    log.checkpoint("test")
    return verify_log(tmp_path / "owner" / "audit.jsonl")


def test_the_independent_accountant_agrees_with_the_owners_within_tolerance():
    events = [EVENT] * 3
    ours = epsilon_spent(
        [DpEvent(e.noise_multiplier, e.sample_rate, e.steps) for e in events], DELTA
    )
    assert independent_epsilon(events, DELTA) == pytest.approx(ours, rel=TOLERANCE)


def test_old_positional_dp_events_still_read_back():
    assert LoggedDpEvent.from_entry([1.1, 0.05, 20]) == EVENT
    assert LoggedDpEvent.from_entry(EVENT.as_entry()) == EVENT


def test_an_honest_owner_summary_has_no_problems_and_shows_budget_changes(tmp_path):
    log = owner_log(
        tmp_path,
        (Event.BUDGET_CHANGED, {"old-budget": None, "new-budget": 5.0}),
        (Event.DP_CHARGED, charged([EVENT])),
        (Event.DP_CHARGED, charged([EVENT, EVENT])),
    )
    (owner,) = _owner_audits(log)
    assert owner.ok, owner.problems
    assert owner.rounds == [1, 2] and owner.final_claimed == pytest.approx(
        owner.final_recomputed, rel=0.01
    )
    assert owner.budget_changes and "None -> 5.0" in owner.budget_changes[0]


@pytest.mark.parametrize(
    "second, problem",
    [
        (charged([EVENT, EVENT], claimed=0.01), "claimed epsilon"),  # under-claimed
        (charged([EVENT, EVENT], budget=0.1), "exceeds the budget"),
        (charged([LoggedDpEvent(9.0, 0.05, 20), EVENT]), "ledger history differs"),  # rewritten
    ],
)
def test_a_dishonest_or_over_budget_owner_is_flagged(tmp_path, second, problem):
    log = owner_log(tmp_path, (Event.DP_CHARGED, charged([EVENT])), (Event.DP_CHARGED, second))
    (owner,) = _owner_audits(log)
    assert any(problem in p for p in owner.problems), owner.problems


def test_anchors_match_released_and_received_updates_and_flag_a_missing_one(tmp_path):
    client = owner_log(
        tmp_path, (Event.UPDATE_RELEASED, {"server-round": 1, "update-sha256": "ab"})
    )
    released = next(e for e in client.entries if e["type"] == Event.UPDATE_RELEASED)
    server_log = AuditLog(tmp_path / "server" / "audit.jsonl", actor="server")
    server_log.append(Event.RUN_START, config={}, transport="tls")
    for head in (released["hash"], "0" * 64):
        server_log.append(
            Event.UPDATE_RECEIVED,
            **{
                "server-round": 1,
                "owner": "hospital-a",
                "update-sha256": "ab",
                "owner-audit-head": head,
            },
        )
    server_log.checkpoint("test")
    server = verify_log(tmp_path / "server" / "audit.jsonl")
    anchors = _anchors([server], [client])
    assert anchors["matched"] == 1 and len(anchors["missing"]) == 1


def test_requirements_fail_dp_on_a_non_private_round_and_count_foreign_apps(tmp_path):
    log = owner_log(
        tmp_path,
        (Event.DP_CHARGED, charged([EVENT])),
        (Event.NON_PRIVATE_ROUND, {"server-round": 2}),
        (Event.FOREIGN_APP_REFUSED, {"run-id": 7, "clientapp": "evil:app"}),
    )
    rows = {
        r.name: r
        for r in _requirements([log], [], _owner_audits(log), {"matched": 0, "missing": []})
    }
    assert rows["Privacy of individual records (DP)"].status == "fail"
    assert "NON-PRIVATE" in rows["Privacy of individual records (DP)"].evidence
    assert "foreign apps refused at owners: 1" in rows["Authentication and access control"].evidence


def test_build_report_reads_logs_from_disk(tmp_path):
    owner_log(tmp_path, (Event.DP_CHARGED, charged([EVENT])))
    report = build_report([tmp_path / "owner" / "audit.jsonl"])
    assert [o["owner"] for o in report["owners"]] == ["hospital-a"]
