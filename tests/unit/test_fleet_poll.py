"""The waits a deployed round spends polling: fedshield's SuperNode launcher (adaptive
Fleet poll, client/supernode_launcher.py) and the ServerApp's reply poll
(server/poll.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedshield.client import supernode_launcher as launcher
from fedshield.common.dp_event import DpEvent
from fedshield.common.errors import ConfigError, DependencyMismatch
from tests.support.grid import OwnersAnsweringAfter, train_messages
from tests.support.ports import free_port


def test_poll_backs_off_to_flowers_interval_and_resets_on_activity():
    schedule = launcher.PollSchedule(0.1, 3.0)
    waits = [schedule.next_wait() for _ in range(12)]
    assert waits[0] == pytest.approx(0.1)
    assert all(b >= a for a, b in zip(waits, waits[1:], strict=False))
    assert waits[-1] == 3.0
    # Reaches Flower's interval within about 10 s of idling: the load stays Flower's.
    assert sum(waits[: waits.index(3.0)]) < 12
    schedule.activity()
    assert schedule.next_wait() == pytest.approx(0.1)


def test_settings_are_checked_with_the_variable_named(monkeypatch):
    monkeypatch.setenv(launcher.POLL_MIN_ENV, "fast")
    with pytest.raises(ConfigError, match="FEDSHIELD_FLEET_POLL_MIN_S=fast"):
        launcher.supernode_program()
    monkeypatch.setenv(launcher.POLL_MIN_ENV, "5")
    with pytest.raises(ConfigError, match="minimum 5 s > maximum 3 s"):
        launcher.supernode_program()
    monkeypatch.setenv(launcher.POLL_MIN_ENV, "0.2")
    command = launcher.supernode_program()
    assert command[:3] == [sys.executable, "-m", "fedshield.client.supernode_launcher"]
    assert command[command.index("--poll-min-s") + 1] == "0.2"
    assert command[-1] == "--"


def test_launcher_hands_its_arguments_to_flower_supernode():
    out = subprocess.run(
        [sys.executable, "-m", "fedshield.client.supernode_launcher", "--poll-min-s", "0.2",
         "--", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fedshield: Fleet poll 0.2-3 s" in out.stdout
    assert "--auth-supernode-private-key" in out.stdout  # flwr's own parser answered


def test_replies_are_collected_within_one_short_interval(flower_task_identity):
    from fedshield.server.poll import PromptGrid

    owners = OwnersAnsweringAfter([0.3] * 3)  # every owner's reply arrives after 0.3 s
    grid = PromptGrid(owners, interval_s=0.05)  # type: ignore[arg-type]
    started = time.monotonic()
    replies = list(grid.send_and_receive(train_messages(3, id_prefix="m"), timeout=10))
    took = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert 0.3 <= took < 0.3 + 0.5  # Flower's HttpGrid: up to 3 s more
    # A timeout still ends the wait, with what has arrived.
    late = PromptGrid(OwnersAnsweringAfter([60] * 2), interval_s=0.05)  # type: ignore[arg-type]
    started = time.monotonic()
    assert list(late.send_and_receive(train_messages(2, id_prefix="m"), timeout=0.4)) == []
    assert time.monotonic() - started < 1.5


def test_grid_poll_setting_is_checked(monkeypatch):
    from fedshield.server.poll import PromptGrid

    monkeypatch.setenv("FEDSHIELD_GRID_POLL_S", "0")
    with pytest.raises(ConfigError, match="FEDSHIELD_GRID_POLL_S=0"):
        PromptGrid(OwnersAnsweringAfter([0]))  # type: ignore[arg-type]


@pytest.mark.slow
def test_launched_supernode_joins_a_tls_superlink_with_node_auth(tmp_path: Path):
    """The launcher's SuperNode is Flower's: TLS, node authentication, through the gateway."""
    from fedshield.common.pki import create_node_key, init_ca, issue_server_certificate
    from fedshield.common.processes import ManagedProcess, flower_env
    from fedshield.server.deployment import (
        online_nodes,
        register_node_keys,
        write_connection_config,
    )
    from fedshield.server.superlink import ServingSuperLink, SuperLinkSettings

    pki = tmp_path / "pki"
    init_ca(pki)
    issue_server_certificate(pki, ["127.0.0.1"])
    create_node_key(pki, "owner")
    settings = SuperLinkSettings(
        pki_dir=pki, state_dir=tmp_path / "state", port=free_port(), internal_port=free_port()
    )
    write_connection_config(settings)
    link = ServingSuperLink(settings)
    node = None
    try:
        register_node_keys(settings, [pki / "owner.pub"])
        node = ManagedProcess(
            "supernode",
            [
                *launcher.supernode_program(),
                "--superlink", settings.address,
                "--root-certificates", str(pki / "ca.crt"),
                "--auth-supernode-private-key", str(pki / "owner.key"),
                "--isolation", "process",
                "--host", "127.0.0.1",
                "--port", str(free_port()),
            ],
            tmp_path / "supernode.log",
            flower_env(),
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while online_nodes(settings) < 1:
            assert node.running, node.log_text()[-2000:]
            assert time.monotonic() < deadline, node.log_text()[-2000:]
            time.sleep(0.5)
        log = node.log_text()
        assert "fedshield: Fleet poll 0.1-3 s" in log
        assert "WARNING" not in log.split("Fleet poll")[0]
        assert link.refused_requests() == 0
    finally:
        if node is not None:
            node.stop()
        link.stop()


def test_warm_up_does_what_each_task_would_otherwise_do_first():
    """A forked task spent ~1 s importing torch._dynamo (the first optimizer a process
    builds does) and httpcore; the zygote does it once (client/executor.py)."""
    from flwr.supercore.inflatable import inflatable_utils

    from fedshield.client import executor

    executor.warm_up(None)
    assert {"torch._dynamo", "httpcore", "dp_accounting.pld.pld_privacy_accountant"} <= set(
        sys.modules
    )
    assert inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] == 0.05


def test_forked_tasks_hand_accounting_results_back_to_the_zygote():
    """What a task computed reaches the zygote through a non-blocking pipe (one atomic
    line per result), so the next fork starts with it (client/executor.py)."""
    import os

    from fedshield.client import executor
    from fedshield.common import privacy

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    try:
        privacy.learned_lines()
        events = [DpEvent(3.7, 1.0, 3)]
        epsilon = privacy.epsilon_spent(events, 1e-5)
        key = (privacy._grouped(events), 1e-5)
        executor._hand_back_learned(write_fd)  # in the task, before it exits
        privacy._memos["_epsilon_pld"].pop(key)
        pending = bytearray()
        executor._take_learned(read_fd, pending)  # in the zygote, before the next fork
        assert privacy._memos["_epsilon_pld"][key] == epsilon and pending == b""
        executor._take_learned(read_fd, pending)  # nothing new: returns at once
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_object_pulls_retry_within_a_twentieth_of_a_second_with_flowers_patience():
    """A message pulled before its objects arrive waited Flower's 1 s (doubling to 10 s)
    per retry: about 1 s each way of every deployed round (common/flower_compat.py)."""
    from flwr.supercore.inflatable import inflatable_utils

    from fedshield.common.flower_compat import shorten_object_pull_retries

    shorten_object_pull_retries()
    shorten_object_pull_retries()  # idempotent
    for function in (
        inflatable_utils.pull_objects,
        inflatable_utils.pull_and_inflate_object_from_tree,
    ):
        defaults = function.__kwdefaults__
        # Fast first retries; an object that never comes is polled at Flower's 10 s cap.
        assert defaults["initial_backoff"] == 0.05 and defaults["backoff_cap"] == 10
        # Patience before giving up on a missing object: Flower's 500 tries took ~4,965 s.
        waits, wait = [], defaults["initial_backoff"]
        for _ in range(defaults["max_tries_per_object"]):
            waits.append(min(wait, defaults["backoff_cap"]))
            wait *= 2
        assert 4_900 < sum(waits) < 5_100

    calls = []

    def arrives_after_0_3_s(object_id: str) -> bytes:
        calls.append(time.monotonic())
        if calls[-1] - calls[0] < 0.3:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"content"

    started = time.monotonic()
    assert inflatable_utils.pull_objects(["a"], arrives_after_0_3_s) == {"a": b"content"}
    assert time.monotonic() - started < 0.3 + 0.5  # Flower's own: 1 s, then 3 s


def test_object_pull_retries_are_left_alone_when_flower_changed_them(monkeypatch):
    from flwr.supercore.inflatable import inflatable_utils

    from fedshield.common.flower_compat import shorten_object_pull_retries

    changed = {**inflatable_utils.pull_objects.__kwdefaults__, "initial_backoff": 2}
    monkeypatch.setattr(inflatable_utils.pull_objects, "__kwdefaults__", changed)
    with pytest.raises(DependencyMismatch, match="retry defaults"):
        shorten_object_pull_retries()
    assert inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] == 2
