"""Score a run's model on labelled data: confusion matrix, per-class and macro metrics.

Guarantee: a label in the data that the model does not know is an error naming the
labels (a model cannot predict a class it was never trained on, and silently dropping
rows would overstate accuracy). Per-class metrics are scikit-learn's with 0 where a
ratio is 0/0; the macro averages are over the classes that occur in the data or the
predictions (scikit-learn's default), so a federation class absent from both does not
drag them down. The result (``fedshield-evaluation/1``) holds counts and the data's
SHA-256, no text.

numpy, scikit-learn and the data loader are imported inside the functions that need them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedshield.common.errors import DataError

if TYPE_CHECKING:

    from fedshield.common.desensitise import Desensitiser
    from fedshield.inference.predict import LoadedModel

EVALUATION_FORMAT = "fedshield-evaluation/1"
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


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


def evaluate(
    model: LoadedModel,
    data: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    batch_size: int = 256,
    desensitiser: Desensitiser | None = None,
) -> Evaluation:
    """Classify every record of a labelled file and score it against its labels.

    A label the model does not know is a DataError that names it (see the module
    docstring). ``data-sha256`` is the file's SHA-256 (over the records for a built-in
    name).
    """
    import numpy as np

    from fedshield.common.class_metrics import classification_metrics
    from fedshield.common.data import load_dataset
    from fedshield.common.desensitised_data import desensitised

    dataset = load_dataset(data, text_column, label_column)
    if desensitiser is not None:  # the text as training saw it
        dataset = desensitised(dataset, desensitiser)[0]
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
