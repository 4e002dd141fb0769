"""The privacy unit in the audit report and in `fedshield ledger show` (issue 25): each
owner's unit named, epsilon per unit, a unit-level owner's per-record figure (replace-one
at 2C, recomputed by the audit), a record-level owner's group-privacy warning, a ledger
that switches unit flagged, and old logs read as per record. Logs are written in process
by the real AuditLog; ledgers by the real PrivacyLedger."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedshield.audit.owners import owner_audits
from fedshield.audit.render import render_html
from fedshield.audit.report import build_report
from fedshield.audit.verify import verify_log
from fedshield.cli.app import app
from fedshield.client.ledger import OwnerLimits, PrivacyLedger
from fedshield.common import wire
from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.common.dp_event import DpEvent
from fedshield.common.group_privacy import group_epsilon, record_epsilon_of_unit_run
from fedshield.common.privacy import ACCOUNTANT, REPLACE_ONE, accounted_event, epsilon_spent

DELTA = 1e-5
COUNT = DpEvent(noise_multiplier=20.0, sample_rate=1.0, steps=1)
TRAIN = DpEvent(noise_multiplier=3.0, sample_rate=0.1, steps=5)


def charge(history: list[DpEvent], kind: str = "train", **fields) -> dict:
    """A ``dp-charged`` entry as client/charge.py writes it; ``fields`` add or replace
    (None: leave the field out, as logs before it did)."""
    entry = {
        "server-round": len(history),
        "kind": kind,
        "ledger-id": "L1",
        "data-fingerprint": "f" * 64,
        "noise-multiplier": history[-1].noise_multiplier,
        "sample-rate": history[-1].sample_rate,
        "steps": history[-1].steps,
        "delta": DELTA,
        "relation": "add-remove",
        "privacy-unit": "author",
        "accountant": ACCOUNTANT,
        "epsilon-after": epsilon_spent(history, DELTA),
        "epsilon-budget": 50.0,
        "ledger-events": [e.as_entry() for e in history],
        **fields,
    }
    return {k: v for k, v in entry.items() if v is not None}


def write_log(tmp_path, *entries: tuple[str, dict]):
    path = tmp_path / "owner" / "audit.jsonl"
    log = AuditLog(path, actor="hospital-a")
    for event_type, data in entries:
        log.append(event_type, **data)
    log.checkpoint("test")
    return verify_log(path)


def unit_run(tmp_path):
    """A unit-level owner: its round start, its count of authors, two training rounds."""
    return write_log(
        tmp_path,
        (
            Event.ROUND_START,
            {"data-fingerprint": "f" * 64, "records": 400, "privacy-unit": "author", "units": 131},
        ),
        (Event.DP_CHARGED, charge([COUNT], kind="count")),
        (Event.DP_CHARGED, charge([COUNT, TRAIN])),
        (Event.DP_CHARGED, charge([COUNT, TRAIN, TRAIN])),
    )


def test_a_unit_level_owner_is_named_by_its_unit_with_its_per_record_figure(tmp_path):
    (owner,) = owner_audits([unit_run(tmp_path)])
    assert owner.ok, owner.problems
    assert owner.privacy_unit == "author" and owner.per_unit == "per author"
    assert [c.privacy_unit for c in owner.charges] == ["author"] * 3
    assert owner.data_files[0].units == 131
    # per author: the claim, judged (owner.ok); per record: replace-one at 2C, by the
    # audit's accountant, agreeing with the owners' twin
    owners_figure = record_epsilon_of_unit_run([TRAIN, TRAIN], [COUNT], DELTA)
    assert owner.final_per_record == pytest.approx(owners_figure, rel=0.01)
    # a count of authors moves by at most 1 for a record, as for an author
    assert owner.charges[0].epsilon_per_record == pytest.approx(owner.charges[0].epsilon_recomputed)
    assert "replace-one bound at 2C" in owner.unit_text


def test_the_report_shows_epsilon_per_unit_and_the_per_record_bound(tmp_path):
    unit_run(tmp_path)
    report = build_report([tmp_path / "owner" / "audit.jsonl"])
    (owner,) = report["owners"]
    assert owner["privacy_unit"] == "author" and owner["per_record_bound"]
    assert owner["charges"][-1]["privacy_unit"] == "author"
    dp = next(r for r in report["requirements"] if r["name"].startswith("Privacy"))
    assert "epsilon per author (1 owner)" in dp["evidence"]
    page = render_html(report)
    for text in ("per author", "replace-one bound at 2C", "Privacy unit", "in 131 units"):
        assert text in page, text


def test_replace_one_training_is_already_at_2c_per_record(tmp_path):
    """A unit-level owner that declared its count public charges sigma/2 at rate 1: one
    record moves its unit's sum by 2C, as a whole unit does, so the figures agree."""
    accounted = accounted_event(TRAIN, REPLACE_ONE)
    log = write_log(
        tmp_path,
        (Event.DP_CHARGED, charge([accounted], relation=REPLACE_ONE)),
        (Event.DP_CHARGED, charge([accounted, accounted], relation=REPLACE_ONE)),
    )
    (owner,) = owner_audits([log])
    assert owner.ok, owner.problems
    assert owner.final_per_record == pytest.approx(owner.final_recomputed, rel=1e-6)


def test_a_ledger_that_switches_unit_is_a_problem(tmp_path):
    log = write_log(
        tmp_path,
        (Event.DP_CHARGED, charge([TRAIN], **{"privacy-unit": "record"})),
        (Event.DP_CHARGED, charge([TRAIN, TRAIN])),  # per author, on the same ledger
    )
    (owner,) = owner_audits([log])
    assert any(
        "round 2: charged per 'author' on a ledger charged per 'record'" in p
        for p in owner.problems
    ), owner.problems
    assert owner.privacy_units == ["record", "author"] and "mixed" in owner.per_unit
    assert not owner.ok
    report = build_report([tmp_path / "owner" / "audit.jsonl"])
    assert not report["ok"] and "mixed units on one ledger" in render_html(report)


