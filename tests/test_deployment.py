"""A real deployed federation on 127.0.0.1: `fedshield server start` (flower-superlink
with TLS and SuperNode authentication) and three `fedshield client start` SuperNodes,
each training on its own CSV; plus the ways a connection must fail."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedshield.audit.verify import verify_log
from fedshield.client.ledger import PrivacyLedger
from fedshield.common.data import builtin_csv_path
from fedshield.common.pki import (
    create_node_key,
    init_ca,
    issue_server_certificate,
    ssh_public_key_fingerprint,
)
from fedshield.common.processes import ManagedProcess, flower_env, free_port
from tests.conftest import FEDSHIELD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    issue_server_certificate(directory, ["localhost", "127.0.0.1"])
    for name in ("owner-0", "owner-1", "owner-2", "stranger"):
        create_node_key(directory, name)
    other = directory / "other"
    init_ca(other, name="someone else's CA")
    issue_server_certificate(
        directory,
        ["127.0.0.1"],
        days=1,
        valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
        cert_name="expired.pem",
        key_name="expired.key",
    )
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    frame = pd.read_csv(builtin_csv_path())
    frame = (
        frame[frame["source"] == "imdb"]
        .sample(n=2800, random_state=3)
        .reset_index(drop=True)[["text", "label"]]
    )
    frame.iloc[:1000].to_csv(directory / "eval.csv", index=False)
    for i in range(3):
        frame.iloc[1000 + 600 * i : 1600 + 600 * i].to_csv(
            directory / f"owner-{i}.csv", index=False
        )
    return directory


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


@pytest.fixture()
def processes(tmp_path):
    procs = Processes(tmp_path / "logs")
    yield procs
    procs.stop_all()
    leftovers = subprocess.run(
        ["pgrep", "-af", str(tmp_path)], capture_output=True, text=True
    ).stdout
    for line in leftovers.splitlines():
        os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not leftovers.strip(), f"processes survived the test: {leftovers}"


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


def test_three_authenticated_owners_train_over_tls(pki, data, tmp_path, processes):
    port = free_port()
    state = tmp_path / "server"
    server = start_server_for_owners(
        processes,
        pki,
        state,
        port,
        3,
        "num-rounds=2",
        f"out-dir='{tmp_path / 'run'}'",
        eval_data=data / "eval.csv",
    )
    owners = [tmp_path / f"owner-{i}" for i in range(3)]
    for i, home in enumerate(owners):
        processes.start(
            f"owner-{i}", *client_args(pki, port, f"owner-{i}", data / f"owner-{i}.csv", home)
        )
    assert server.wait(timeout_s=600) == 0, server.log_text()[-4000:]

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert metrics["final"]["accuracy"] > metrics["rounds"][0]["accuracy"]
    # The server names owners by their node keys; owner-id is only their own label.
    assert sorted(metrics["rounds"][-1]["epsilon"]) == sorted(keys(pki, 3))
    assert set(metrics["rounds"][-1]["labels-self-declared"].values()) == {
        "owner-0",
        "owner-1",
        "owner-2",
    }
    for i, home in enumerate(owners):
        ledger = PrivacyLedger(home / "ledgers")
        assert [(e.kind, e.server_round) for e in ledger.entries()] == [
            ("count", 1),  # the record count's DP release, once, before round 1
            ("train", 1),
            ("train", 2),
        ]
        assert metrics["rounds"][-1]["epsilon"][keys(pki, 3)[i]] == pytest.approx(
            ledger.epsilon(1e-5)
        )
        log = verify_log(home / "audit" / "audit.jsonl")
        assert log.ok, log.problem
        start = next(e for e in log.entries if e["type"] == "node-start")["data"]
        assert start["transport"]["tls-version"] in ("TLSv1.2", "TLSv1.3")
    server_log = verify_log(next((tmp_path / "run" / "audit").rglob("audit.jsonl")))
    assert server_log.ok, server_log.problem
    transport = next(e for e in server_log.entries if e["type"] == "run-start")["data"]["transport"]
    assert transport.startswith("tls TLSv1.") and "supernode-auth on" in transport

    report = subprocess.run(
        [
            *FEDSHIELD,
            "audit",
            "report",
            str(tmp_path / "run" / "audit"),
            *[str(h / "audit") for h in owners],
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
    )
    rows = {
        r["name"]: r["status"]
        for r in json.loads((tmp_path / "report" / "report.json").read_text())["requirements"]
    }
    assert rows["Confidentiality in transit"] == "pass", report.stdout
    assert rows["Authentication and access control"] == "pass", report.stdout


@pytest.fixture()
def superlink(pki, data, tmp_path, processes):
    """A TLS SuperLink with node authentication that knows only owner-0's key."""
    port = free_port()
    start_server(
        processes,
        pki,
        tmp_path / "server",
        port,
        1,
        "--node-key",
        str(pki / "owner-0.pub"),
        "--node-timeout-s",
        "600",
        "--classes",
        "0,1",
        "--eval-data",
        str(data / "eval.csv"),
    )
    return port


