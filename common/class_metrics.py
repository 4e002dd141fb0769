"""How a model does on every class, not only on the majority: the one computation of the
confusion matrix, per-class precision, recall and F1, and their macro averages.

Used by ``fedshield evaluate`` (inference/evaluate.py) and by the server's evaluation of
every round (server/app.py), so that a class the model never predicts shows wherever
accuracy does (issue 24).
"""

from __future__ import annotations

import numpy as np


def classification_metrics(
    true: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]
) -> tuple[list[list[int]], dict[str, dict[str, float]], dict[str, float], float]:
    """(confusion, per-class, macro, accuracy) for label ids indexing ``classes``."""
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


def round_metrics(true: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> dict:
    """What a round's evaluation records besides accuracy and loss: macro-F1, each
    class's recall, and the classes with records that the model never predicted."""
    _, per_class, macro, _ = classification_metrics(true, predicted, classes)
    never = [
        name
        for i, name in enumerate(classes)
        if per_class[name]["support"] > 0 and not bool(np.any(predicted == i))
    ]
    return {
        "macro-f1": macro["f1"],
        "recall-per-class": {name: row["recall"] for name, row in per_class.items()},
        "never-predicted": never,
    }
