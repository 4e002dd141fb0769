"""Stop signals for the owner's node: SIGINT and SIGTERM stop its children first.

Guarantee: from ``StopSignals.__enter__`` to its exit, SIGINT and SIGTERM are recorded,
never raised, so that the node stops flower-supernode and its executor (and records why)
before it exits, even when the client inherited SIGINT as ignored.
"""

from __future__ import annotations

import signal
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM recorded instead of raised, so that the node stops its children
    before it exits; loops poll ``received`` or wait with ``sleep``.

    Installed explicitly for both: a client started in the background of a
    non-interactive shell inherits SIGINT as ignored, and Python then installs no
    handler of its own, so Ctrl-C or ``kill -INT`` would do nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, _frame) -> None:
        self.received = self.received or signum

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if a stop signal arrives; True if one did."""
        deadline = time.monotonic() + seconds
        while self.received is None and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


def interrupt_on_sigint() -> None:
    """Until ``StopSignals`` takes over: Ctrl-C interrupts the local checks even when the
    client inherited SIGINT as ignored (see ``StopSignals``)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