def run_client(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEDSHIELD, *args], capture_output=True, text=True, timeout=timeout, env=flower_env()
    )


def test_an_unregistered_node_is_refused(pki, data, tmp_path, superlink):
    proc = run_client(
        *client_args(pki, superlink, "stranger", data / "owner-1.csv", tmp_path / "o")
    )
    assert proc.returncode != 0
    assert "Failed to activate SuperNode" in proc.stdout
    assert "the SuperLink does not know this node's key" in proc.stdout


def test_a_node_trusting_another_ca_cannot_connect(pki, data, tmp_path, superlink):
    args = client_args(pki, superlink, "owner-0", data / "owner-0.csv", tmp_path / "o")
    args[args.index("--ca") + 1] = str(pki / "other" / "ca.crt")
    proc = run_client(*args)
    assert proc.returncode == 2
    assert "CERTIFICATE_VERIFY_FAILED" in proc.stderr and "--ca is the federation's CA" in " ".join(
        proc.stderr.split()
    )


def test_a_plaintext_connection_to_the_tls_endpoint_fails(pki, data, tmp_path, superlink):
    args = [
        "client",
        "start",
        "--superlink",
        f"127.0.0.1:{superlink}",
        "--data",
        str(data / "owner-0.csv"),
        "--epsilon-budget",
        "5",
        "--ledger-dir",
        str(tmp_path / "l"),
        "--audit-dir",
        str(tmp_path / "a"),
        "--port",
        str(free_port()),
        "--max-retries",
        "2",
        "--insecure",
    ]
    proc = run_client(*args)
    assert proc.returncode != 0
    assert "WARNING: --insecure" in proc.stderr
    assert "Server disconnected without sending a response" in proc.stdout
    entries = verify_log(tmp_path / "a" / "audit.jsonl").entries
    assert any(e["type"] == "insecure-mode-warning" for e in entries)


def test_an_expired_server_certificate_is_refused(pki, data, tmp_path, processes):
    # `fedshield server start` refuses to serve it ...
    expired = tmp_path / "expired-pki"
    expired.mkdir()
    for src, dst in (
        ("ca.crt", "ca.crt"),
        ("expired.pem", "server.pem"),
        ("expired.key", "server.key"),
    ):
        (expired / dst).write_bytes((pki / src).read_bytes())
    (expired / "server.key").chmod(0o600)
    refused = run_client(
        "server",
        "start",
        "--pki",
        str(expired),
        "--state",
        str(tmp_path / "s0"),
        "--classes",
        "0,1",
        "--eval-data",
        str(data / "eval.csv"),
    )
    assert refused.returncode == 2 and "certificate expired on" in refused.stderr
    # ... and a SuperNode refuses a SuperLink that serves it anyway.
    from fedshield.server.superlink import SuperLinkSettings, superlink_command

    port = free_port()
    command = superlink_command(
        SuperLinkSettings(pki_dir=pki, state_dir=tmp_path / "s1", internal_port=port)
    )
    command[command.index("--ssl-certfile") + 1] = str(pki / "expired.pem")
    command[command.index("--ssl-keyfile") + 1] = str(pki / "expired.key")
    superlink = ManagedProcess(
        "superlink", command, tmp_path / "logs" / "superlink.log", flower_env()
    )
    processes.started.append(superlink)
    deadline = time.monotonic() + 60
    while "Starting Flower SuperLink" not in superlink.log_text() or not _listening(port):
        assert superlink.running and time.monotonic() < deadline, superlink.log_text()[-3000:]
        time.sleep(0.5)
    proc = run_client(*client_args(pki, port, "owner-0", data / "owner-0.csv", tmp_path / "o"))
    assert proc.returncode == 2
    assert "certificate has expired" in proc.stderr


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_key_file_with_loose_permissions_is_rejected(pki, data, tmp_path):
    loose = tmp_path / "loose.key"
    loose.write_bytes((pki / "owner-0.key").read_bytes())
    loose.chmod(0o644)
    args = client_args(pki, 1, "owner-0", data / "owner-0.csv", tmp_path / "o")
    args[args.index("--auth-key") + 1] = str(loose)
    proc = run_client(*args)
    assert proc.returncode == 2
    assert f"{loose}: permissions 0o644 are too open for a private key" in " ".join(
        proc.stderr.split()
    )
    assert "chmod 600" in proc.stderr


