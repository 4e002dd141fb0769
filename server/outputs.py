"""What a run leaves on the operator's disk: metrics.json and the final model.

metrics.json is rewritten atomically after every round, so a crash loses at most the
round in progress. The model is saved as ``model.pt`` (a torch state_dict; load with
``torch.load(path, weights_only=True)``) beside ``model.json`` (the model spec: featuriser
or encoder and its digest, class names, SHA-256 of model.pt), which is all a reader needs
to rebuild it with ``ModelSpec.build`` and use it.

Runs never overwrite each other: a new run refuses a folder that already holds one, and
a run without a single accepted update saves no model. A run may start from a finished
run's model (``continue-from``): model.json then records the lineage, newest parent
first, each with its SHA-256, so a model can be traced back to its untrained start.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from fedshield.common.durable import file_sha256, write_atomic, write_bytes_atomic
from fedshield.common.errors import ConfigError
from fedshield.common.model import ModelSpec
from fedshield.common.model_card import MODEL_FORMAT, model_differences, read_model_card


def write_json_atomic(path: Path, data: object) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2).encode("utf-8"), mode=0o644)


class RunOutputs:
    def __init__(self, out_dir: Path, resume: bool = False) -> None:
        self.out_dir = out_dir
        if not resume and (out_dir / "metrics.json").exists():
            raise ConfigError(
                f"out-dir {out_dir} already holds a run (metrics.json); a run never overwrites "
                f"another: choose a new folder, start from that run's model with "
                f"continue-from={out_dir}, or --resume it if it crashed"
            )
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

    def save_model(
        self,
        arrays: ArrayRecord,
        classes: tuple[str, ...],
        spec: ModelSpec,
        lineage: list[dict] | None = None,
        class_names: dict[str, str] | None = None,
    ) -> Path:
        path = self.out_dir / "model.pt"
        state = arrays.to_torch_state_dict()
        write_atomic(path, lambda handle: torch.save(state, handle), mode=0o644)
        meta = {
            "format": MODEL_FORMAT,
            "classes": list(classes),
            **spec.describe(),
            "model-sha256": file_sha256(path),
            "lineage": list(lineage or []),
        }
        if class_names:  # what a label means, for people reading predictions (built-in data)
            meta["class-names"] = {c: class_names[c] for c in classes if c in class_names}
        write_json_atomic(self.out_dir / "model.json", meta)
        return path


def resolve_continue_from(value: str, runs_dir: Path) -> Path:
    """The checked folder of the model to continue: ``latest`` = the newest run under
    ``runs_dir`` that saved a model; else the folder (or its model.pt/model.json) named."""
    if value == "latest":
        finished = sorted(
            (p.parent for p in Path(runs_dir).glob("*/model.json")),
            key=lambda p: p.stat().st_mtime,
        )
        if not finished:
            raise ConfigError(
                f"continue-from=latest: no finished run with a model under {runs_dir}; name a "
                "run folder, or leave continue-from unset to start from an untrained model"
            )
        folder = finished[-1]
    else:
        folder = Path(value).expanduser()
        if folder.name in ("model.pt", "model.json"):
            folder = folder.parent
    verify_saved_model(folder)
    return folder


def verify_saved_model(folder: Path) -> dict:
    """model.json of a finished run, once model.pt is checked against it."""
    return read_model_card(folder, option="continue-from").meta


def load_parent_model(
    folder: Path, spec: ModelSpec, classes: tuple[str, ...]
) -> tuple[ArrayRecord, list[dict]]:
    """The global model of the finished run in ``folder`` and this run's lineage.

    Refused: a folder without a saved model, a model.pt whose SHA-256 is not the one in
    model.json (changed after the run), or a model of other classes or settings.
    """
    meta = verify_saved_model(folder)
    differences = model_differences(meta, {"classes": list(classes), **spec.describe()})
    if differences:
        raise ConfigError(
            f"continue-from {folder}: that model differs from this run's in "
            + "; ".join(differences)
            + "; use the same classes and model settings, or start from an untrained model"
        )
    data = (folder / "model.pt").read_bytes()  # hashed and loaded from the same bytes
    if hashlib.sha256(data).hexdigest() != meta["model-sha256"]:
        raise ConfigError(f"continue-from {folder}: model.pt changed while it was read")
    state = torch.load(io.BytesIO(data), weights_only=True)
    lineage = [
        {"run-dir": str(folder.resolve()), "model-sha256": meta["model-sha256"]},
        *meta.get("lineage", []),
    ]
    return ArrayRecord(state), lineage


def check_continuation(plan, classes: tuple[str, ...]) -> None:
    """Before any process starts: ``plan.continue_from`` fits the run's classes and model."""
    load_parent_model(Path(plan.continue_from), ModelSpec.from_config(plan), classes)
