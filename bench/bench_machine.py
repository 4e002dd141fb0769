"""What every bench result carries: when it ran, its command line, and the machine line
(uname, nproc, library versions)."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys

import torch


def machine() -> dict:
    import flwr
    import opacus

    def sh(*cmd):
        return subprocess.run(list(cmd), capture_output=True, text=True).stdout.strip()

    return {
        "uname": sh("uname", "-a"),
        "nproc": sh("nproc"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "flwr": flwr.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg": sh("cat", "/proc/loadavg"),
    }


def invocation() -> dict:
    """When this script ran, and the command line that ran it."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
    }


def provenance() -> dict:
    """The keys a bench result starts with: ``invocation()`` and the machine."""
    return {**invocation(), "machine": machine()}
