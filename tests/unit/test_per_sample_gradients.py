"""Opacus's per-sample gradients of every trained layer equal per-example autograd.

Both trainable modules are checked: the linear head (hashed and frozen-MiniLM models)
and the fine-tuned MiniLM top (a transformer layer: Linear and LayerNorm, with
attention over padded sequences).
"""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from fedshield.common import minilm
from fedshield.common.model import build_model


def _linear_case(batch: int):
    model = build_model(32, 3)
    return model, (torch.randn(batch, 32),)


def _minilm_case(batch: int):
    model = minilm.MiniLMTop(finetune_layers=1, num_classes=3)
    mask = torch.ones(batch, 12, dtype=torch.int8)
    for i in range(batch):
        mask[i, 3 + i :] = 0  # every record a different length, some padding
    return model, (torch.randn(batch, 12, minilm.HIDDEN), mask)


CASES = {"linear-head": _linear_case, "minilm-top": _minilm_case}


def _with_random_head(model: nn.Module) -> nn.Module:
    head = getattr(model, "head", model)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)  # zero init would make many gradients trivially equal
    return model


@pytest.mark.parametrize("case", CASES)
def test_opacus_per_sample_gradients_match_per_example_autograd(case):
    torch.manual_seed(0)
    batch, num_classes = 5, 3
    reference, inputs = CASES[case](batch)
    reference = _with_random_head(reference)
    y = torch.randint(0, num_classes, (batch,))
    wrapped = GradSampleModule(CASES[case](batch)[0], loss_reduction="sum")
    wrapped._module.load_state_dict(reference.state_dict())

    nn.functional.cross_entropy(wrapped(*inputs), y, reduction="sum").backward()
    trained = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    assert trained, "the model has trainable layers"
    per_example = {name: [] for name, _ in trained}
    for i in range(batch):
        reference.zero_grad()
        record = [part[i : i + 1] for part in inputs]
        nn.functional.cross_entropy(reference(*record), y[i : i + 1], reduction="sum").backward()
        for name, param in trained:
            per_example[name].append(param.grad.clone())
    scale = max(torch.stack(g).abs().max().item() for g in per_example.values())
    for name, grads in per_example.items():
        opacus_grad = dict(wrapped._module.named_parameters())[name].grad_sample
        # Tolerance relative to the largest gradient: some exact gradients are zero
        # (attention key biases cancel in the softmax) and float32 rounding is not.
        torch.testing.assert_close(opacus_grad, torch.stack(grads), rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("case", CASES)
def test_every_trained_parameter_gets_a_per_sample_gradient(case):
    model, inputs = CASES[case](4)
    wrapped = GradSampleModule(model)
    logits = wrapped(*inputs)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0])).backward()
    for name, param in wrapped._module.named_parameters():
        assert param.grad_sample is not None and param.grad_sample.shape[0] == 4, name
