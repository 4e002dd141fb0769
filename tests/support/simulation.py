"""`fedshield simulate` as the simulation tests run it: a subprocess with a tag of its own
in its environment, which the Ray processes it starts inherit."""

from __future__ import annotations

import os
import subprocess
import uuid

from tests.support.cli import FEDSHIELD

# The name of the environment variable carrying a simulation's tag.
TAG = "FEDSHIELD_TEST_SIMULATION"


def simulate(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``fedshield simulate`` in a subprocess whose environment (inherited by the Ray
    processes it starts) carries a tag of its own, in ``proc.tag``."""
    tag = uuid.uuid4().hex
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        TAG: tag,
    }
    proc = subprocess.run(
        [*FEDSHIELD, "simulate", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    proc.tag = tag
    return proc
