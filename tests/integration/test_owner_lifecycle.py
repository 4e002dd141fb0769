"""A data owner's `fedshield client start` from start to stop, against a real
`fedshield server start` on 127.0.0.1 (TLS, node authentication): it may start before
the server, gives up in bounded time, checks the federation's class list before joining,
stops on SIGTERM and SIGINT within seconds, and says so when the operator removed it."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from fedshield.audit.verify import verify_log
from fedshield.client.ledger import PrivacyLedger
from fedshield.common.errors import ConfigError
from fedshield.common.pki import check_private_key_file
from fedshield.common.processes import flower_env
from tests.support.cli import FEDSHIELD
from tests.support.deployment import Processes, client_args, run_client, start_server
from tests.support.ports import free_port

# The PKI, the data slices and the process reaper of the deployment tests: the fixtures
# pki, data and processes (tests/conftest.py).

pytestmark = pytest.mark.slow


def _with(args: list[str], option: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(option) + 1] = value
    return args


def _server(processes: Processes, pki: Path, data: Path, state: Path, port: int, *keys: str):
    """`server start` with these owners' keys registered, waiting for one more node than
    that (so no run starts), or for exactly them with ``keys[-1] == 'run'``."""
    run = keys and keys[-1] == "run"
    keys = keys[:-1] if run else keys
    return start_server(
        processes,
        pki,
        state,
        port,
        len(keys) if run else len(keys) + 1,
        *[a for k in keys for a in ("--node-key", str(pki / f"{k}.pub"))],
        "--wait-nodes",
        str(len(keys) if run else len(keys) + 1),
        "--node-timeout-s",
        "600",
        "--eval-data",
        str(data / "eval.csv"),
        "--classes",
        "0,1",
        "--run-config",
        "num-rounds=1",
        "--run-config",
        "min-train-nodes=1",
    )


def _wait_for(predicate, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def _node_processes(port: int) -> list[str]:
    """flower-supernode (--port P) and the executor (--runtime-api-address 127.0.0.1:P),
    not the `client start` that launched them."""
    listing = subprocess.run(
        ["pgrep", "-af", f"127.0.0.1:{port}( |$)|--port {port}( |$)"],
        text=True,
        capture_output=True,
    ).stdout
    return [ln for ln in listing.splitlines() if "client start" not in ln and "pgrep" not in ln]


def _entries(home: Path, kind: str) -> list[dict]:
    log = verify_log(home / "audit" / "audit.jsonl")
    assert log.ok, log.problem
    return [e["data"] for e in log.entries if e["type"] == kind]


def test_an_owner_started_before_the_server_waits_then_trains(pki, data, tmp_path, processes):
    port = free_port()
    home = tmp_path / "owner-0"
    args = client_args(pki, port, "owner-0", data / "owner-0.csv", home)
    owner = processes.start("owner-0", *_with(args, "--max-retries", "0"), "--max-wait-time", "600")
    _wait_for(lambda: "(attempt 2, " in owner.log_text(), 180, "the owner's second attempt")
    assert owner.running
    server = _server(processes, pki, data, tmp_path / "server", port, "owner-0", "run")
    assert server.wait(timeout_s=600) == 0, server.log_text()[-3000:]

    text = owner.log_text()
    assert (
        "not reachable yet (attempt 1, 0 s): [Errno 111] Connection refused; next attempt in 1 s"
        in text
    )
    assert "answered after" in text
    entries = PrivacyLedger(home / "ledgers").entries()
    assert [(e.kind, e.server_round) for e in entries] == [("count", 1), ("train", 1)]
    (start,) = _entries(home, "node-start")
    assert start["superlink-wait"]["attempts"] >= 2
    assert start["federation-classes"] == ["0", "1"]
    assert start["retry-policy"] == "--max-wait-time 600 s"


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (("--max-retries", "2"), "after 3 attempt(s)"),
        (("--max-retries", "0", "--max-wait-time", "2.5"), "(--max-wait-time 2.5 s)"),
    ],
)
def test_an_owner_gives_up_when_no_server_comes(pki, data, tmp_path, limits, expected):
    port = free_port()  # nothing listens there
    args = client_args(pki, port, "owner-0", data / "owner-0.csv", tmp_path / "o")
    args = args[: args.index("--max-retries")] + list(limits)
    started = time.monotonic()
    proc = run_client(*args)
    elapsed = time.monotonic() - started
    assert proc.returncode == 69, proc.stderr
    message = " ".join(proc.stderr.split())
    assert f"gave up reaching the SuperLink at 127.0.0.1:{port} after " in message
    assert expected in message
    assert "`fedshield server start` is running" in message
    assert "not reachable yet (attempt 1" in proc.stdout
    assert "next attempt in 1 s" in proc.stdout
    assert elapsed < 120  # imports under load, plus about 3 s of waiting
    assert not (tmp_path / "o" / "audit" / "audit.jsonl").exists()  # it never joined


def test_check_only_shows_the_class_list_and_flags_a_label_the_federation_lacks(
    pki, data, tmp_path, processes
):
    port = free_port()
    _server(processes, pki, data, tmp_path / "server", port, "owner-0")
    frame = pd.read_csv(data / "owner-0.csv", dtype={"label": str})
    frame.loc[:9, "label"] = "spam"
    frame.to_csv(tmp_path / "three-labels.csv", index=False)

    fine = run_client(
        *client_args(pki, port, "owner-0", data / "owner-0.csv", tmp_path / "a"), "--check-only"
    )
    assert fine.returncode == 0, fine.stderr
    published = f"published by the operator at https://127.0.0.1:{port}/fedshield/v1/federation"
    assert f"federation classes (2, {published}): 0, 1" in fine.stdout
    assert "your labels are all among the federation's classes" in fine.stdout

    flagged = run_client(
        *client_args(pki, port, "owner-0", tmp_path / "three-labels.csv", tmp_path / "b"),
        "--check-only",
    )
    assert flagged.returncode == 2
    assert "PROBLEM: labels in your data that the federation lacks: spam (10 records)" in (
        flagged.stdout
    )
    assert "labels spam are not among the federation's classes [0,1]" in " ".join(
        flagged.stderr.split()
    )
    assert not (tmp_path / "b" / "audit" / "audit.jsonl").exists()

    (tmp_path / "server" / "federation.json").unlink()  # as before a server published one
    unpublished = run_client(
        *client_args(pki, port, "owner-0", data / "owner-0.csv", tmp_path / "c"), "--check-only"
    )
    assert unpublished.returncode == 0, unpublished.stderr
    assert "federation classes: not checked: class list not published yet" in unpublished.stdout


def test_owners_stop_within_seconds_on_sigterm_and_sigint_and_see_their_removal(
    pki, data, tmp_path, processes
):
    port = free_port()
    state = tmp_path / "server"
    server = _server(processes, pki, data, state, port, "owner-0", "owner-1", "owner-2", "stranger")
    homes = {k: tmp_path / k for k in ("owner-0", "owner-1", "owner-2", "stranger")}
    ports = {}
    owners = {}
    for key in ("owner-0", "owner-2", "stranger"):
        args = client_args(pki, port, key, data / "owner-0.csv", homes[key])
        args = _with(args, "--max-retries", "1")
        ports[key] = int(args[args.index("--port") + 1])
        owners[key] = processes.start(key, *args)
    # owner-1 as a background job of a non-interactive shell starts it: SIGINT ignored.
    args = client_args(pki, port, "owner-1", data / "owner-1.csv", homes["owner-1"])
    ports["owner-1"] = int(args[args.index("--port") + 1])
    log_1 = tmp_path / "logs" / "owner-1.log"
    with open(log_1, "wb") as log:
        sigint_ignored = subprocess.Popen(
            [*FEDSHIELD, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=flower_env(),
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    try:
        for key, text in (
            ("owner-0", owners["owner-0"].log_text),
            ("owner-1", lambda: log_1.read_text(errors="replace")),
            ("owner-2", owners["owner-2"].log_text),
            ("stranger", owners["stranger"].log_text),
        ):
            _wait_for(lambda text=text: "SuperNode ID:" in text(), 300, f"{key} to join")
            assert _node_processes(ports[key]), key

        figures = {}
        for key, popen, signum in (
            ("owner-0", owners["owner-0"].popen, signal.SIGTERM),
            ("owner-1", sigint_ignored, signal.SIGINT),
        ):
            os.kill(popen.pid, signum)
            gone = _wait_for(lambda key=key: not _node_processes(ports[key]), 60, key)
            exited = _wait_for(lambda popen=popen: popen.poll() is not None, 120, key)
            figures[key] = (gone, gone + exited)
            assert popen.returncode == 128 + signum, key
            name = signal.Signals(signum).name
            (stop,) = _entries(homes[key], "node-stop")
            assert stop["reason"] == "signal" and stop["signal"] == name
        print(f"node processes gone / client exited after the signal (s): {figures}")
        for key, (gone, _exited) in figures.items():
            assert gone < 6.0, f"{key}: SuperNode and executor took {gone:.1f} s to stop"
        assert "stopped by SIGTERM" in owners["owner-0"].log_text()
        assert "stopped by SIGINT" in log_1.read_text()

        removed = subprocess.run(
            [
                *FEDSHIELD,
                "server",
                "remove-owner",
                "--node-key",
                str(pki / "owner-2.pub"),
                "--reason",
                "consent withdrawn by the hospital board",
                "--state",
                str(state),
            ],
            capture_output=True,
            text=True,
            env=flower_env(),
            timeout=180,
        )
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert owners["owner-2"].wait(timeout_s=120) == 77
        assert not _node_processes(ports["owner-2"])
        text = owners["owner-2"].log_text()
        assert "removed by the operator at " in text
        assert ": consent withdrawn by the hospital board" in text
        (stop,) = _entries(homes["owner-2"], "node-stop")
        assert stop["reason"] == "removed" and stop["exit-code"] == 77
        assert stop["operator-notice"]["reason"] == "consent withdrawn by the hospital board"

        # The server goes away: with --max-retries 1, the last owner gives up and says so.
        server.stop(grace_s=10)
        assert owners["stranger"].wait(timeout_s=120) == 69
        assert not _node_processes(ports["stranger"])
        assert f"the SuperLink at 127.0.0.1:{port} went away" in owners["stranger"].log_text()
        (stop,) = _entries(homes["stranger"], "node-stop")
        assert stop["reason"] == "superlink-gone"
    finally:
        if sigint_ignored.poll() is None:
            os.killpg(sigint_ignored.pid, signal.SIGKILL)
            sigint_ignored.wait()


def test_a_public_key_passed_as_the_node_key_gets_one_line(pki, data, tmp_path):
    args = client_args(pki, 1, "owner-1", data / "owner-1.csv", tmp_path / "o")
    proc = run_client(*_with(args, "--auth-key", str(pki / "owner-1.pub")))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {pki / 'owner-1.pub'} is a public key; pass the private key "
        f"{pki / 'owner-1.key'} made by `fedshield pki node`"
    ]
    assert "chmod" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_file_that_is_no_private_key_is_named(pki, tmp_path):
    with pytest.raises(ConfigError, match="is a certificate, not a private key"):
        check_private_key_file(pki / "ca.crt")
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    junk.chmod(0o600)
    with pytest.raises(ConfigError, match="is not a private key"):
        check_private_key_file(junk)
    check_private_key_file(pki / "owner-0.key")  # the real one passes


@pytest.mark.parametrize("option", ["--data", "--ca", "--auth-key"])
def test_a_typo_in_a_path_answers_at_once(pki, data, tmp_path, option):
    args = client_args(pki, 1, "owner-0", data / "owner-0.csv", tmp_path / "o")
    wrong = args[args.index(option) + 1] + "x"
    args = _with(args, option, wrong)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = run_client(*args)
    wall_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{option} typo: {wall_s:.2f} s wall, {cpu_s:.2f} s CPU")
    assert proc.returncode == 2, proc.stderr
    assert wrong in proc.stderr
    assert cpu_s < 2.0, f"{cpu_s:.2f} s of CPU: something heavy is imported before the checks"
    assert wall_s < 4.0, f"{wall_s:.2f} s"


def test_the_help_documents_the_retry_semantics_and_exit_codes():
    proc = subprocess.run(
        [*FEDSHIELD, "client", "start", "--help"], capture_output=True, text=True, timeout=60
    )
    text = " ".join(proc.stdout.replace("│", " ").split())
    assert "(this many + 1 attempts)" in text and "0 = no limit" in text
    assert "77 the operator removed this node" in text
    assert "69 gave up reaching the SuperLink" in text
