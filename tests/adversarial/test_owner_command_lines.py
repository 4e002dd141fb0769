"""Least privilege at the owner (issue 23, part 5): any local user can read a process's
arguments (`ps`, /proc/PID/cmdline). An owner who starts with `fedshield client start
--config FILE` shows no data path, policy, folder, budget or node config there, in the
`client start` process, flower-supernode or fedshield's executor; the config file itself
must be the owner's alone."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from fedshield.client.supernode import CONNECTED_LINE
from tests.support.deployment import Processes, serve
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

# The deployment tests' fixtures (tests/conftest.py): the federation's PKI, small IMDB
# CSVs per owner, and the process reaper.

BUDGET = "4.375"  # distinctive, so that finding it in an argument means it leaked
POLICY = 'entities = ["EMAIL_ADDRESS", "URL"]\n\n[operators]\nEMAIL_ADDRESS = "mask"\n'


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the kernel's children lists."""
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            # A thread or process that ended meanwhile has no children left to show.
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                queue += [int(c) for c in (task / "children").read_text().split()]
    return tree


def command_lines(pids: list[int]) -> dict[int, str]:
    """What `ps` shows of each process: its arguments, as /proc/PID/cmdline holds them."""
    lines = {}
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        lines[pid] = raw.replace(b"\0", b" ").decode(errors="replace")
    return lines


def owner_config(pki: Path, data_file: Path, home: Path, superlink_port: int) -> Path:
    policy = home / "policy.toml"
    policy.write_text(POLICY)
    config = home / "owner.toml"
    config.write_text(
        "\n".join(
            [
                f'superlink = "127.0.0.1:{superlink_port}"',
                f'ca = "{pki / "ca.crt"}"',
                f'auth-key = "{pki / "owner-0.key"}"',
                f'data = "{data_file}"',
                f"epsilon-budget = {BUDGET}",
                f'desensitise-policy = "{policy}"',
                f'ledger-dir = "{home / "ledgers"}"',
                f'audit-dir = "{home / "audit"}"',
                f'cache-dir = "{home / "cache"}"',
                f'key-dir = "{home / "keys"}"',
                'owner-id = "owner-0"',
                f"port = {free_port()}",
                "max-retries = 2",
                "",
            ]
        )
    )
    config.chmod(0o600)
    return config


def test_ps_shows_no_data_path_policy_or_settings_of_an_owner_started_with_config(
    pki, data, tmp_path, processes: Processes
):
    served = serve(
        processes,
        pki,
        tmp_path,
        2,  # waits for a second node that never comes: no run starts
        "--node-key",
        str(pki / "owner-0.pub"),
        "--wait-nodes",
        "2",
        "--node-timeout-s",
        "600",
        "--classes",
        "0,1",
        "--eval-data",
        str(data / "eval.csv"),
    )
    home = tmp_path / "owner-0"
    home.mkdir(mode=0o700)
    config = owner_config(pki, data / "owner-0.csv", home, served.port)
    owner = processes.start("owner-0", "client", "start", "--config", str(config))

    deadline = time.monotonic() + 90
    while True:
        lines = command_lines(process_tree(owner.popen.pid))
        executor = [pid for pid, line in lines.items() if "fedshield.client.executor" in line]
        if CONNECTED_LINE in owner.log_text() and executor:
            break
        assert owner.running and time.monotonic() < deadline, owner.log_text()[-3000:]
        time.sleep(0.2)
    assert len(lines) >= 3, lines  # client start, flower-supernode, the executor
    (settings_file,) = {
        line.split("--owner-settings-file ")[1].split()[0] for pid, line in lines.items()
        if pid in executor
    }  # fmt: skip

    secrets = [
        str(data / "owner-0.csv"),
        str((data / "owner-0.csv").resolve()),
        "owner-0.csv",
        str(home / "policy.toml"),
        "policy.toml",
        *(str(home / name) for name in ("ledgers", "audit", "cache", "keys")),
        BUDGET,
        POLICY.splitlines()[0],
        # The node config (client/node.py) reaches flower-supernode and the executor as a
        # 0600 file: its keys and values are never arguments.
        *(line.partition(" = ")[0] for line in Path(settings_file).read_text().splitlines()),
    ]
    secrets = [s for s in secrets if s]
    for pid, line in lines.items():
        found = [s for s in secrets if s in line]
        assert not found, f"process {pid} shows {found} in its arguments: {line}"
    # `ps` itself, over every process on the machine: the data path and the policy nowhere.
    listing = subprocess.run(["ps", "-eo", "args", "-ww"], capture_output=True, text=True).stdout
    assert str(data / "owner-0.csv") not in listing
    assert str(home / "policy.toml") not in listing
    # What flower-supernode needs as arguments by Flower's design (flwr 1.42 has no other
    # way in): the CA certificate (public) and the path, never the content, of the node's
    # authentication key; and the node config file's path in a private 0700 folder.
    supernode = next(line for line in lines.values() if "--auth-supernode-private-key" in line)
    assert str(pki / "owner-0.key") in supernode and "--node-config" in supernode


def test_a_config_file_others_can_read_is_refused_with_the_fix(tmp_path):
    from tests.support.deployment import run_client

    config = tmp_path / "owner.toml"
    config.write_text(f'data = "{tmp_path / "owner.csv"}"\nepsilon-budget = 3\n')
    config.chmod(0o644)
    refused = run_client("client", "start", "--config", str(config), timeout=60)
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert f"--config {config}: permissions 0o644" in message
    assert f"chmod 600 {config}" in message


def test_a_config_file_with_an_unknown_key_names_it_and_the_known_ones(tmp_path):
    from tests.support.deployment import run_client

    config = tmp_path / "owner.toml"
    config.write_text('data-path = "owner.csv"\nepsilon_budget = 3\n')
    config.chmod(0o600)
    refused = run_client("client", "start", "--config", str(config), timeout=60)
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert "unknown key(s) data-path, epsilon_budget" in message
    assert "known keys" in message and "epsilon-budget" in message and "data," in message