def test_a_log_from_before_units_reads_as_per_record(tmp_path):
    old = {"privacy-unit": None, "relation": None}
    log = write_log(
        tmp_path,
        (Event.ROUND_START, {"data-fingerprint": "f" * 64, "records": 400}),
        (Event.DP_CHARGED, charge([TRAIN], **old)),
        (Event.DP_CHARGED, charge([TRAIN, TRAIN], **old)),
    )
    (owner,) = owner_audits([log])
    assert owner.ok, owner.problems
    assert owner.privacy_unit == "record" and owner.per_unit == "per record"
    assert owner.final_per_record is None and owner.group_privacy is None
    assert owner.unit_text == "record: epsilon protects one record"


def test_an_owner_refused_before_any_charge_is_named_by_its_round_starts_unit(tmp_path):
    refused = {"server-round": 1, "code": wire.ERROR_BUDGET_EXCEEDED, "reason": "over budget"}
    log = write_log(
        tmp_path,
        (Event.ROUND_START, {"server-round": 1, "privacy-unit": "patient"}),
        (Event.ROUND_REFUSED, refused),
    )
    (owner,) = owner_audits([log])
    assert owner.privacy_unit == "patient" and owner.per_unit == "per patient"


def group_warning(per_record: float, largest: float, server_round: int) -> dict:
    return {
        "server-round": server_round,
        "privacy-unit": "author",
        "largest-unit-records": 5,
        "epsilon-per-record": per_record,
        "epsilon-for-largest-unit": largest,
        "delta": DELTA,
        "warning": "record-level DP on data with units 'author': ...",
    }


def test_a_record_level_owner_on_unit_data_shows_its_warning_for_the_largest_unit(tmp_path):
    record = {"privacy-unit": "record"}
    first, second = charge([TRAIN], **record), charge([TRAIN, TRAIN], **record)
    write_log(
        tmp_path,
        (Event.DP_CHARGED, first),
        (Event.GROUP_PRIVACY_WARNING, group_warning(first["epsilon-after"], 9.5, 1)),
        (Event.DP_CHARGED, second),
        (Event.GROUP_PRIVACY_WARNING, group_warning(second["epsilon-after"], 12.25, 2)),
    )
    report = build_report([tmp_path / "owner" / "audit.jsonl"])
    (owner,) = report["owners"]
    assert owner["ok"], owner["problems"]
    assert owner["privacy_unit"] == "record" and owner["epsilon_per_record"] is None
    assert [w["epsilon_for_largest_unit"] for w in owner["group_privacy"]] == [9.5, 12.25]
    assert (
        "the 'author' with 5 records is protected only at epsilon 12.2500" in (owner["unit_text"])
    )
    dp = next(r for r in report["requirements"] if r["name"].startswith("Privacy"))
    assert "hospital-a: the 'author' with 5 records at epsilon 12.25" in dp["evidence"]
    page = render_html(report)
    assert "largest author (5 records): 12.2500 (group privacy)" in page
    assert "Group privacy" in page


def test_a_malformed_group_warning_is_a_problem_not_a_crash(tmp_path):
    bad = {**group_warning(1.0, 2.0, 1), "epsilon-for-largest-unit": "lots"}
    log = write_log(
        tmp_path,
        (Event.DP_CHARGED, charge([TRAIN], **{"privacy-unit": "record"})),
        (Event.GROUP_PRIVACY_WARNING, bad),
    )
    (owner,) = owner_audits([log])
    assert any("group-privacy warning is malformed" in p for p in owner.problems)


def show(ledger_dir, *extra: str) -> str:
    result = CliRunner().invoke(app, ["ledger", "show", "--ledger-dir", str(ledger_dir), *extra])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_ledger_show_names_a_unit_ledger_and_its_per_record_figure(tmp_path):
    ledger = PrivacyLedger(tmp_path, OwnerLimits(50.0, DELTA))
    ledger.charge_ledger_before_release(COUNT, 5, 1, kind="count", unit="author")
    for server_round in (1, 2):
        ledger.charge_ledger_before_release(TRAIN, 5, server_round, unit="author")
    plain = show(tmp_path)
    assert "privacy unit: author (epsilon protects one 'author'" in plain
    assert f"epsilon spent per author at delta 1e-05: {ledger.epsilon(DELTA):.4f}" in plain
    assert "one record (" not in plain
    per_record = record_epsilon_of_unit_run([TRAIN, TRAIN], [COUNT], DELTA)
    grouped = show(tmp_path, "--group-size", "3")
    assert f"one record (or any 3 records of one 'author'): epsilon {per_record:.4f}" in grouped
    assert "replace-one bound at 2C" in grouped


def test_ledger_show_gives_a_record_ledger_its_group_privacy_epsilon(tmp_path):
    ledger = PrivacyLedger(tmp_path, OwnerLimits(50.0, DELTA))
    for server_round in (1, 2):
        ledger.charge_ledger_before_release(TRAIN, 5, server_round)
    plain = show(tmp_path)
    assert "privacy unit: record" in plain and "epsilon spent per record" in plain
    grouped = group_epsilon([TRAIN, TRAIN], DELTA, 5)
    assert grouped > ledger.epsilon(DELTA)
    text = show(tmp_path, "--group-size", "5")
    assert f"a unit of 5 records: epsilon {grouped:.4f} at delta 1e-05" in text
