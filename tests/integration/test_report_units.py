"""Issue 25's done-when, end to end: on a real `fedshield simulate --privacy-unit author`
run, the audit report recomputes each owner's epsilon per author independently, within
1% of the owner's claim, and the claim is never below the recomputed lower end.

Full-batch rounds (the default): the recomputation is then the exact closed form, so
"never below" is checked against the true epsilon itself (and the test stays fast)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from fedshield.audit.epsilon import TOLERANCE, epsilon_interval
from fedshield.audit.render import render_html
from fedshield.audit.report import build_report
from fedshield.client.ledger import PrivacyLedger
from fedshield.common.dp_event import DpEvent
from fedshield.common.group_privacy import record_epsilon_of_unit_run
from tests.support.simulation import simulate

pytestmark = pytest.mark.slow

DELTA = 1e-5


@pytest.fixture(scope="module")
def authored_csv(tmp_path_factory) -> Path:
    """400 real movie reviews by authors of 1 to 5 reviews each."""
    import pandas as pd

    from fedshield.common.data import builtin_csv_path

    frame = pd.read_csv(builtin_csv_path()).sample(n=400, random_state=1).reset_index(drop=True)
    sizes = np.random.default_rng(0).integers(1, 6, size=400)
    authors = [f"author-{a}" for a, size in enumerate(sizes) for _ in range(size)][:400]
    frame["author"] = authors
    path = tmp_path_factory.mktemp("data") / "authored-reviews.csv"
    frame[["text", "label", "author"]].to_csv(path, index=False)
    return path


@functools.cache
def interval(history: tuple[DpEvent, ...]) -> tuple[float, float]:
    return epsilon_interval(list(history), DELTA)


def test_epsilon_per_author_is_recomputed_within_1_percent_and_never_below(authored_csv, tmp_path):
    out = tmp_path / "run"
    proc = simulate(
        *("--data", str(authored_csv), "--privacy-unit", "author"),
        *("--clients", "2", "--rounds", "2", "--no-desensitise"),
        *("--out", str(out)),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = build_report(sorted((out / "audit").rglob("audit.jsonl")))
    owners = report["owners"]
    assert len(owners) == 2
    for owner in owners:
        assert owner["ok"], owner["problems"]
        assert owner["privacy_unit"] == "author" and owner["per_unit"] == "per author"
        ledger = PrivacyLedger(out / "ledgers" / owner["owner"])
        entries = ledger.entries()
        assert [e.unit for e in entries] == ["author"] * len(entries)
        assert len(owner["charges"]) == len(entries) and entries[0].kind == "count"
        for n, charge in enumerate(owner["charges"], 1):
            claimed, recomputed = charge["epsilon_claimed"], charge["epsilon_recomputed"]
            low, _ = interval(tuple(e.event for e in entries[:n]))
            print(
                f"{owner['owner']} {charge['kind']} round {charge['server_round']}: per author "
                f"claimed {claimed:.6f}, recomputed {recomputed:.6f} (lower end {low:.6f}); "
                f"per record {charge['epsilon_per_record']:.6f}"
            )
            assert charge["privacy_unit"] == "author"
            assert abs(claimed - recomputed) <= TOLERANCE * recomputed
            assert claimed >= low
        # the report's per-record figure (its own accountant) against the owners' twin
        trained = [e.event for e in entries if e.kind != "count"]
        counts = [e.event for e in entries if e.kind == "count"]
        owners_figure = record_epsilon_of_unit_run(trained, counts, DELTA)
        print(f"per record: report {owner['epsilon_per_record']:.6f}, owners' {owners_figure:.6f}")
        assert owner["epsilon_per_record"] == pytest.approx(owners_figure, rel=TOLERANCE)
        assert owner["final_claimed"] == pytest.approx(ledger.epsilon(DELTA))
    evidence = next(r for r in report["requirements"] if r["name"].startswith("Privacy"))
    assert "epsilon per author (2 owners)" in evidence["evidence"]
    page = render_html(report)
    assert "per author" in page and "replace-one bound at 2C" in page
