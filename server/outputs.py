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
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from fedshield.common.durable import write_atomic, write_bytes_atomic
from fedshield.common.model import ModelSpec

MODEL_FORMAT = "fedshield-model/2"


def write_json_atomic(path: Path, data: object) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2).encode("utf-8"), mode=0o644)


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
        state = arrays.to_torch_state_dict()
        write_atomic(path, lambda handle: torch.save(state, handle), mode=0o644)
        meta = {
            "format": MODEL_FORMAT,
            "classes": list(classes),
            **spec.describe(),
            "model-sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        write_json_atomic(self.out_dir / "model.json", meta)
        return path
