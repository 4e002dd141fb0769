"""A real deployment on 127.0.0.1 as the deployment tests drive it: `fedshield server
start` and `fedshield client start` processes, their arguments and their teardown.

The fixtures built on these (``pki``, ``data``, ``processes``) are in tests/conftest.py;
``data`` holds eval.csv and owner-<i>.csv, ``pki`` the CA and owner-<i> node keys.
bench/round_latency.py deploys with these too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedshield.common.pki import ssh_public_key_fingerprint
from fedshield.common.processes import ManagedProcess, flower_env
from tests.support.cli import FEDSHIELD
from tests.support.ports import free_port


class Processes:
    """Everything a test starts; all stopped at teardown, also when the test fails."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[ManagedProcess] = []

    def start(self, name: str, *args: str) -> ManagedProcess:
        process = ManagedProcess(name, [*FEDSHIELD, *args], self.logs / f"{name}.log", flower_env())
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop(grace_s=10)


def kill_leftovers(folder: Path) -> str:
    """SIGKILL every process whose command line names ``folder`` (one that outlived its
    process group's stop); returns pgrep's lines for them, empty when none was left."""
    leftovers = subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True)
    for line in leftovers.stdout.splitlines():
        os.kill(int(line.split()[0]), signal.SIGKILL)
    return leftovers.stdout


@contextlib.contextmanager
def module_deployment(tmp_path_factory, name: str) -> Iterator[tuple[Path, Processes]]:
    """A folder of its own (``mktemp(name)``) and the Processes started in it, for a
    module-scoped fixture: on exit all are stopped and any left under the folder killed."""
    work = tmp_path_factory.mktemp(name)
    processes = Processes(work / "logs")
    try:
        yield work, processes
    finally:
        processes.stop_all()
        kill_leftovers(work)


def start_server(
    processes: Processes, pki: Path, state: Path, port: int, nodes: int, *extra: str
) -> ManagedProcess:
    """`fedshield server start`, returned once it waits for its SuperNodes."""
    server = processes.start(
        "server",
        "server",
        "start",
        "--pki",
        str(pki),
        "--state",
        str(state),
        "--port",
        str(port),
        "--internal-port",
        str(free_port()),
        *extra,
    )
    deadline = time.monotonic() + 60
    while f"waiting for {nodes} SuperNodes" not in server.log_text():
        assert server.running and time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.5)
    return server


@dataclass(frozen=True)
class Served:
    """A `fedshield server start` that ``serve`` left waiting for its SuperNodes."""

    server: ManagedProcess
    port: int  # the public port (the Fleet gateway)
    state: Path  # its --state folder


def serve(processes: Processes, pki: Path, work: Path, nodes: int, *extra: str) -> Served:
    """``start_server`` on a free port, its state in ``work``/server."""
    port, state = free_port(), work / "server"
    return Served(start_server(processes, pki, state, port, nodes, *extra), port, state)


def start_federation(
    processes: Processes, pki: Path, data: Path, work: Path, owners: int, *run_config: str
) -> Served:
    """``serve`` for owner-0 .. owner-(owners-1) of the IMDB classes 0,1, evaluating on
    ``data``/eval.csv, with run-config items; its run is written to ``work``/run."""
    run_config = (*run_config, f"out-dir='{work / 'run'}'")
    return serve(
        processes,
        pki,
        work,
        owners,
        *[a for i in range(owners) for a in ("--node-key", str(pki / f"owner-{i}.pub"))],
        "--node-timeout-s",
        "180",
        "--classes",
        "0,1",
        "--eval-data",
        str(data / "eval.csv"),
        *[a for item in run_config for a in ("--run-config", item)],
    )


def start_owner(
    processes: Processes, pki: Path, data: Path, port: int, name: str, home: Path, *extra: str
) -> ManagedProcess:
    """`fedshield client start` as ``name`` (its node key in ``pki``, its records in
    ``data``/<name>.csv), its ledger and audit log under ``home``."""
    return processes.start(name, *client_args(pki, port, name, data / f"{name}.csv", home, *extra))


def keys(pki: Path, owners: int) -> list[str]:
    """owner-0 .. owner-(owners-1) as the server names them: their node keys' fingerprints."""
    return [ssh_public_key_fingerprint(pki / f"owner-{i}.pub") for i in range(owners)]


def client_args(
    pki: Path, port: int, key: str, data_file: Path, home: Path, *extra: str
) -> list[str]:
    return [
        "client",
        "start",
        "--superlink",
        f"127.0.0.1:{port}",
        "--ca",
        str(pki / "ca.crt"),
        "--auth-key",
        str(pki / f"{key}.key"),
        "--data",
        str(data_file),
        "--epsilon-budget",
        "5",
        "--ledger-dir",
        str(home / "ledgers"),
        "--audit-dir",
        str(home / "audit"),
        "--owner-id",
        key,
        "--port",
        str(free_port()),
        "--max-retries",
        "2",
        *extra,
    ]


def run_client(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEDSHIELD, *args], capture_output=True, text=True, timeout=timeout, env=flower_env()
    )
