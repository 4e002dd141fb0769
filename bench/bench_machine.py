"""The machine line every bench result carries: uname, nproc, library versions."""

from __future__ import annotations

import platform
import subprocess

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
