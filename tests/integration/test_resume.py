"""Kill the server process mid-run, resume it: the run ends with every round once, and
no owner's ledger loses or double-charges epsilon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from fedshield.audit.owners import owner_audits
from fedshield.audit.verify import verify_log
from fedshield.client.ledger import PrivacyLedger
from fedshield.server.checkpoint import ServerCheckpoint
from tests.support.cli import FEDSHIELD

pytestmark = pytest.mark.slow

ARGS = [
    "simulate",
    "--clients",
    "3",
    "--rounds",
    "6",
    "--max-records",
    "3000",
    "--partition",
    "iid",
]


def test_a_killed_server_resumes_without_losing_or_double_charging_epsilon(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    first = subprocess.Popen(
        [*FEDSHIELD, *ARGS, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    metrics = out / "metrics.json"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(json.loads(metrics.read_text())["rounds"]) >= 3):
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended early"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the server machine loses power after round 2
    first.wait()
    time.sleep(3)  # let Ray notice its driver is gone
    # The round the server resumes from is its last checkpoint's: metrics.json is written
    # a moment before the checkpoint, so a kill in between leaves metrics one round ahead.
    done_before = ServerCheckpoint.load(out).server_round
    assert done_before < 6

    resumed = subprocess.run(
        [*FEDSHIELD, "simulate", "--resume", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "Resuming" in resumed.stdout

    result = json.loads(metrics.read_text())
    assert [r["round"] for r in result["rounds"]] == list(range(7))
    assert result["final"]["rounds_completed"] == 6
    assert result["final"]["accuracy"] > result["rounds"][0]["accuracy"]
    ledgers = sorted((out / "ledgers").glob("*/ledger.json"))
    assert len(ledgers) == 3
    for path in ledgers:
        entries = [e for e in PrivacyLedger(path.parent).entries() if e.kind == "train"]
        # One charge per round, each round once: nothing lost, nothing charged twice.
        assert sorted(e.server_round for e in entries) == [1, 2, 3, 4, 5, 6]
        assert PrivacyLedger(path.parent).epsilon(1e-5) <= 3.0
    for log_path in (out / "audit").rglob("audit.jsonl"):
        log = verify_log(log_path)
        assert log.ok, (log_path, log.problem)
    # The auditor matches every owner's release to a charge (or a re-sent round).
    owners = [
        verify_log(p) for p in (out / "audit").rglob("audit.jsonl") if "server" not in p.parts
    ]
    audits = owner_audits(owners)
    assert len(audits) == 3
    assert [a.problems for a in audits] == [[], [], []]
    server = verify_log(out / "audit" / "server" / "audit.jsonl")
    assert [e["data"]["from-round"] for e in server.entries if e["type"] == "run-resumed"] == [
        done_before
    ]
