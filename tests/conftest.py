"""Shared fixtures and constants: small real data slices, the ``fedshield`` command, and
the task identity Flower's runtime gives a ClientApp process."""

from __future__ import annotations

import os
import sys

import pandas as pd
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

# The CLI as a subprocess, from this interpreter (no reliance on PATH).
FEDSHIELD = [sys.executable, "-c", "from fedshield.cli.app import main; main()"]


@pytest.fixture()
def flower_task_identity():
    """What Flower's runtime sets in a ClientApp process before it handles a message."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 42, 1


@pytest.fixture(scope="session")
def imdb_frame() -> pd.DataFrame:
    from fedshield.common.data import builtin_csv_path

    frame = pd.read_csv(builtin_csv_path())
    frame = frame[frame["source"] == "imdb"]
    return frame.sample(n=600, random_state=0).reset_index(drop=True)[["text", "label"]]


@pytest.fixture()
def owner_csv(tmp_path, imdb_frame):
    path = tmp_path / "owner.csv"
    imdb_frame.to_csv(path, index=False)
    return path


RELEASED_COUNT = 600


@pytest.fixture()
def fixed_count_release(monkeypatch):
    """Every count release in this test draws the same value, RELEASED_COUNT, whatever the
    owner holds: with it, an owner on D and on D minus one record must send identical
    fields outside the update (the count is the DP release both derive from)."""
    from fedshield.client import count

    monkeypatch.setattr(count, "noisy_count", lambda exact, std: RELEASED_COUNT)
    return RELEASED_COUNT