def test_a_client_killed_mid_run_does_not_stop_the_federation(pki, data, tmp_path, processes):
    port = free_port()
    server = start_server_for_owners(
        processes,
        pki,
        tmp_path / "server",
        port,
        3,
        "num-rounds=3",
        "min-train-nodes=2",
        "round-timeout-s=20",
        f"out-dir='{tmp_path / 'run'}'",
        eval_data=data / "eval.csv",
    )
    owners = [
        processes.start(
            f"owner-{i}",
            *client_args(pki, port, f"owner-{i}", data / f"owner-{i}.csv", tmp_path / f"o{i}"),
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 300
    while "[ROUND 2/3]" not in server.log_text():
        assert server.running and time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.2)
    owners[2].stop(grace_s=0)  # the data owner's machine goes away in the middle of round 2
    assert server.wait(timeout_s=600) == 0, server.log_text()[-4000:]

    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    owner_keys = keys(pki, 3)
    assert sorted(rounds[1]["participants"]) == sorted(owner_keys)
    for entry in rounds[2:]:
        assert set(owner_keys[:2]) <= set(entry["participants"])
    assert owner_keys[2] not in rounds[3]["participants"]
    log = verify_log(next((tmp_path / "run" / "audit").rglob("audit.jsonl")))
    assert log.ok, log.problem
    dropped = [e["data"] for e in log.entries if e["type"] == "clients-dropped"]
    assert dropped, "the server records who dropped"
    # ... by the key it authenticated with, in the audit log and in metrics.json
    assert all(d["owners"] == [owner_keys[2]] for d in dropped)
    assert any(entry["late"] == [owner_keys[2]] for entry in rounds[2:])
    assert any(e["type"] == "run-end" for e in log.entries)


def test_owners_fine_tune_minilm_over_tls_with_their_own_device_and_cache(
    pki, data, tmp_path, processes
):
    """The deployed path with the pretrained encoder: the plan names the model, each
    owner picks its device and keeps its encodings in its own cache, mode 0600."""
    port = free_port()
    server = start_server_for_owners(
        processes,
        pki,
        tmp_path / "server",
        port,
        2,
        "num-rounds=2",
        f"out-dir='{tmp_path / 'run'}'",
        "model='minilm'",
        "finetune-layers=1",
        "max-tokens=32",
        eval_data=data / "eval.csv",
    )
    owners = [tmp_path / f"owner-{i}" for i in range(2)]
    for i, (home, device) in enumerate(zip(owners, ("cpu", "auto"), strict=True)):
        processes.start(
            f"owner-{i}",
            *client_args(
                pki,
                port,
                f"owner-{i}",
                data / f"owner-{i}.csv",
                home,
                "--device",
                device,
                "--cache-dir",
                str(home / "cache"),
            ),
        )
    assert server.wait(timeout_s=600) == 0, server.log_text()[-4000:]

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert sorted(metrics["rounds"][-1]["epsilon"]) == sorted(keys(pki, 2))
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert (meta["model"], meta["finetune-layers"], meta["max-tokens"]) == ("minilm", 1, 32)
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert "layers.0.attention.self.query.weight" in state
    for home in owners:
        ledger = PrivacyLedger(home / "ledgers")
        assert [(e.kind, e.server_round) for e in ledger.entries()] == [
            ("count", 1),  # the record count's DP release, once, before round 1
            ("train", 1),
            ("train", 2),
        ]
        (cached,) = (home / "cache").glob("encoded-*.npz")
        assert cached.stat().st_mode & 0o777 == 0o600
        log = verify_log(home / "audit" / "audit.jsonl")
        assert log.ok, log.problem
        devices = {e["data"]["device"] for e in log.entries if e["type"] == "round-start"}
        assert devices == {"cpu"}  # this machine has no GPU; "auto" resolved to CPU
