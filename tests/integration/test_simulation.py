"""End to end: `fedshield simulate` runs a real Flower simulation (ServerApp + ClientApps
on Ray) on a slice of the built-in IMDB data, and its outcome is checked, not its logs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from fedshield.audit.report import independent_epsilon
from fedshield.audit.verify import verify_log
from fedshield.client.ledger import PrivacyLedger
from fedshield.common.privacy import epsilon_spent
from tests.support.cli import FEDSHIELD
from tests.support.simulation import TAG, simulate

pytestmark = pytest.mark.slow

SMALL = ["--clients", "3", "--rounds", "3", "--partition", "iid"]
MARKER = "qzvmarker4471"
DELTA = 1e-5


def ledgers(directory: Path) -> dict[str, PrivacyLedger]:
    """The simulated owners' ledgers under a run's ledger folder, by owner."""
    return {p.parent.name: PrivacyLedger(p.parent) for p in sorted(directory.glob("*/ledger.json"))}


def ray_processes(tag: str) -> list[str]:
    """Ray's processes left by the simulation tagged ``tag``: found by the tag in their
    environment, so the check holds while other tests (xdist workers) run simulations."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if ("raylet" in args or "gcs_server" in args) and (
                f"{TAG}={tag}".encode() in (proc / "environ").read_bytes()
            ):
                left.append(args)
        except OSError:  # gone meanwhile, or another user's
            continue
    return left


