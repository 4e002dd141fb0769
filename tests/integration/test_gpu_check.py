"""The GPU check script runs end to end (on CPU here, where there is no CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.support.paths import ROOT


def test_gpu_check_runs_both_models_and_their_gradients_agree(tmp_path):
    results = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--quick", "--json", str(results)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU CHECK PASSED" in proc.stdout
    if not torch.cuda.is_available():
        assert "no CUDA device here" in proc.stdout
    rows = json.loads(results.read_text())
    assert [r["model"].split()[0] for r in rows] == ["hashed", "minilm"]
    for row in rows:
        assert row["ok"] and row["mixed round"]
        assert row["device vs per-example"] < 1e-4 and row["device vs cpu"] < 1e-4
        assert row["samples/s DP"] > 0 and row["samples/s no DP"] > 0
