"""The federation's published class priors: the head's starting bias, which owners keep.

Guarantee: the priors come from the operator alone (its evaluation data's class shares,
a uniform prior, or shares the operator writes down), never from an owner's records, so
they cost no owner any privacy as long as the evaluation data holds no owner's records
(it is the operator's own); they are published in the run's audit entry and in the
model itself. Owners leave the head's bias where the server's model puts it (the plan's
``train-bias = false``), so a record's clipped gradient is all weights: the rare classes
no longer have to learn their own offset through DP noise, which cost them most
(docs/BENCHMARKS.md "Every class counts").

Evaluation shares are smoothed by adding one record to every class (a class the
evaluation data lacks still gets a finite bias), then normalised; the bias is their
logarithm.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedshield.common.config import class_prior_shares
from fedshield.common.model import head_bias


def published_priors(text: str, eval_labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """The priors ``class-priors`` names, normalised to sum to one (refused with the fix
    when written shares do not fit ``classes``)."""
    shares = class_prior_shares(text, classes)
    if shares is not None:
        return np.asarray(shares, dtype=np.float64)
    if text == "uniform":
        counts = np.ones(len(classes))
    else:
        counts = np.bincount(np.asarray(eval_labels), minlength=len(classes)) + 1.0
    return counts / counts.sum()


def set_prior_bias(model: nn.Module, priors: np.ndarray) -> None:
    """Put ``log(priors)`` in the head's bias of a freshly built model."""
    with torch.no_grad():
        head_bias(model).copy_(torch.from_numpy(np.log(priors)).float())
