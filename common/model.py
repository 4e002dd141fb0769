"""The classifier every node shares: a linear head over frozen, data-independent features.

Guarantee: only the layers built here are trained and sent; all of them are layers for
which Opacus computes exact per-sample gradients (``nn.Linear``), which
``tests/test_per_sample_gradients.py`` checks against per-example autograd.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def build_model(in_dim: int, num_classes: int) -> nn.Module:
    """A linear classifier over ``in_dim``-dimensional features, zero-initialised.

    Zero initialisation makes the starting model identical on every node without
    shipping a seed, and gives exactly uniform predictions before round 1.
    """
    model = nn.Linear(in_dim, num_classes)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


def unwrapped_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The state_dict under the plain module's keys, whatever Opacus wrapped around it.

    Opacus's ``GradSampleModule`` prefixes keys with ``_module.``; the server expects the
    keys of :func:`build_model`.
    """
    inner = getattr(model, "_module", model)
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in inner.state_dict().items())


def evaluate_model(
    model: nn.Module, features: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (features, labels)."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(features)))
        target = torch.from_numpy(np.asarray(labels)).long()
        loss = torch.nn.functional.cross_entropy(logits, target).item()
        accuracy = (logits.argmax(1) == target).float().mean().item()
    return float(loss), float(accuracy)
