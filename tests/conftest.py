"""Shared fixtures: small real data slices written to disk in every supported format."""

from __future__ import annotations

import os

import pandas as pd
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


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
