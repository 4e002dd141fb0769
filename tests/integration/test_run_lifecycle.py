"""Runs that continue and tell the truth (issue 13, items 1, 2, 4, 5): a run starts from a
finished run's model and records the lineage; a run without an accepted update exits
non-zero, stops early and saves nothing; outputs are never overwritten; the operator must
name the classes and the evaluation data; input typos answer at once."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from fedshield.common.data import builtin_csv_path
from tests.support.cli import FEDSHIELD
from tests.support.ports import free_port


def fedshield(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEDSHIELD, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def said(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """A small IMDB slice for the owners and a separate labelled evaluation file."""
    directory = tmp_path_factory.mktemp("corpus")
    frame = pd.read_csv(builtin_csv_path())
    frame = frame[frame["source"] == "imdb"].sample(n=900, random_state=5)[["text", "label"]]
    frame.iloc[:300].to_csv(directory / "eval.csv", index=False)
    frame.iloc[300:].to_csv(directory / "train.csv", index=False)
    return directory / "train.csv", directory / "eval.csv"


def simulate(corpus, out: Path, ledgers: Path, budget: float, *extra: str):
    train, evaluation = corpus
    return fedshield(
        "simulate",
        "--data",
        str(train),
        "--eval-data",
        str(evaluation),
        "--clients",
        "2",
        "--rounds",
        "2",
        "--epsilon",
        "2",
        "--epsilon-budget",
        str(budget),
        "--out",
        str(out),
        "--ledger-dir",
        str(ledgers),
        *extra,
    )


def run_start(run: Path) -> dict:
    lines = (run / "audit" / "server" / "audit.jsonl").read_text().splitlines()
    return next(e["data"] for e in map(json.loads, lines) if e["type"] == "run-start")


def final(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["final"]


def epsilons(ledger_dir: Path) -> dict[str, float]:
    """Each simulated owner's epsilon spent, from its ledger under ``ledger_dir``."""
    from fedshield.client.ledger import PrivacyLedger

    return {
        p.parent.name: PrivacyLedger(p.parent).epsilon(1e-5)
        for p in sorted(ledger_dir.glob("*/ledger.json"))
    }


