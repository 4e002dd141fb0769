"""What a run leaves on the operator's disk: metrics.json and the final model.

metrics.json is rewritten atomically after every round, so a crash loses at most the
round in progress. The model is saved as ``model.pt`` (a torch state_dict; load with
``torch.load(path, weights_only=True)``) beside ``model.json`` (the model spec: featuriser
or encoder and its digest, class names, SHA-256 of model.pt), which is all a reader needs
to rebuild it with ``ModelSpec.build`` and use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from fedshield.common.model import ModelSpec
from flwr.app import ArrayRecord

MODEL_FORMAT = "fedshield-model/2"


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RunOutputs:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out_dir / "metrics.json"
        self.metrics: dict = {"rounds": [], "final": None}

    def record_round(self, entry: dict) -> None:
        self.metrics["rounds"].append(entry)
        write_json_atomic(self.metrics_path, self.metrics)

    def record_final(self, final: dict, run: dict) -> None:
        self.metrics["final"] = final
        self.metrics["run"] = run
        write_json_atomic(self.metrics_path, self.metrics)

    def save_model(self, arrays: ArrayRecord, classes: tuple[str, ...], spec: ModelSpec) -> Path:
        path = self.out_dir / "model.pt"
        torch.save(arrays.to_torch_state_dict(), path)
        meta = {
            "format": MODEL_FORMAT,
            "classes": list(classes),
            **spec.describe(),
            "model-sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        write_json_atomic(self.out_dir / "model.json", meta)
        return path
