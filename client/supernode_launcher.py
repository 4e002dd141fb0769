"""``flower-supernode`` with a shorter, adaptive Fleet poll: Flower's own SuperNode,
started by fedshield so that a deployed round is not spent waiting.

Why: in flwr 1.42 the SuperNode's main loop (``flwr/supernode/start_client_internal.py``,
``start_client_internal``) sleeps a hard-coded 3 s after every Fleet poll that finds no
message, and ``_push_messages`` checks every 0.5 s whether the ClientApp's reply is ready.
Neither is a flag or an environment variable. A message the ServerApp sends therefore
waits up to 3 s (and for three owners, the slowest of three such waits) before an owner
even starts training, and every reply up to 0.5 s more.

What this changes, and nothing else (the TLS, node authentication, retries, node config
and Runtime API are flwr's, from the same arguments as ``flower-supernode``):

- the idle poll backs off exponentially: ``--poll-min-s`` (0.1 s) after any Fleet
  activity (a message received, a reply sent), x ``BACKOFF`` (1.5) after each empty
  poll, up to ``--poll-max-s`` (3 s, Flower's own interval). The wait before a message
  is picked up is then at most half the time since the node's last activity, so the next
  round's message, which follows the last reply within a server-side aggregation and
  evaluation, is seen within a fraction of a second; an idle node, or one not sampled in
  recent rounds, is back at Flower's 3 s within about 10 s (8-9 extra polls per gap), so
  the SuperLink's load from many owners stays at Flower's default plus a few polls per
  round from the owners that take part;
- the local waits (is the reply ready, is a reply object's content stored) check the
  SuperNode's in-memory state every ``LOCAL_WAIT_S`` (0.05 s, as the executor's task
  poll, ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``) instead of 0.5 s: no network involved.

How: ``shorten_supernode_waits`` (common/flower_compat.py, where every reach into
flwr's internals lives) maps those two literal waits and notes activity; then flwr's own
``flower-supernode`` entry point runs in this process. That reach first checks that the
installed flwr is the version it was written for and that the waits are where and what
they were; if not, this says so loudly and runs Flower's SuperNode unchanged (slower
rounds, nothing else lost).

    python -m fedshield.client.supernode_launcher [--poll-min-s S] [--poll-max-s S] -- \
        FLOWER-SUPERNODE ARGUMENTS...

Settings (also read by ``supernode_program()``, which builds that command line):
``FEDSHIELD_FLEET_POLL_MIN_S`` and ``FEDSHIELD_FLEET_POLL_MAX_S``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from importlib.metadata import entry_points

from fedshield.common.errors import ConfigError, DependencyMismatch
from fedshield.common.flower_compat import (
    FLWR_IDLE_POLL_S,
    describe_object_pulls,
    shorten_object_pull_retries,
    shorten_supernode_waits,
)

DEFAULT_POLL_MIN_S = 0.1
DEFAULT_POLL_MAX_S = float(FLWR_IDLE_POLL_S)  # flwr 1.42's own idle interval
BACKOFF = 1.5
LOCAL_WAIT_S = 0.05
POLL_MIN_ENV = "FEDSHIELD_FLEET_POLL_MIN_S"
POLL_MAX_ENV = "FEDSHIELD_FLEET_POLL_MAX_S"


class PollSchedule:
    """Exponential backoff between ``low`` and ``high`` seconds, reset by activity."""

    def __init__(self, low: float, high: float, factor: float = BACKOFF) -> None:
        if not 0 < low <= high:
            raise ValueError(f"poll interval: need 0 < min ({low}) <= max ({high}) seconds")
        if factor < 1:
            raise ValueError(f"poll backoff factor {factor} must be >= 1")
        self.low, self.high, self.factor = low, high, factor
        self._next = low  # a node that just connected backs off from the short end
        self._lock = threading.Lock()

    def activity(self) -> None:
        with self._lock:
            self._next = self.low

    def next_wait(self) -> float:
        with self._lock:
            wait = self._next
            self._next = min(self._next * self.factor, self.high)
            return wait


def install(schedule: PollSchedule, local_wait_s: float = LOCAL_WAIT_S) -> str | None:
    """Shorten the waits in flwr's SuperNode loop; returns why not, or None when done."""
    try:
        shorten_supernode_waits(schedule.next_wait, local_wait_s, schedule.activity)
    except DependencyMismatch as mismatch:
        return str(mismatch)
    return None


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < number <= 60:
        raise argparse.ArgumentTypeError(f"{value} s: choose a poll interval in (0, 60] seconds")
    return number


def supernode_program(
    poll_min_s: float | None = None, poll_max_s: float | None = None
) -> list[str]:
    """The command that stands where ``flower-supernode`` would: append its arguments.

    Unset intervals come from ``FEDSHIELD_FLEET_POLL_MIN_S`` / ``..._MAX_S``, else the
    defaults; a bad value raises ConfigError naming the variable.
    """
    values = []
    for given, env, default in (
        (poll_min_s, POLL_MIN_ENV, DEFAULT_POLL_MIN_S),
        (poll_max_s, POLL_MAX_ENV, DEFAULT_POLL_MAX_S),
    ):
        if given is None:
            text = os.environ.get(env, "").strip()
            try:
                given = _seconds(text) if text else default
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(
                    f"{env}={text}: {exc}; or unset it (default {default} s)"
                ) from None
        values.append(given)
    if values[0] > values[1]:
        raise ConfigError(
            f"Fleet poll: minimum {values[0]:g} s > maximum {values[1]:g} s; check "
            f"{POLL_MIN_ENV} and {POLL_MAX_ENV}"
        )
    return [
        sys.executable,
        "-m",
        "fedshield.client.supernode_launcher",
        "--poll-min-s",
        f"{values[0]:g}",
        "--poll-max-s",
        f"{values[1]:g}",
        "--",
    ]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        ours, flower_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    else:
        ours, flower_args = [], argv
    parser = argparse.ArgumentParser(
        prog="python -m fedshield.client.supernode_launcher",
        description="flower-supernode with an adaptive Fleet poll (see the module docstring)",
    )
    parser.add_argument("--poll-min-s", type=_seconds, default=DEFAULT_POLL_MIN_S)
    parser.add_argument("--poll-max-s", type=_seconds, default=DEFAULT_POLL_MAX_S)
    args = parser.parse_args(ours)
    try:
        schedule = PollSchedule(args.poll_min_s, args.poll_max_s)
    except ValueError as exc:
        parser.error(str(exc))
    try:  # the SuperNode pulls a message's objects while the ServerApp still pushes them
        shorten_object_pull_retries()
        print(f"fedshield: object pull retries {describe_object_pulls()}", flush=True)
    except DependencyMismatch as exc:
        print(f"fedshield: WARNING: {exc}", file=sys.stderr, flush=True)
    reason = install(schedule)
    if reason is None:
        print(
            f"fedshield: Fleet poll {schedule.low:g}-{schedule.high:g} s "
            f"(x{BACKOFF:g} after each empty poll, reset by activity)",
            flush=True,
        )
    else:
        print(
            f"fedshield: WARNING: {reason}. Until then Flower's SuperNode runs unchanged, "
            f"polling every {FLWR_IDLE_POLL_S} s: rounds will be slower.",
            file=sys.stderr,
            flush=True,
        )
    # The `flower-supernode` console script's own target (public), in this process so
    # that the shortened waits apply.
    (flower_supernode,) = entry_points(group="console_scripts", name="flower-supernode")
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode.load()()


if __name__ == "__main__":
    main()
