"""The deployed federation of test_deployment.py with the pretrained encoder: `fedshield
server start` names the model in its plan and two `fedshield client start` SuperNodes
DP fine-tune MiniLM's top layer over TLS, each on its own device and with its own cache.

A module of its own: with --dist loadfile, one xdist worker takes it while another
takes test_deployment.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedshield.audit.verify import verify_log
from fedshield.client.ledger import PrivacyLedger
from tests.support.deployment import keys, start_federation, start_owner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """eval.csv (200 IMDB reviews) and owner-0..1.csv (150 each), disjoint: what this
    test checks (the plan, devices, caches, ledgers, logs) does not grow with the data,
    while MiniLM's encoding and fine-tuning on CPU do, record by record."""
    from fedshield.common.data import builtin_csv_path

    directory = tmp_path_factory.mktemp("small-data")
    frame = pd.read_csv(builtin_csv_path())
    frame = (
        frame[frame["source"] == "imdb"]
        .sample(n=500, random_state=3)
        .reset_index(drop=True)[["text", "label"]]
    )
    frame.iloc[:200].to_csv(directory / "eval.csv", index=False)
    for i in range(2):
        frame.iloc[200 + 150 * i : 350 + 150 * i].to_csv(directory / f"owner-{i}.csv", index=False)
    return directory


def test_owners_fine_tune_minilm_over_tls_with_their_own_device_and_cache(
    pki, small_data, tmp_path, processes
):
    """The deployed path with the pretrained encoder: the plan names the model, each
    owner picks its device and keeps its encodings in its own cache, mode 0600."""
    data = small_data
    minilm = ("model='minilm'", "finetune-layers=1", "max-tokens=32")
    served = start_federation(processes, pki, data, tmp_path, 2, "num-rounds=2", *minilm)
    owners = [tmp_path / f"owner-{i}" for i in range(2)]
    for i, (home, device) in enumerate(zip(owners, ("cpu", "auto"), strict=True)):
        extra = ("--device", device, "--cache-dir", str(home / "cache"))
        start_owner(processes, pki, data, served.port, f"owner-{i}", home, *extra)
    assert served.server.wait(timeout_s=600) == 0, served.server.log_text()[-4000:]

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert sorted(metrics["rounds"][-1]["epsilon"]) == sorted(keys(pki, 2))
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert (meta["model"], meta["finetune-layers"], meta["max-tokens"]) == ("minilm", 1, 32)
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert "layers.0.attention.self.query.weight" in state
    for home in owners:
        ledger = PrivacyLedger(home / "ledgers")
        assert [(e.kind, e.server_round) for e in ledger.entries()] == [
            ("count", 1),  # the record count's DP release, once, before round 1
            ("train", 1),
            ("train", 2),
        ]
        (cached,) = (home / "cache").glob("encoded-*.npz")
        assert cached.stat().st_mode & 0o777 == 0o600
        log = verify_log(home / "audit" / "audit.jsonl")
        assert log.ok, log.problem
        devices = {e["data"]["device"] for e in log.entries if e["type"] == "round-start"}
        assert devices == {"cpu"}  # this machine has no GPU; "auto" resolved to CPU
