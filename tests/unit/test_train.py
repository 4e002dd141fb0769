"""Local DP training: the accountant's event equals the plan, and a DP step is the
clipped per-sample gradient sum that DP-SGD prescribes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedshield.client.train import TrainSettings, planned_dp_event, train_locally
from fedshield.common.model import build_model

CPU = torch.device("cpu")


def blobs(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    features = (rng.normal(size=(n, dim)) + (labels[:, None] * 2 - 1) * 0.8).astype(np.float32)
    return features, labels


@pytest.mark.parametrize(("n", "batch", "epochs"), [(600, 64, 1), (1000, 128, 2), (129, 128, 1)])
def test_the_charged_event_is_what_training_did(n, batch, epochs):
    x, y = blobs(n)
    settings = TrainSettings(
        batch_size=batch, local_epochs=epochs, noise_multiplier=1.3, max_grad_norm=0.5
    )
    outcome = train_locally(build_model(16, 2), (x,), y, settings, CPU)
    assert outcome.dp_event == planned_dp_event(n, settings)


@pytest.mark.parametrize(
    ("train_bias", "bias"),
    [
        (True, (0.0, 0.0)),
        (False, (0.0, 0.0)),
        # A bias far beyond any published prior (the server may send any finite model):
        # it only shifts the logits, each record still moves the weights by at most the clip.
        (False, (float(np.log(1e-9)), 0.0)),
    ],
)
def test_with_noise_off_a_dp_step_is_the_mean_of_clipped_per_sample_gradients(train_bias, bias):
    x, y = blobs(40, seed=3)
    clip, lr = 0.05, 1.0
    start = build_model(16, 2)
    with torch.no_grad():
        start.weight.normal_(0, 0.3)
        start.bias.copy_(torch.tensor(bias))
    reference = build_model(16, 2)
    reference.load_state_dict(start.state_dict())
    # Sample rate 1 (batch = N, one step): Poisson sampling then takes every record.
    settings = TrainSettings(
        batch_size=40,
        local_epochs=1,
        learning_rate=lr,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        train_bias=train_bias,
    )
    train_locally(start, (x,), y, settings, CPU)

    reference.bias.requires_grad_(train_bias)
    clipped_sum = [torch.zeros_like(p) for p in reference.parameters()]
    for i in range(len(y)):
        reference.zero_grad()
        nn.functional.cross_entropy(
            reference(torch.from_numpy(x[i : i + 1])), torch.tensor([y[i]])
        ).backward()
        grads = [
            p.grad.clone() if p.requires_grad else torch.zeros_like(p)
            for p in reference.parameters()
        ]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        for acc, g in zip(clipped_sum, grads, strict=True):
            acc += g * factor
    with torch.no_grad():
        expected = [
            p - lr * g / len(y) for p, g in zip(reference.parameters(), clipped_sum, strict=True)
        ]
    trained = getattr(start, "_module", start)
    for got, want in zip(trained.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-6)


def test_noise_differs_between_unseeded_runs():
    x, y = blobs(200)
    settings = TrainSettings(batch_size=50, noise_multiplier=1.0)
    a, b = build_model(16, 2), build_model(16, 2)
    train_locally(a, (x,), y, settings, CPU)
    train_locally(b, (x,), y, settings, CPU)
    assert not torch.equal(getattr(a, "_module", a).weight, getattr(b, "_module", b).weight)


def test_non_private_training_learns():
    x, y = blobs(800)
    model = build_model(16, 2)
    out = train_locally(
        model,
        (x,),
        y,
        TrainSettings(dp=False, batch_size=32, local_epochs=3, learning_rate=0.5),
        CPU,
    )
    assert out.dp_event is None and out.train_loss < 0.5


def test_physical_passes_train_exactly_like_one_pass():
    """BatchMemoryManager (DP) and gradient accumulation (no DP) change memory, not maths."""
    from fedshield.common.model import ModelSpec

    spec = ModelSpec(name="minilm", finetune_layers=1)
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(10, 6, 384)).astype(np.float16)
    mask = np.ones((10, 6), dtype=np.int8)
    mask[::2, 4:] = 0
    y = rng.integers(0, 2, size=10)
    for dp in (True, False):
        states = []
        for physical in (0, 3):
            model = spec.build(2)
            settings = TrainSettings(
                dp=dp,
                noise_multiplier=0.0,
                learning_rate=1.0,
                physical_batch_size=physical,
                encoder_learning_rate=0.5,
                model_spec=spec,
            )
            train_locally(model, (hidden, mask), y, settings, CPU)
            states.append(getattr(model, "_module", model).state_dict())
        for key in states[0]:
            torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-4, atol=1e-6)
        assert not torch.equal(states[0]["head.weight"], spec.build(2).state_dict()["head.weight"])
