"""End to end: `fedshield audit empirical` runs a real Flower simulation (ServerApp and the
owners' real ClientApps on Ray) on a slice of IMDB with canaries, and its bound is checked
against the claim: well above zero without DP, below the claim with the product's DP,
above the claim when a test-only build switches the noise off while the ledger still
charges. The report carries the result and fails on a bound above the claim. With a
privacy unit, canary units of a correct unit-level run stay below the claim per unit, and
a test-only build that clips each record while charging per unit is caught."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.support.cli import FEDSHIELD
from tests.support.planted import NOISE_OFF, UNITS_CLIPPED_PER_RECORD, planted_build

pytestmark = pytest.mark.slow

SMALL = ["--max-records", "600", "--clients", "2", "--rounds", "3", "--canaries", "200"]
# Canary units of 20 records on reviews that come three to an author: the smallest
# settings measured (2026-12-07) to show a unit clipped record by record. The learning
# rate is low so that a canary unit's fit does not saturate within a round: its trace
# then grows with how far its records move the model (kC under the defect, C if not).
UNITS = [  # the default of 20 records per canary unit (asserted below)
    *["--privacy-unit", "author", "--max-records", "600"],
    *["--clients", "2", "--rounds", "3", "--canaries", "200", "--learning-rate", "0.5"],
]


def audit_empirical(
    out: Path, *args: str, env_extra: dict | None = None, settings: list[str] = SMALL
):
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        **(env_extra or {}),
    }
    return subprocess.run(
        [*FEDSHIELD, "audit", "empirical", *settings, "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def result(out: Path) -> dict:
    return json.loads((out / "empirical.json").read_text())


def budget_report(run: Path, dest: Path, empirical: Path) -> subprocess.CompletedProcess:
    command = [*FEDSHIELD, "audit", "report", str(run / "audit"), "--out", str(dest)]
    return subprocess.run(
        [*command, "--empirical", str(empirical)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "run"
    proc = audit_empirical(out, "--epsilon", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_without_dp_the_bound_is_well_above_zero(tmp_path):
    out = tmp_path / "run"
    proc = audit_empirical(out, "--no-dp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = result(out)
    bound = summary["lower-bound"]
    assert summary["claimed-epsilon"] is None and not summary["dp"]
    assert bound["epsilon_lower_bound"] > 1.0, bound
    assert bound["correct"] > 0.9 * bound["guesses"]
    assert "empirical lower bound" in proc.stdout


def test_with_dp_the_bound_stays_below_the_claim(private_run):
    out, proc = private_run
    summary = result(out)
    bound = summary["lower-bound"]
    assert summary["dp"] and summary["claimed-epsilon"] == pytest.approx(1.0, abs=0.01)
    # The independent recomputation agrees with the claim (audit/epsilon.py).
    assert summary["recomputed-epsilon"] == pytest.approx(summary["claimed-epsilon"], rel=0.02)
    assert bound["epsilon_lower_bound"] < summary["claimed-epsilon"]
    assert not summary["exceeds-claim"]
    # Every owner's update of every round was scored; half the canaries, give or take.
    assert summary["updates-scored"] == 2 * 3
    assert 60 < bound["included"] < 140 and bound["canaries"] == 200
    for line in ("claimed", "recomputed", "empirical lower bound", "95%"):
        assert line in proc.stdout
    # The canaries file holds every canary with its coin; the owners saw only theirs.
    canaries = json.loads((out / "canaries" / "canaries.json").read_text())["canaries"]
    assert sum(c["included"] for c in canaries) == bound["included"]


def test_a_planted_defect_is_caught(tmp_path):
    """Noise off in a test-only build: the ledgers still claim epsilon 0.5, the
    arithmetic audit still passes, and the empirical bound exposes the leak."""
    out = tmp_path / "run"
    planted = planted_build(tmp_path / "site", NOISE_OFF)
    proc = audit_empirical(out, "--epsilon", "0.5", env_extra=planted)
    assert (out / "empirical.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = result(out)
    assert summary["claimed-epsilon"] == pytest.approx(0.5, abs=0.01)
    assert summary["recomputed-epsilon"] == pytest.approx(0.5, rel=0.02)
    assert summary["exceeds-claim"], summary["lower-bound"]
    assert summary["lower-bound"]["epsilon_lower_bound"] > 2 * summary["claimed-epsilon"]
    assert proc.returncode == 1 and "LEAKS MORE THAN CLAIMED" in proc.stdout
    # The budget report, given the empirical result, fails and says why.
    report_dir = tmp_path / "report"
    proc = budget_report(out, report_dir, out / "empirical.json")
    assert proc.returncode == 1
    report = json.loads((report_dir / "report.json").read_text())
    check = report["empirical"]["check"]
    assert check["exceeds-claim"] and not check["ok"] and not report["ok"]
    assert check["run-in-these-logs"] == summary["run-keys"] and not check["problems"]
    assert check["claimed-from-logs"] == pytest.approx(summary["claimed-epsilon"])
    assert "LEAKS MORE THAN CLAIMED" in (report_dir / "report.html").read_text()

    # The report does not take the file's word: forging the claim, the bound or the run
    # does not turn this failing test into a pass.
    honest = json.loads((out / "empirical.json").read_text())
    forgeries = {
        "no claim": {**honest, "claimed-epsilon": None},
        "huge claim": {**honest, "claimed-epsilon": 1e9, "exceeds-claim": False},
        "small bound": {
            **honest,
            "lower-bound": {**honest["lower-bound"], "epsilon_lower_bound": 0.0},
        },
    }
    for name, forged in forgeries.items():
        path = tmp_path / f"forged-{name.replace(' ', '-')}.json"
        path.write_text(json.dumps(forged))
        proc = budget_report(out, tmp_path / f"report-{name.replace(' ', '-')}", path)
        assert proc.returncode == 1, name


def test_the_report_shows_a_passing_empirical_test(private_run, tmp_path):
    out, _ = private_run
    proc = budget_report(out, tmp_path, out / "empirical.json")
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] and report["empirical"]["lower-bound"]["canaries"] == 200
    check = report["empirical"]["check"]
    assert check["ok"] and check["bound-recomputed"] == pytest.approx(
        result(out)["lower-bound"]["epsilon_lower_bound"], rel=1e-6, abs=1e-9
    )
    page = (tmp_path / "report.html").read_text()
    assert "Empirical privacy test" in page and "does not prove it" in page


@pytest.mark.parametrize(
    "change,refused",
    [
        ({"run-keys": ["deadbeef"]}, False),  # another run's result: the report fails
        ({"lower-bound": "NaN"}, True),
        ({"dp": "yes"}, True),
    ],
)
def test_a_result_of_another_run_or_a_broken_file_does_not_pass(
    private_run, tmp_path, change, refused
):
    out, _ = private_run
    honest = json.loads((out / "empirical.json").read_text())
    path = tmp_path / "empirical.json"
    path.write_text(json.dumps({**honest, **change}))
    proc = budget_report(out, tmp_path / "report", path)
    assert proc.returncode == (2 if refused else 1)  # 2: bad input, 1: the report fails
    assert ("Traceback" not in proc.stderr) and (refused == (not (tmp_path / "report").exists()))


def test_a_nan_bound_is_refused(private_run, tmp_path):
    out, _ = private_run
    text = (out / "empirical.json").read_text()
    honest = json.loads(text)
    bound = honest["lower-bound"]["epsilon_lower_bound"]
    path = tmp_path / "empirical.json"
    path.write_text(
        text.replace(f'"epsilon_lower_bound": {json.dumps(bound)}', '"epsilon_lower_bound": NaN', 1)
    )
    proc = budget_report(out, tmp_path / "report", path)
    assert proc.returncode == 2 and "epsilon_lower_bound" in proc.stdout + proc.stderr


def test_a_file_that_is_not_an_empirical_result_is_refused(tmp_path, private_run):
    out, _ = private_run
    bogus = tmp_path / "empirical.json"
    bogus.write_text(json.dumps({"format": "something else"}))
    proc = budget_report(out, tmp_path / "r", bogus)
    assert proc.returncode != 0 and "fedshield-empirical-audit/1" in proc.stdout + proc.stderr


def test_bad_audit_settings_are_refused_before_any_run(tmp_path):
    proc = audit_empirical(tmp_path / "run", "--canaries", "3")
    assert proc.returncode != 0 and "--canaries 3" in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
    # A folder that already holds something (a crashed run's ledgers) is refused.
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "ledgers").mkdir()
    proc = audit_empirical(tmp_path / "used")
    assert proc.returncode != 0 and "not empty" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def authors_csv(tmp_path_factory, imdb_frame) -> Path:
    """600 IMDB reviews, three to an author (the privacy unit)."""
    path = tmp_path_factory.mktemp("units") / "reviews.csv"
    authors = [f"author-{row // 3}" for row in range(len(imdb_frame))]
    imdb_frame.assign(author=authors).to_csv(path, index=False)
    return path


def test_canary_units_of_a_unit_level_run_stay_below_the_claim_per_unit(tmp_path, authors_csv):
    out = tmp_path / "run"
    proc = audit_empirical(out, "--data", str(authors_csv), "--epsilon", "1", settings=UNITS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = result(out)
    bound = summary["lower-bound"]
    assert summary["privacy-unit"] == "author" and summary["records-per-canary"] == 20
    assert summary["claimed-epsilon"] == pytest.approx(1.0, abs=0.01)
    assert bound["epsilon_lower_bound"] < summary["claimed-epsilon"]
    assert not summary["exceeds-claim"] and bound["canaries"] == 200
    assert "epsilon per author" in proc.stdout
    # Each included canary reached its owner as one unit of 20 records, and the owners
    # charged their ledgers per author.
    owners = json.loads((out / "canaries" / "included.json").read_text())["owners"]
    units = Counter(record["unit"] for records in owners.values() for record in records)
    assert set(units.values()) == {20} and len(units) == bound["included"]
    log = (out / "audit" / "client-0" / "audit.jsonl").read_text().splitlines()
    charges = [json.loads(line)["data"] for line in log if '"dp-charged"' in line]
    assert charges and {c["privacy-unit"] for c in charges} == {"author"}


def test_clipping_each_record_of_a_unit_is_caught(tmp_path, authors_csv):
    """A test-only build forms no per-unit sums, so each record is clipped alone while
    the ledgers still charge per author: the bound lands above the claim per unit."""
    out = tmp_path / "run"
    planted = planted_build(tmp_path / "site", UNITS_CLIPPED_PER_RECORD)
    proc = audit_empirical(
        out, "--data", str(authors_csv), "--epsilon", "1", settings=UNITS, env_extra=planted
    )
    assert (out / "empirical.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = result(out)
    assert summary["claimed-epsilon"] == pytest.approx(1.0, abs=0.01)
    assert summary["recomputed-epsilon"] == pytest.approx(1.0, rel=0.02)
    assert summary["exceeds-claim"], summary["lower-bound"]
    assert proc.returncode == 1 and "LEAKS MORE THAN CLAIMED" in proc.stdout