@pytest.fixture(scope="module")
def planted_csv(tmp_path_factory) -> Path:
    """4,000 real IMDB reviews; 200 of them carry a marker that must never leave."""
    import pandas as pd

    from fedshield.common.data import builtin_csv_path

    frame = pd.read_csv(builtin_csv_path())
    frame = frame[frame["source"] == "imdb"].sample(n=4000, random_state=1).reset_index(drop=True)
    frame.loc[:199, "text"] = frame.loc[:199, "text"] + f" {MARKER}"
    path = tmp_path_factory.mktemp("data") / "owner-reviews.csv"
    frame[["text", "label"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, planted_csv):
    out = tmp_path_factory.mktemp("run1")
    proc = simulate(
        *SMALL,
        "--data",
        str(planted_csv),
        "--epsilon",
        "2",
        "--epsilon-budget",
        "4",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, planted_csv


def test_accuracy_rises_above_the_untrained_model(first_run):
    out, proc, _ = first_run
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    # 3 DP rounds at epsilon 2 on a small slice: the gain varies with the (unseeded, CSPRNG)
    # noise; one CI run reached +0.085, so the bar is a rise clearly above the held-out
    # sampling error (+0.05, about two standard errors here), not a fixed +0.1.
    assert metrics["final"]["accuracy"] > rounds[0]["accuracy"] + 0.05
    assert "Held-out accuracy" in proc.stdout
    assert (out / "model.pt").exists() and json.loads((out / "model.json").read_text())[
        "classes"
    ] == ["0", "1"]


def test_every_round_records_per_class_truth_in_metrics_and_the_server_log(first_run):
    out, proc, _ = first_run
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    log = verify_log(out / "audit" / "server" / "audit.jsonl")
    evaluated = [e["data"] for e in log.entries if e["type"] == "round-evaluated"]
    assert len(evaluated) == len(rounds)
    for entry, logged in zip(rounds, evaluated, strict=True):
        assert set(entry["recall-per-class"]) == {"0", "1"} and 0 <= entry["macro-f1"] <= 1
        lost = [c for c, recall in entry["recall-per-class"].items() if recall == 0.0]
        assert set(entry["never-predicted"]) <= set(lost)  # never predicted: never right
        assert logged["macro-f1"] == entry["macro-f1"]
        assert logged["recall-per-class"] == entry["recall-per-class"]
    assert "macro F1" in proc.stdout


def test_the_head_bias_is_the_published_prior_and_no_owner_moves_it(first_run):
    """The head's bias is the log of the operator's published priors (its evaluation
    data's class shares, add-one smoothed) and stays exactly there: owners train the
    weights only, so no update carries anything about an owner's class counts in it."""
    import torch

    out, _, _ = first_run
    log = verify_log(out / "audit" / "server" / "audit.jsonl")
    start = next(e["data"] for e in log.entries if e["type"] == "run-start")
    priors = start["class-priors"]
    assert priors["from"] == "eval" and priors["bias-trained-by-owners"] is False
    assert abs(sum(priors["shares"]) - 1) < 1e-5
    assert 0.3 < priors["shares"][0] < 0.7  # IMDB's two classes, near balanced
    state = torch.load(out / "model.pt", weights_only=True)
    expected = torch.log(torch.tensor(priors["shares"]))
    torch.testing.assert_close(state["bias"], expected, rtol=0, atol=1e-5)
    assert state["weight"].abs().sum() > 0  # the weights did train


def test_each_charge_entry_carries_the_history_composed_so_logs_grow_linearly(first_run):
    """A dp-charged entry carries the owner's ledger history composed (one event per
    mechanism, steps summed): its size does not grow with the rounds, and its epsilon is
    the whole history's (the report recomputes it from there: the audit test below)."""
    out, _, _ = first_run
    owner_logs = [p for p in (out / "audit").glob("*/audit.jsonl") if p.parent.name != "server"]
    assert owner_logs
    for path in owner_logs:
        charged = [e["data"] for e in verify_log(path).entries if e["type"] == "dp-charged"]
        train = [c for c in charged if c["kind"] == "train"]
        assert len(train) == 3
        sizes = {len(c["ledger-events"]) for c in train}
        assert sizes == {2}  # the count's release and the training mechanism, every round
        composed = {
            (e["noise-multiplier"], e["sample-rate"]): e["steps"]
            for e in train[-1]["ledger-events"]
        }
        assert composed[(train[-1]["noise-multiplier"], train[-1]["sample-rate"])] == sum(
            c["steps"] for c in train
        )


def test_epsilon_rises_every_round_stays_in_budget_and_matches_two_accountants(first_run):
    out, _, _ = first_run
    rounds = json.loads((out / "metrics.json").read_text())["rounds"][1:]
    owners = sorted(rounds[0]["epsilon"])
    # Simulated owners have no node keys: the server names them by node id; the label
    # each declares is kept beside, as its own claim.
    assert len(owners) == 3 and all(owner.startswith("node-") for owner in owners)
    labels = rounds[0]["labels-self-declared"]
    assert sorted(labels.values()) == ["client-0", "client-1", "client-2"]
    for owner in owners:
        series = [r["epsilon"][owner] for r in rounds]
        assert all(a < b for a, b in zip(series, series[1:], strict=False)), series
        assert series[-1] <= 2.0
    found = ledgers(out / "ledgers")
    assert len(found) == 3
    claimed = sorted(r for r in rounds[-1]["epsilon"].values())
    recomputed = sorted(
        epsilon_spent([e.event for e in led.entries()], DELTA) for led in found.values()
    )
    independent = sorted(
        independent_epsilon([e.event for e in led.entries()], DELTA) for led in found.values()
    )
    assert claimed == pytest.approx(recomputed, rel=1e-9)
    assert claimed == pytest.approx(independent, rel=0.01)
    # the count's DP release, then one charge per round
    assert all(
        [e.kind for e in led.entries()] == ["count"] + ["train"] * 3 for led in found.values()
    )


def test_no_process_is_left_running(first_run):
    assert ray_processes(first_run[1].tag) == []


def test_a_second_run_keeps_charging_the_same_ledger(first_run, tmp_path):
    out, _, _ = first_run
    ledger_dir = out / "ledgers"
    before = {name: led.epsilon(DELTA) for name, led in ledgers(ledger_dir).items()}
    # The operator's public class descriptions start this run from a zero-shot head.
    described = tmp_path / "descriptions.json"
    described.write_text(json.dumps({"0": "a bad, boring, awful film", "1": "a great film"}))
    second = simulate(
        *SMALL,
        "--data",
        str(first_run[2]),
        "--epsilon",
        "2",
        "--epsilon-budget",
        "4",
        "--ledger-dir",
        str(ledger_dir),
        "--class-descriptions",
        str(described),
        "--out",
        str(tmp_path / "run2"),
    )
    assert second.returncode == 0, second.stderr[-3000:]
    start = next(
        e["data"]
        for e in verify_log(tmp_path / "run2" / "audit" / "server" / "audit.jsonl").entries
        if e["type"] == "run-start"
    )
    assert start["class-descriptions"]["descriptions"] == {
        label: [phrase] for label, phrase in json.loads(described.read_text()).items()
    }
    assert (
        start["class-descriptions"]["sha256"] == hashlib.sha256(described.read_bytes()).hexdigest()
    )
    # a zero head with the prior bias predicts one class at round 0; the described head both
    untrained = json.loads((tmp_path / "run2" / "metrics.json").read_text())["rounds"][0]
    assert untrained["never-predicted"] == []
    after = {name: led.epsilon(DELTA) for name, led in ledgers(ledger_dir).items()}
    assert after.keys() == before.keys()
    for name, eps in after.items():
        assert before[name] < eps <= 4.0
        assert eps == pytest.approx(
            epsilon_spent([e.event for e in PrivacyLedger(ledger_dir / name).entries()], DELTA)
        )
    # the same partitions: the count released in the first run is reused, not charged again
    assert all(len(led.entries()) == 7 for led in ledgers(ledger_dir).values())
    # A run under a budget that its first round would pass (every owner refuses, the
    # ledgers do not move, exit 6): tests/integration/test_run_lifecycle.py's third run.


def test_the_audit_logs_verify_and_the_report_recomputes_every_owners_epsilon(first_run, tmp_path):
    out, _, _ = first_run
    verify = subprocess.run(
        [*FEDSHIELD, "audit", "verify", str(out / "audit")], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.count(": OK,") == 4  # server + 3 owners
    proc = subprocess.run(
        [*FEDSHIELD, "audit", "report", str(out / "audit"), "--out", str(tmp_path / "report")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(report["owners"]) == 3
    for owner in report["owners"]:
        assert owner["ok"], owner["problems"]
        assert owner["final_claimed"] == pytest.approx(owner["final_recomputed"], rel=0.01)
        assert owner["final_claimed"] <= owner["budget"]
    rows = {r["name"]: r for r in report["requirements"]}
    assert len(rows) == 6 and all(r["evidence"] for r in rows.values())
    assert rows["Confidentiality in transit"]["status"] == "n/a"  # in-process simulation
    assert all(
        rows[name]["status"] == "pass"
        for name in (
            "Data minimisation / desensitisation",
            "Privacy of individual records (DP)",
            "Integrity of records and logs",
            "Availability / resilience",
        )
    )
    # 9 owner heads in the server log + 9 server heads in the owners' logs (3 owners x 3 rounds)
    assert report["anchors"]["matched"] == 18 and report["anchors"]["missing"] == []
    page = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "Privacy budget audit" in page


def test_a_tampered_run_log_fails_verification_with_the_line(first_run, tmp_path):
    out, _, _ = first_run
    log = (out / "audit" / "client-1" / "audit.jsonl").read_text().splitlines()
    line = next(i for i, text in enumerate(log) if '"epsilon-after":' in text)
    log[line] = log[line].replace('"epsilon-after":', '"epsilon-after":0.0001,"was":')
    tampered = tmp_path / "audit.jsonl"
    tampered.write_text("\n".join(log) + "\n")
    proc = subprocess.run(
        [*FEDSHIELD, "audit", "verify", str(tampered)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert f"line {line + 1}:" in proc.stderr and "FAILED" in proc.stderr


def test_the_planted_marker_appears_in_no_output_log_or_ledger(first_run):
    out, proc, _ = first_run
    assert MARKER not in proc.stdout + proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "audit.jsonl" for p in files) and any(
        p.name == "metrics.json" for p in files
    )
    for path in files:
        assert MARKER.encode() not in path.read_bytes(), path


def test_a_hundred_owners_with_ten_sampled_per_round_complete(tmp_path):
    # 2,000 records (16 to train on per owner): the scale under test is the owners and
    # their sampling; every owner's records are desensitised before round 1, which took
    # twice as long with 6,000.
    proc = simulate(
        "--clients",
        "100",
        "--fraction-train",
        "0.1",
        "--rounds",
        "2",
        "--max-records",
        "2000",
        "--partition",
        "iid",
        "--out",
        str(tmp_path / "load"),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rounds = json.loads((tmp_path / "load" / "metrics.json").read_text())["rounds"]
    assert [len(r["participants"]) for r in rounds[1:]] == [10, 10]
    assert len(ledgers(tmp_path / "load" / "ledgers")) <= 20
    assert ray_processes(proc.tag) == []


def test_a_server_log_cut_back_to_an_earlier_checkpoint_is_caught_by_the_owners_logs(
    first_run, tmp_path
):
    out, _, _ = first_run
    lines = (out / "audit" / "server" / "audit.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"reason":"round-1-end"' in line)
    audit = tmp_path / "audit"
    (audit / "server").mkdir(parents=True)
    (audit / "server" / "audit.jsonl").write_text("".join(lines[: cut + 1]))
    assert (
        subprocess.run(
            [*FEDSHIELD, "audit", "verify", str(audit / "server")], capture_output=True
        ).returncode
        == 0
    )
    for owner in ("client-0", "client-1", "client-2"):
        (audit / owner).mkdir()
        (audit / owner / "audit.jsonl").write_bytes(
            (out / "audit" / owner / "audit.jsonl").read_bytes()
        )
    proc = subprocess.run(
        [*FEDSHIELD, "audit", "report", str(audit), "--out", str(tmp_path / "report")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {r["name"]: r["status"] for r in report["requirements"]}
    assert rows["Integrity of records and logs"] == "fail"
    assert any("is not in the server log" in m for m in report["anchors"]["missing"])