@pytest.mark.slow
def test_runs_continue_a_model_and_a_refused_run_exits_non_zero(corpus, tmp_path):
    ledgers = tmp_path / "ledgers"
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"

    run = simulate(corpus, first, ledgers, 4.5)
    assert run.returncode == 0, said(run)
    metrics = json.loads((first / "metrics.json").read_text())
    start = run_start(first)
    assert start["test-records"] == 300  # the whole evaluation file, nothing else
    assert start["initial-model"] == "untrained"
    assert metrics["final"]["outcome"] == "completed"
    assert metrics["final"]["rounds_with_updates"] == 2
    assert json.loads((first / "model.json").read_text())["lineage"] == []

    # A finished run's folder is never a new run's output folder.
    again = simulate(corpus, first, ledgers, 4.5)
    assert again.returncode == 2 and "already holds a run" in said(again)

    # The second run starts from the first run's model (round 0 = its final accuracy on
    # the same evaluation file) and records where it came from.
    run = simulate(corpus, second, ledgers, 4.5, "--continue-from", str(first))
    assert run.returncode == 0, said(run)
    rounds = json.loads((second / "metrics.json").read_text())["rounds"]
    assert rounds[0]["accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    parent_sha = json.loads((first / "model.json").read_text())["model-sha256"]
    lineage = json.loads((second / "model.json").read_text())["lineage"]
    assert lineage == [{"run-dir": str(first.resolve()), "model-sha256": parent_sha}]
    epsilon_after_two = final(second)["epsilon_max"]
    assert epsilon_after_two > final(first)["epsilon_max"]  # the ledger charged both runs

    # The third run's first round would pass the owners' budget (left: 0.001): every
    # owner refuses before training, the run stops after that round, saves no model,
    # moves no ledger and exits 6 with the reason. (tests/integration/test_simulation.py's
    # ledger test leaves the refused run to this one: one simulation fewer in the suite.)
    before = epsilons(ledgers)
    assert len(before) == 2 and max(before.values()) == pytest.approx(epsilon_after_two)
    budget = f"{max(before.values()) + 1e-3:.6f}"
    run = simulate(corpus, third, ledgers, budget, "--continue-from", "latest")
    assert run.returncode == 6, said(run)
    assert "no owner's update was accepted" in " ".join(run.stderr.split())
    assert "privacy budget" in said(run)
    metrics = json.loads((third / "metrics.json").read_text())
    outcome = metrics["final"]
    assert outcome["outcome"] == "failed" and outcome["rounds_completed"] == 1
    assert len(metrics["rounds"]) == 2
    for entry in metrics["rounds"][1:]:
        assert entry["participants"] == [] and len(entry["refusals"]) == 2
        assert all("privacy budget" in reason for reason in entry["refusals"])
    assert not (third / "model.json").exists() and not (third / "model.pt").exists()
    assert epsilons(ledgers) == before
    # "latest" picked the second run, the newest one that saved a model.
    assert run_start(third)["initial-model"]["run-dir"] == str(second.resolve())


def test_a_changed_or_mismatched_parent_model_is_refused_before_anything_starts(tmp_path):
    from fedshield.common.config import RunConfig
    from fedshield.common.errors import ConfigError, FedshieldError
    from fedshield.common.model import ModelSpec
    from fedshield.server.outputs import RunOutputs, check_continuation

    config = RunConfig(feat_n_buckets=256, feat_out_dim=32)
    spec = ModelSpec.from_config(config)
    run = tmp_path / "run"
    from flwr.app import ArrayRecord

    RunOutputs(run).save_model(ArrayRecord(spec.build(2).state_dict()), ("neg", "pos"), spec)
    check_continuation(config.replace(continue_from=str(run)), ("neg", "pos"))

    with pytest.raises(ConfigError, match="classes"):
        check_continuation(config.replace(continue_from=str(run)), ("neg", "pos", "mixed"))
    with pytest.raises(ConfigError, match="feat-out-dim|featurizer"):
        check_continuation(config.replace(continue_from=str(run), feat_out_dim=64), ("neg", "pos"))
    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    data = bytearray((changed / "model.pt").read_bytes())
    data[-1] ^= 1
    (changed / "model.pt").write_bytes(bytes(data))
    with pytest.raises(FedshieldError, match="SHA-256"):
        check_continuation(config.replace(continue_from=str(changed)), ("neg", "pos"))
    with pytest.raises(FedshieldError, match="not found there"):
        check_continuation(config.replace(continue_from=str(tmp_path)), ("neg", "pos"))


def test_the_operator_must_name_classes_and_evaluation_data(corpus, tmp_path):
    from fedshield.common.errors import ConfigError, DataError
    from fedshield.server.deployment import SuperLinkSettings
    from fedshield.server.operator import FederationRequest, check_request

    settings = SuperLinkSettings(
        pki_dir=tmp_path, state_dir=tmp_path / "state", port=free_port(), internal_port=free_port()
    )
    _, evaluation = corpus

    def check(**values):
        return check_request(settings, FederationRequest(node_keys=[], run_values=values))

    with pytest.raises(ConfigError, match="classes are not named"):
        check(**{"eval-data": str(evaluation)})
    with pytest.raises(ConfigError, match="no evaluation data"):
        check(classes="0,1")
    with pytest.raises(ConfigError, match="holds no training data"):
        check(classes="0,1", data=str(evaluation), **{"eval-data": str(evaluation)})
    with pytest.raises(DataError, match="2"):  # a label the federation does not have
        check(classes="0,2", **{"eval-data": str(evaluation)})
    plan = check(classes="0,1", **{"eval-data": str(evaluation)})
    assert plan.class_names() == ("0", "1")
    # class descriptions that do not describe the federation's classes stop it at start
    described = tmp_path / "descriptions.json"
    described.write_text('{"0": "a bad film"}')
    with pytest.raises(ConfigError, match="no description for 1"):
        check(classes="0,1", **{"eval-data": str(evaluation), "class-descriptions": str(described)})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["server", "start", "--node-key", "nowhere/owner-1.pub", "--classes", "a,b"],
            "nowhere/owner-1.pub: no such file",
        ),
        (["server", "start", "--pki", "no-pki-here"], "no-pki-here/ca.crt: no such file"),
        (["simulate", "--data", "typo.csv"], "typo.csv: no such file"),
        (["simulate", "--eval-data", "typo.csv"], "typo.csv: no such file"),
        (["simulate", "--class-descriptions", "typo.json"], "typo.json: no such file"),
    ],
)
def test_a_typo_answers_at_once(args, message, tmp_path):
    started = time.monotonic()
    proc = subprocess.run(
        [*FEDSHIELD, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    took = time.monotonic() - started
    assert proc.returncode == 2 and message in said(proc)
    assert took < 4.0, f"{took:.1f} s"  # about 0.5 s on the 2-core development machine


def test_the_outcome_counts_rounds_with_accepted_updates():
    from fedshield.server.app import run_outcome

    def entry(n, participants=(), refusals=()):
        return {
            "round": n,
            "participants": list(participants),
            "refusals": list(refusals),
            "rejected": [],
        }

    budget = "owner-a: the round would pass the owner's privacy budget"
    untrained = entry(0)
    ok = run_outcome([untrained, entry(1, ["a", "b"]), entry(2, ["a"])], None)
    assert ok == {"outcome": "completed", "rounds_with_updates": 2, "reasons": []}
    early = run_outcome([untrained, entry(1, ["a"]), entry(2, refusals=[budget])], 2)
    assert early["outcome"] == "stopped-early" and early["rounds_with_updates"] == 1
    assert (
        early["reasons"][0].startswith("stopped after round 2")
        and f"1 x {budget}" in early["reasons"]
    )
    silent = run_outcome([untrained, entry(1), entry(2)], None)
    assert silent["outcome"] == "failed" and "2 round(s) without any reply" in silent["reasons"][0]


def test_the_server_start_help_example_names_only_real_options():
    """Issue 13 bug: the help's example `--run-config ... data=eval.csv` failed as shown."""
    import re

    shown = said(fedshield("server", "start", "--help"))
    example = shown[shown.index("Example:") : shown.index("Exit status")]
    options = set(re.findall(r"(--[a-z-]+)", example))
    assert {"--node-key", "--classes", "--eval-data", "--run-config"} <= options
    assert all(option in shown.replace(example, "") for option in options)
    assert "data=" not in example
