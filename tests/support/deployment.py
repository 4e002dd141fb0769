"""A real deployment on 127.0.0.1 as the deployment tests drive it: `fedshield server
start` and `fedshield client start` processes, their arguments and their teardown.

The fixtures built on these (``pki``, ``data``, ``processes``) are in tests/conftest.py."""

from __future__ import annotations

import subprocess
import time
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


def start_server_for_owners(
    processes: Processes,
    pki: Path,
    state: Path,
    port: int,
    owners: int,
    *run_config: str,
    eval_data: Path,
) -> ManagedProcess:
    """`fedshield server start` for owner-0 .. owner-(owners-1) of the IMDB classes 0,1,
    evaluating on ``eval_data``, with run-config items."""
    return start_server(
        processes,
        pki,
        state,
        port,
        owners,
        *[a for i in range(owners) for a in ("--node-key", str(pki / f"owner-{i}.pub"))],
        "--node-timeout-s",
        "180",
        "--classes",
        "0,1",
        "--eval-data",
        str(eval_data),
        *[a for item in run_config for a in ("--run-config", item)],
    )


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
