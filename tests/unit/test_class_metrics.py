"""Per-class truth (issue 24): macro-F1, each class's recall and the classes never
predicted, computed by hand here and compared."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield.common.class_metrics import round_metrics

CLASSES = ("ham", "spam", "rare", "absent")


def test_a_class_the_model_never_predicts_is_named_and_its_recall_is_zero():
    true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 0, 1, 1, 1, 1, 1])  # "rare" is never predicted
    metrics = round_metrics(true, predicted, CLASSES)
    assert metrics["never-predicted"] == ["rare"]  # "absent" has no records: not lost
    assert metrics["recall-per-class"] == {"ham": 0.75, "spam": 1.0, "rare": 0.0, "absent": 0.0}
    # By hand, over the classes present: ham P=1, R=3/4; spam P=2/5, R=1; rare P=R=0.
    f1 = [2 * 1 * 0.75 / 1.75, 2 * 0.4 * 1.0 / 1.4, 0.0]
    assert metrics["macro-f1"] == pytest.approx(sum(f1) / 3)


def test_a_model_that_predicts_every_class_loses_none():
    true = np.array([0, 1, 2, 0, 1, 2])
    metrics = round_metrics(true, true.copy(), CLASSES[:3])
    assert metrics["never-predicted"] == [] and metrics["macro-f1"] == pytest.approx(1.0)
