"""Read an evaluation file (``fedshield evaluate``'s ``evaluation.json``) for the report.

Guarantee: a file that is not that format is refused with the path and the field at
fault, before anything heavy is imported, so a wrong path or file answers at once.
Format: ``classes`` (names), ``confusion`` (rows = true class, columns = predicted,
non-negative integers, one row and column per class), ``per-class`` ({name:
{precision, recall, f1, support}}), ``accuracy``, ``data`` and ``model-sha256``.
"""

from __future__ import annotations

from pathlib import Path

from fedshield.common.errors import EvaluationFileError, FedshieldError
from fedshield.common.json_text import json_object


def read_json_object(path: Path, hint: str, error: type[FedshieldError] = FedshieldError) -> dict:
    """A JSON object from ``path``, or ``error`` naming the path, the fault and ``hint``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file; {hint}") from None
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        raise error(f"{path}: not readable JSON ({exc}); {hint}") from None
    return json_object(text, path, error, hint)


def load_evaluation(path: Path) -> dict:
    hint = "pass the evaluation.json that `fedshield evaluate` wrote"
    data = read_json_object(path, hint, EvaluationFileError)
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes:
        raise EvaluationFileError(f"{path}: 'classes' must be a non-empty list; {hint}")
    confusion = data.get("confusion")
    size = len(classes)
    if (
        not isinstance(confusion, list)
        or len(confusion) != size
        or any(not isinstance(row, list) or len(row) != size for row in confusion)
        or any(not isinstance(v, int) or v < 0 for row in confusion for v in row)
    ):
        raise EvaluationFileError(
            f"{path}: 'confusion' must be {size} rows of {size} counts (one per class in "
            f"'classes', rows = true class); {hint}"
        )
    per_class = data.get("per-class", {})
    if not isinstance(per_class, dict) or any(not isinstance(v, dict) for v in per_class.values()):
        raise EvaluationFileError(f"{path}: 'per-class' must map class names to metrics; {hint}")
    accuracy = data.get("accuracy")
    if accuracy is not None and not isinstance(accuracy, int | float):
        raise EvaluationFileError(f"{path}: 'accuracy' must be a number, got {accuracy!r}")
    return {**data, "file": str(path)}
