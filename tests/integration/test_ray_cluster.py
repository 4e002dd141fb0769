"""`fedshield simulate --ray-address`: the simulated owners run on a Ray cluster that was
already running (a head started here as its own process, as an operator would), their
ledgers and logs land under --out, and the cluster outlives the run until its owner stops
it. An address nobody answers on is refused in seconds, with the fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedshield.client.ledger import PrivacyLedger
from tests.support.cli import FEDSHIELD
from tests.support.simulation import simulate

pytestmark = pytest.mark.slow

# The ray command of the interpreter the tests run (its virtual environment's).
RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1, started by ``ray start --head --block`` in its own process
    group; stopped by that process's PID (its group) at the end."""
    ray = RAY if RAY.exists() else Path(shutil.which("ray") or "ray")
    port = free_port()
    # Ray's session folder holds unix sockets: keep its path short.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not answers(port):
            assert head.poll() is None, f"ray start exited with {head.returncode}"
            assert time.monotonic() < deadline, "the Ray head did not answer within 90 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_simulation_runs_on_an_existing_ray_cluster_and_leaves_it_running(ray_head, tmp_path):
    out = tmp_path / "run"
    proc = simulate(
        *("--ray-address", ray_head, "--clients", "2", "--rounds", "2", "--partition", "iid"),
        *("--max-records", "600", "--epsilon", "3", "--out", str(out)),
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert 0 < metrics["final"]["epsilon_max"] <= 3.0 + 1e-6
    # The owners ran as the cluster's actors; their ledgers and logs are under --out.
    owners = sorted(p.parent for p in (out / "ledgers").glob("*/ledger.json"))
    assert len(owners) == 2
    for folder in owners:
        spent = PrivacyLedger(folder).epsilon(1e-5)
        assert 0 < spent <= 3.0 + 1e-6
    assert len(list((out / "audit").glob("*/audit.jsonl"))) >= 3  # the server's and both owners'
    # The cluster was the operator's: the run disconnected and left it answering.
    assert answers(int(ray_head.rsplit(":", 1)[1]))


def test_an_address_nobody_answers_on_is_refused_in_seconds_with_the_fix(tmp_path):
    port = free_port()
    start = time.monotonic()
    proc = subprocess.run(
        [*FEDSHIELD, "simulate", "--ray-address", f"127.0.0.1:{port}", "--rounds", "1"]
        + ["--clients", "2", "--max-records", "200", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    said = " ".join((proc.stdout + proc.stderr).split())
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in said
    assert "ray start --head" in said
    assert time.monotonic() - start < 60
    assert not (tmp_path / "run" / "ledgers").exists()  # nothing charged
