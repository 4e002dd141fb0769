"""Unit-level DP-SGD (issue 25's mechanism, client/units.py): a privacy unit's records
are summed and clipped as one contribution, checked against per-example autograd."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedshield.client.secure_random import SecureRandom
from fedshield.client.train import TrainSettings, planned_dp_event, train_locally
from fedshield.client.units import UnitMembers
from fedshield.common.model import build_model

CPU = torch.device("cpu")
DIM, CLASSES = 16, 3
# 12 units: one of 50 records, the others of 1 to 11.
SIZES = [50, *range(1, 12)]


def data(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    units = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(units)  # a unit's records are scattered through the file
    labels = rng.integers(0, CLASSES, size=len(units))
    features = (rng.normal(size=(len(units), DIM)) + labels[:, None]).astype(np.float32)
    return features, labels, units


def start_model(seed=1) -> nn.Module:
    model = build_model(DIM, CLASSES)
    with torch.no_grad():
        model.weight.copy_(
            torch.from_numpy(np.random.default_rng(seed).normal(0, 0.3, (CLASSES, DIM)))
        )
    return model


def one_step(x, y, units, clip, released, physical=0):
    model = start_model()
    settings = TrainSettings(
        batch_size=0,  # every unit, every step (sample rate 1)
        learning_rate=1.0,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        physical_batch_size=physical,
        max_records_per_unit=1000,
    )
    train_locally(model, (x,), y, settings, CPU, released_count=released, units=units)
    return getattr(model, "_module", model).weight.detach().clone()


@pytest.mark.parametrize("physical", [0, 20])  # 20: the 50-record unit is cut over 3 passes
def test_a_step_is_the_mean_of_per_unit_sums_of_per_record_gradients_clipped(physical):
    x, y, units = data()
    clip = 0.5
    trained = one_step(x, y, units, clip, released=len(SIZES), physical=physical)

    reference = start_model()
    total = torch.zeros_like(reference.weight)
    for unit in range(len(SIZES)):
        unit_sum = torch.zeros_like(reference.weight)
        for i in np.flatnonzero(units == unit):
            reference.zero_grad()
            nn.functional.cross_entropy(
                reference(torch.from_numpy(x[i : i + 1])), torch.tensor([y[i]])
            ).backward()
            unit_sum += reference.weight.grad  # the bias is the published prior: not trained
        total += unit_sum * min(1.0, clip / (unit_sum.norm().item() + 1e-6))
    expected = reference.weight.detach() - total / len(SIZES)
    torch.testing.assert_close(trained, expected, rtol=1e-4, atol=1e-6)


def test_a_unit_of_fifty_records_moves_the_update_by_at_most_c():
    """D against D minus the whole 50-record unit, the released count held fixed: the
    update moves by at most C (times lr / count); per record, the same 50 move it by far
    more, which is what a per-record guarantee leaves a person with 50 records."""
    x, y, units = data()
    clip, released = 0.5, len(SIZES)
    keep = units != 0  # unit 0 holds the 50 records
    with_unit = one_step(x, y, units, clip, released)
    without = one_step(x[keep], y[keep], units[keep] - 1, clip, released)
    moved = ((with_unit - without) * released).norm().item()
    assert 0.1 * clip < moved <= clip * (1 + 1e-5)

    per_record = TrainSettings(
        batch_size=0, learning_rate=1.0, noise_multiplier=0.0, max_grad_norm=clip
    )
    runs = []
    for features, labels in ((x, y), (x[keep], y[keep])):
        model = start_model()
        train_locally(model, (features,), labels, per_record, CPU, released_count=len(x))
        runs.append(getattr(model, "_module", model).weight.detach())
    assert ((runs[0] - runs[1]) * len(x)).norm().item() > 5 * clip


def test_units_are_sampled_as_planned_and_the_event_says_so():
    x, y, units = data()
    settings = TrainSettings(batch_size=4, noise_multiplier=1.0, local_epochs=2)
    outcome = train_locally(start_model(), (x,), y, settings, CPU, released_count=12, units=units)
    assert outcome.dp_event == planned_dp_event(12, settings)  # 12 units, not 116 records
    assert outcome.dp_event.sample_rate == pytest.approx(1 / 3)


def test_a_unit_above_the_cap_contributes_a_fresh_random_subset():
    codes = np.repeat([0, 1], [50, 3])
    draws = [UnitMembers.draw(codes, 5, SecureRandom()) for _ in range(2)]
    for drawn in draws:
        big, small = drawn.members
        assert len(big) == 5 and len(set(big)) == 5 and set(big) <= set(range(50))
        assert list(small) == [50, 51, 52]
    assert list(draws[0].members[0]) != list(draws[1].members[0])  # 1 in 2 million to fail


@pytest.mark.parametrize("physical", [1, 7, 64])
def test_passes_never_exceed_the_physical_batch_and_cut_a_unit_only_across_its_own(physical):
    """Whatever the units' sizes, no pass holds more than the physical batch (memory must
    not depend on the data); a unit that fits is whole in one pass, a larger one fills
    consecutive passes of its own, flagged to carry its sum until its last."""
    _, _, units = data(seed=3)
    members = UnitMembers.draw(units, 1000, SecureRandom())
    sampled = torch.tensor([0, 2, 3, 7, 11])
    seen, open_unit = [], None
    for rows, positions, more in members.passes(sampled, physical):
        assert 0 < len(rows) <= physical
        assert torch.all(rows[1:] > rows[:-1])  # ascending, distinct
        owners = {int(units[r]) for r in rows.tolist()}
        in_pass = positions.unique().tolist()
        assert in_pass == list(range(len(in_pass))) and len(owners) == len(in_pass)
        if open_unit is not None:  # the cut unit goes on, alone
            assert owners == {open_unit}
        if more or open_unit is not None:
            assert len(owners) == 1
        open_unit = owners.pop() if more else None
        seen.extend(rows.tolist())
    assert open_unit is None
    expected = np.flatnonzero(np.isin(units, sampled.numpy()))
    assert sorted(seen) == sorted(expected.tolist())


@pytest.mark.parametrize("physical", [1, 3, 7])
def test_a_unit_cut_over_passes_is_clipped_once_when_whole(physical):
    """The clipped step does not depend on how passes cut the units."""
    x, y, units = data()
    whole = one_step(x, y, units, 0.5, released=len(SIZES), physical=0)
    cut = one_step(x, y, units, 0.5, released=len(SIZES), physical=physical)
    torch.testing.assert_close(cut, whole, rtol=1e-4, atol=1e-6)


def test_the_fine_tuned_encoder_clips_each_unit_per_layer_as_opacus_would():
    """The fine-tuned MiniLM top (per-layer clipping, two learning rates): one step is
    each layer's per-unit sum of per-example autograd gradients, clipped to that layer's
    norm, averaged over the units."""
    from fedshield.common import minilm
    from fedshield.common.model import ModelSpec, head_bias

    torch.manual_seed(0)
    sizes = [6, 1, 3]
    units = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(4).shuffle(units)
    n = len(units)
    hidden = torch.randn(n, 8, minilm.HIDDEN)
    mask = torch.ones(n, 8, dtype=torch.int8)
    for i in range(n):
        mask[i, 2 + i % 6 :] = 0
    labels = np.random.default_rng(5).integers(0, 3, size=n)
    spec = ModelSpec(name="minilm", finetune_layers=1, max_tokens=8)
    start = minilm.MiniLMTop(finetune_layers=1, num_classes=3)
    with torch.no_grad():
        for p in start.head.parameters():
            p.normal_(0, 0.5)
    reference = copy.deepcopy(start)
    settings = TrainSettings(
        batch_size=0,
        learning_rate=0.5,
        encoder_learning_rate=0.05,
        noise_multiplier=0.0,
        max_grad_norm=0.3,
        max_records_per_unit=1000,
        model_spec=spec,
    )
    trained = copy.deepcopy(start)
    train_locally(trained, (hidden, mask), labels, settings, CPU, released_count=3, units=units)
    trained = getattr(trained, "_module", trained)

    head_bias(reference).requires_grad_(False)
    groups = spec.param_groups(reference, 0.5, 0.05)
    params = [(p, group["lr"]) for group in groups for p in group["params"] if p.requires_grad]
    norms = reference.max_grad_norms(0.3)
    assert len(norms) == len(params)
    totals = [torch.zeros_like(p) for p, _ in params]
    for unit in range(len(sizes)):
        sums = [torch.zeros_like(p) for p, _ in params]
        for i in np.flatnonzero(units == unit):
            reference.zero_grad()
            logits = reference(hidden[i : i + 1], mask[i : i + 1])
            nn.functional.cross_entropy(logits, torch.tensor([labels[i]])).backward()
            for s, (p, _) in zip(sums, params, strict=True):
                s += p.grad
        for total, s, bound in zip(totals, sums, norms, strict=True):
            total += s * min(1.0, bound / (s.norm().item() + 1e-6))
    expected = {
        id(p): p.detach() - lr * t / len(sizes) for (p, lr), t in zip(params, totals, strict=True)
    }
    named = dict(reference.named_parameters())
    compared = 0
    for name, p in trained.named_parameters():
        if id(named[name]) in expected:
            torch.testing.assert_close(p.detach(), expected[id(named[name])], rtol=1e-4, atol=1e-5)
            assert not torch.equal(p.detach(), dict(start.named_parameters())[name].detach())
            compared += 1
    assert compared == len(params) > 2  # the layer's tensors and the head's weight
