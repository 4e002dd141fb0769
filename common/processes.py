"""Start and stop the long-running Flower processes (SuperLink, SuperNode) we launch.

Each runs in its own session (process group), with its output in a log file, so that
stopping it also stops the children Flower starts (flower-superexec, flwr-clientapp).
``stop_process_groups`` is the one way both sides stop such groups: SIGTERM, a grace
period, SIGKILL, each leader reaped, zombies not counted as alive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedshield.common.errors import FedshieldError

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Otherwise SuperLink/SuperNode run `uv sync` on the app's dependencies at run time.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_binary(name: str) -> str:
    """The path of a Flower command (flower-superlink, flwr, ...) next to this Python."""
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        raise FedshieldError(
            f"'{name}' not found; install fedshield (it brings flwr) in this environment"
        )
    return found


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, **FLOWER_ENV}
    # Flower starts helpers (flower-superexec, flwr-clientapp) by name: make sure the ones
    # next to this interpreter are found even when the venv is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


class ManagedProcess:
    """A child in its own process group; ``stop()`` ends the whole group."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - the child writes to it until stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout=timeout_s)

    def stop(self, grace_s: float = 5.0) -> None:
        stop_process_groups([self.popen], grace_s, kill_wait_s=5.0)
        self._log.close()


def stop_process_groups(
    children: list[subprocess.Popen], grace_s: float, kill_wait_s: float = 2.0
) -> None:
    """SIGTERM each child's process group, SIGKILL what is left after ``grace_s``, then
    wait up to ``kill_wait_s`` for the groups to go. Every leader is reaped on the way."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _groups_alive(children):
            time.sleep(0.05)
        if not _groups_alive(children):
            return


def _groups_alive(children: list[subprocess.Popen]) -> bool:
    return sum(_group_alive(c) for c in children) > 0  # every child polled: none left a zombie


def _group_alive(child: subprocess.Popen) -> bool:
    child.poll()  # reap the leader: a zombie would keep its group looking alive
    try:
        os.killpg(child.pid, 0)
    except ProcessLookupError:
        return False
    return _live_member(child.pid)


def _live_member(pgid: int) -> bool:
    """Whether a process of group ``pgid`` runs. ``killpg(pgid, 0)`` also succeeds while
    an orphaned member (a task the executor forked) waits, a zombie, for an init that
    reaps slowly; /proc tells them apart on Linux."""
    procfs = Path("/proc")
    if not (procfs / "self" / "stat").is_file():
        return True
    for stat in procfs.glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(group) == pgid and state != "Z":
            return True
    return False


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn``: on Linux, the child gets ``sig`` when the process that started it
    dies, even by SIGKILL, so a killed launcher leaves no orphaned SuperNode behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, sig)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
