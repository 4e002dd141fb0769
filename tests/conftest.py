"""Shared fixtures: small real data slices, the task identity Flower's runtime gives a
ClientApp process, the deployment tests' PKI, data and process reaper; and an
environment of this pytest process's own (one per pytest-xdist worker).

Helpers that are not fixtures live in tests/support/."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

_ENV_KEY = pytest.StashKey[tuple[pytest.MonkeyPatch, Path]]()


def pytest_configure(config: pytest.Config) -> None:
    """Set once per pytest process, before collection, undone at its end.

    - Flower's telemetry off; Ray leaves CUDA_VISIBLE_DEVICES alone for CPU-only actors.
    - ``RAY_TMPDIR``: every simulation a test starts (a subprocess inherits it) keeps
      Ray's session folder, sockets and cluster-address file under this process's own
      folder, so two xdist workers starting Ray at once share no Ray temp dir; the path
      is short because Ray's AF_UNIX sockets live there (107 bytes at most).
      ``RAY_ADDRESS`` is dropped so that no simulation joins a cluster started elsewhere.
    - ``FLWR_HOME``: what a Flower process launched without one (an owner's SuperNode)
      keeps in ~/.flwr goes to this process's own folder instead.
    - ``HOME``: an owner's defaults (~/.fedshield/keys, cache, ledgers) land in this
      process's own folder, never in the home of whoever runs the tests; matplotlib keeps
      its real config folder (a fresh one rebuilds the font cache).
    """
    own = Path(tempfile.mkdtemp(prefix="fedshield-t-", dir="/tmp"))
    patch = pytest.MonkeyPatch()
    patch.setenv("FLWR_TELEMETRY_ENABLED", os.environ.get("FLWR_TELEMETRY_ENABLED", "0"))
    patch.setenv(
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO",
        os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"),
    )
    patch.setenv("RAY_TMPDIR", str(own))
    patch.delenv("RAY_ADDRESS", raising=False)
    (own / "flwr-home").mkdir()
    patch.setenv("FLWR_HOME", str(own / "flwr-home"))
    patch.setenv(
        "MPLCONFIGDIR", os.environ.get("MPLCONFIGDIR", str(Path.home() / ".config" / "matplotlib"))
    )
    (own / "home").mkdir()
    patch.setenv("HOME", str(own / "home"))
    config.stash[_ENV_KEY] = (patch, own)


def pytest_unconfigure(config: pytest.Config) -> None:
    patch, own = config.stash.get(_ENV_KEY, (None, None))
    if patch is not None:
        patch.undo()
        shutil.rmtree(own, ignore_errors=True)


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


# The deployment tests (tests/integration/test_deployment.py and the modules that start a
# real `fedshield server start`): module-scoped, so each module gets its own.


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """The federation's PKI: CA, server certificate, owner-0..2 and a "stranger" key
    pair, another CA, and an expired server certificate."""
    from fedshield.common.pki import create_node_key, init_ca, issue_server_certificate

    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    issue_server_certificate(directory, ["localhost", "127.0.0.1"])
    for name in ("owner-0", "owner-1", "owner-2", "stranger"):
        create_node_key(directory, name)
    other = directory / "other"
    init_ca(other, name="someone else's CA")
    issue_server_certificate(
        directory,
        ["127.0.0.1"],
        days=1,
        valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
        cert_name="expired.pem",
        key_name="expired.key",
    )
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """eval.csv (1,000 IMDB reviews) and owner-0..2.csv (600 each), disjoint."""
    from fedshield.common.data import builtin_csv_path

    directory = tmp_path_factory.mktemp("data")
    frame = pd.read_csv(builtin_csv_path())
    frame = (
        frame[frame["source"] == "imdb"]
        .sample(n=2800, random_state=3)
        .reset_index(drop=True)[["text", "label"]]
    )
    frame.iloc[:1000].to_csv(directory / "eval.csv", index=False)
    for i in range(3):
        frame.iloc[1000 + 600 * i : 1600 + 600 * i].to_csv(
            directory / f"owner-{i}.csv", index=False
        )
    return directory


@pytest.fixture()
def processes(tmp_path):
    """A ``tests.support.deployment.Processes`` for this test: whatever it started is
    stopped at teardown, and a process still running under ``tmp_path`` fails the test."""
    from tests.support.deployment import Processes, kill_leftovers

    procs = Processes(tmp_path / "logs")
    yield procs
    procs.stop_all()
    leftovers = kill_leftovers(tmp_path)
    assert not leftovers.strip(), f"processes survived the test: {leftovers}"
