"""Local DP training with every Poisson batch drawn empty: each step is noise on a zero
sum, so a weight moves by noise alone, with a standard deviation the tests can predict."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedshield.client import secure_random
from fedshield.client.train import TrainSettings, planned_dp_event, train_locally
from fedshield.common.model import ModelInputs, ModelSpec

NOISE_MULTIPLIER, CLIP, LEARNING_RATE = 1.0, 2.0, 1.0


def moved_by_noise_alone(
    monkeypatch,
    model: nn.Module,
    weight: Callable[[nn.Module], torch.Tensor],
    inputs: ModelInputs,
    labels: np.ndarray,
    *,
    batch_size: int,
    physical: int,
    model_spec: ModelSpec | None = None,
) -> torch.Tensor:
    """How ``weight(model)`` moved (float64) when ``model`` trains on the CPU with every
    Poisson batch empty (noise multiplier, clip and learning rate as above). Asserts on the
    way that the accountant still charged the planned event and that no record was seen.
    ``model_spec``: the settings' (None: the default, hashed)."""
    monkeypatch.setattr(
        secure_random.SecureRandom, "poisson_mask", lambda self, n, rate: np.zeros(n, bool)
    )
    settings = TrainSettings(
        batch_size=batch_size,
        learning_rate=LEARNING_RATE,
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=CLIP,
        physical_batch_size=physical,
        model_spec=model_spec or ModelSpec(),
    )
    before = weight(model).detach().clone()
    outcome = train_locally(model, inputs, labels, settings, torch.device("cpu"))
    assert outcome.dp_event == planned_dp_event(len(labels), settings)
    assert outcome.train_loss == 0.0  # no record was seen
    return (weight(model).detach() - before).double()


def noise_std(steps: int, expected_batch: int) -> float:
    """The standard deviation of ``steps`` such steps summed: each adds noise of std
    sigma * C / expected batch size, times the learning rate."""
    return math.sqrt(steps) * NOISE_MULTIPLIER * CLIP / expected_batch * LEARNING_RATE
