"""Opacus's per-sample gradients of every trained layer equal per-example autograd."""

from __future__ import annotations

import torch
from fedshield.common.model import build_model
from opacus import GradSampleModule
from torch import nn


def _random_model(in_dim: int, num_classes: int) -> nn.Module:
    model = build_model(in_dim, num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # zero init would make many gradients trivially equal
    return model


def test_opacus_per_sample_gradients_match_per_example_autograd():
    torch.manual_seed(0)
    in_dim, num_classes, batch = 32, 3, 9
    x = torch.randn(batch, in_dim)
    y = torch.randint(0, num_classes, (batch,))
    reference = _random_model(in_dim, num_classes)
    wrapped = GradSampleModule(_random_model(in_dim, num_classes), loss_reduction="sum")
    wrapped._module.load_state_dict(reference.state_dict())

    nn.functional.cross_entropy(wrapped(x), y, reduction="sum").backward()
    trained = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    assert trained, "the model has trainable layers"
    for i in range(batch):
        reference.zero_grad()
        nn.functional.cross_entropy(
            reference(x[i : i + 1]), y[i : i + 1], reduction="sum"
        ).backward()
        for name, param in trained:
            opacus_grad = dict(wrapped._module.named_parameters())[name].grad_sample[i]
            torch.testing.assert_close(opacus_grad, param.grad, rtol=1e-5, atol=1e-6)


def test_every_trained_parameter_gets_a_per_sample_gradient():
    model = GradSampleModule(_random_model(8, 2))
    nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 1, 0])).backward()
    for name, param in model._module.named_parameters():
        assert param.grad_sample is not None and param.grad_sample.shape[0] == 4, name
