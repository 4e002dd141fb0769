"""The device-side batching of local training keeps every DP property, and the physical
batch size and training device rules give sane answers (CPU here; CUDA when present).

Batches are index tensors gathered on the training device: the accountant's event must
still equal the plan, Poisson batch sizes must still be Binomial(n, q), an empty batch
must still be a noise step, and splitting a logical batch into passes must not change
the clipped sum.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fedshield.client import dp_sgd
from fedshield.client import train as train_module
from fedshield.client.train import TrainSettings, planned_dp_event, train_locally
from fedshield.common.model import ModelSpec, build_model
from tests.support.empty_batches import moved_by_noise_alone, noise_std
from tests.support.paths import ROOT

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
MINILM_TOP = ModelSpec(name="minilm", finetune_layers=1, max_tokens=128)


def blobs(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    features = (rng.normal(size=(n, dim)) + (labels[:, None] * 2 - 1) * 0.8).astype(np.float32)
    return features, labels


def hidden_states(n: int, tokens: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, tokens, 384)).astype(np.float16)
    mask = np.ones((n, tokens), dtype=np.int8)
    mask[::2, tokens - 2 :] = 0
    return (hidden, mask), rng.integers(0, 2, size=n)


@pytest.mark.parametrize(
    ("n", "batch", "epochs", "physical"),
    [(600, 64, 1, 0), (300, 64, 1, 5), (1000, 128, 2, 37), (129, 128, 1, 1), (50, 0, 3, 8)],
)
def test_device_batching_charges_exactly_the_planned_event(n, batch, epochs, physical):
    x, y = blobs(n)
    settings = TrainSettings(
        batch_size=batch,
        local_epochs=epochs,
        noise_multiplier=1.3,
        max_grad_norm=0.5,
        physical_batch_size=physical,
    )
    outcome = train_locally(build_model(16, 2), (x,), y, settings, CPU)
    assert outcome.dp_event == planned_dp_event(n, settings)


def test_trained_batch_sizes_follow_binomial_n_q(monkeypatch):
    """The batches training actually takes, not only the sampler in isolation."""
    sizes = []
    real_step = train_module._train_logical_batch

    def recording(model, optimizer, records, indices, physical, dp):
        assert indices.dtype == torch.int64
        assert torch.equal(indices, indices.unique())  # ascending, distinct
        sizes.append(len(indices))
        return real_step(model, optimizer, records, indices, physical, dp)

    monkeypatch.setattr(train_module, "_train_logical_batch", recording)
    n, batch, epochs = 200, 20, 30  # q = 0.1, 10 steps an epoch
    x, y = blobs(n, dim=4)
    settings = TrainSettings(batch_size=batch, local_epochs=epochs)
    train_locally(build_model(4, 2), (x,), y, settings, CPU)
    assert len(sizes) == 10 * epochs
    q = 0.1
    mean, var = n * q, n * q * (1 - q)  # 20 and 18
    sizes_arr = np.asarray(sizes, dtype=float)
    # Loose bounds: about 6 standard errors of the mean and of the variance.
    assert abs(sizes_arr.mean() - mean) < 6 * math.sqrt(var / len(sizes))
    assert abs(sizes_arr.var() - var) < 6 * var * math.sqrt(2 / len(sizes))
    # The shape too: P(size <= 15) of Binomial(200, 0.1) is 0.156.
    below = np.mean(sizes_arr <= 15)
    assert abs(below - 0.156) < 6 * math.sqrt(0.156 * 0.844 / len(sizes))


@pytest.mark.parametrize("physical", [0, 3])
def test_an_empty_batch_still_takes_a_noise_step(monkeypatch, physical):
    steps = []
    real_step = dp_sgd.SecureDPOptimizer.step

    def counting(self, *args, **kwargs):
        # Opacus's own flag (read without consuming it): True would be an accumulating
        # pass, False a real noisy step; the test asserts every call is a real step.
        steps.append(self._check_skip_next_step(pop_next=False))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(dp_sgd.SecureDPOptimizer, "step", counting)
    # 2 x 512 weights: the std estimate's relative error is about 1/sqrt(2 * 1024) = 2%,
    # so the 20% band below cannot fail by chance (with 2 x 32 it did, once in CI).
    x, y = blobs(60, dim=512)
    moved = moved_by_noise_alone(
        monkeypatch,
        build_model(512, 2),
        lambda model: model.weight,
        (x,),
        y,
        batch_size=15,
        physical=physical,
    )
    assert steps == [False] * 4  # four real steps, none of them skipped
    # Noise alone, 4 steps of sigma * C / expected batch (15) each.
    assert abs(moved.std().item() / noise_std(4, 15) - 1) < 0.2


def test_training_runs_float32_matmuls_at_full_precision_and_restores_the_setting(monkeypatch):
    """TF32 would round the per-sample norms, and so the clipping bound, to 10 bits."""
    seen = []
    real_step = train_module._train_logical_batch

    def recording(*args):
        seen.append(torch.get_float32_matmul_precision())
        return real_step(*args)

    monkeypatch.setattr(train_module, "_train_logical_batch", recording)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        x, y = blobs(20)
        train_locally(build_model(16, 2), (x,), y, TrainSettings(batch_size=10), CPU)
        assert seen == ["highest", "highest"]
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


def _clipped_update(model_spec, inputs, labels, physical, device=CPU, units=None) -> dict:
    """The weights after one noise-free full-batch DP step (update = -clipped sum / n);
    with ``units``, of units (each unit's summed gradients clipped as one)."""
    torch.manual_seed(0)
    model = model_spec.build(2)
    head = getattr(model, "head", model)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)  # a zero head gives zero gradients below it
    settings = TrainSettings(
        noise_multiplier=0.0,
        learning_rate=1.0,
        encoder_learning_rate=1.0,
        max_grad_norm=0.3,
        physical_batch_size=physical,
        model_spec=model_spec,
    )
    outcome = train_locally(model, inputs, labels, settings, device, units=units)
    count = len(labels) if units is None else len(set(units.tolist()))
    assert outcome.dp_event == planned_dp_event(count, settings)
    inner = getattr(model, "_module", model)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


def _per_example_clipped_update(x: np.ndarray, y: np.ndarray, clip: float) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(x.shape[1], 2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    start = model.weight.detach().clone()
    total = torch.zeros_like(model.weight)
    for i in range(len(y)):
        model.zero_grad()
        logits = model(torch.from_numpy(x[i : i + 1]))
        nn.functional.cross_entropy(logits, torch.tensor([int(y[i])])).backward()
        norm = torch.sqrt(model.weight.grad.pow(2).sum() + model.bias.grad.pow(2).sum())
        total += model.weight.grad * min(1.0, clip / (norm.item() + 1e-6))
    return start - total / len(y)


def test_physical_passes_give_the_clipped_sum_of_one_pass_linear_head():
    hashed = ModelSpec()  # a linear head over 4096 features
    x, y = blobs(50, dim=hashed.featurizer.out_dim, seed=4)
    one_pass = _clipped_update(hashed, (x,), y, physical=50)
    for physical in (1, 7, 49):
        passes = _clipped_update(hashed, (x,), y, physical=physical)
        for key in one_pass:
            torch.testing.assert_close(passes[key], one_pass[key], rtol=1e-5, atol=1e-7)
    expected = _per_example_clipped_update(x, y, clip=0.3)
    torch.testing.assert_close(one_pass["weight"], expected, rtol=1e-4, atol=1e-6)


def test_physical_passes_give_the_clipped_sum_of_one_pass_minilm_top():
    inputs, y = hidden_states(9)
    one_pass = _clipped_update(MINILM_TOP, inputs, y, physical=9)
    for physical in (2, 4):
        passes = _clipped_update(MINILM_TOP, inputs, y, physical=physical)
        for key in one_pass:
            torch.testing.assert_close(passes[key], one_pass[key], rtol=1e-4, atol=1e-6)


def _fake_cuda_memory(monkeypatch, free: int, reserved: int = 0, allocated: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)


def test_physical_batch_rule_on_a_fake_gpu(monkeypatch):
    top = MINILM_TOP.build(2)
    per_record = MINILM_TOP.bytes_per_record(top)
    # Per-sample gradients of one layer alone are 1.78M floats = 7 MB a record.
    assert 14e6 < per_record < 60e6
    longer = ModelSpec(name="minilm", finetune_layers=1, max_tokens=256)
    assert longer.bytes_per_record(top) > per_record

    _fake_cuda_memory(monkeypatch, free=80 * 2**30)  # an H200 with 80 GiB free
    chosen = MINILM_TOP.default_physical_batch_size(top, CUDA, 20_000)
    assert chosen == (40 * 2**30) // per_record  # half of the free memory
    assert 500 < chosen < 3000
    assert MINILM_TOP.default_physical_batch_size(top, CUDA, 300) == 300  # capped by n

    # Cached-but-unused allocator blocks count as free.
    _fake_cuda_memory(monkeypatch, free=2**30, reserved=3 * 2**30, allocated=2**30)
    assert MINILM_TOP.default_physical_batch_size(top, CUDA, 20_000) == (
        (3 * 2**30) // 2 // per_record
    )

    _fake_cuda_memory(monkeypatch, free=10 * 2**20)  # 10 MiB: less than one record
    assert MINILM_TOP.default_physical_batch_size(top, CUDA, 20_000) == 1

    hashed = ModelSpec()
    head = hashed.build(2)
    assert hashed.bytes_per_record(head) < 200_000
    _fake_cuda_memory(monkeypatch, free=80 * 2**30)
    assert hashed.default_physical_batch_size(head, CUDA, 5_000) == 5_000


def test_physical_batch_rule_on_cpu_keeps_the_measured_defaults():
    assert MINILM_TOP.default_physical_batch_size(MINILM_TOP.build(2), CPU, 1_000) == 32
    assert MINILM_TOP.default_physical_batch_size(MINILM_TOP.build(2), CPU, 10) == 10
    hashed = ModelSpec()
    assert hashed.default_physical_batch_size(hashed.build(2), CPU, 2_000) == 2_000


def test_training_device_keeps_small_linear_heads_on_the_cpu():
    hashed = ModelSpec()
    assert hashed.training_device(CUDA, expected_batch=16) == CPU
    assert hashed.training_device(CUDA, expected_batch=2_000) == CUDA
    assert hashed.training_device(CPU, expected_batch=2_000) == CPU
    assert MINILM_TOP.training_device(CUDA, expected_batch=16) == CUDA


# Runs only where CUDA exists (CI and the dev machine have none): on those machines
# bench/gpu_check.sh makes the same device-against-CPU comparison at full size.
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_on_cuda_the_clipped_step_equals_the_cpu_step():
    inputs, y = hidden_states(12)
    on_cpu = _clipped_update(MINILM_TOP, inputs, y, physical=5)
    on_gpu = _clipped_update(MINILM_TOP, inputs, y, physical=0, device=CUDA)
    for key in on_cpu:
        torch.testing.assert_close(on_gpu[key], on_cpu[key], rtol=1e-4, atol=1e-6)


UNITS = np.array([0, 1, 1, 2, 0, 3, 3, 3, 1, 2, 0, 4])  # 5 units of 1 to 3 records


def test_unit_passes_give_the_clipped_sum_of_one_pass_minilm_top():
    inputs, y = hidden_states(12)
    one_pass = _clipped_update(MINILM_TOP, inputs, y, physical=12, units=UNITS)
    per_record = _clipped_update(MINILM_TOP, inputs, y, physical=12)
    assert any(not torch.allclose(one_pass[k], per_record[k]) for k in one_pass)
    for physical in (1, 4):  # a unit larger than the pass gets a pass of its own
        passes = _clipped_update(MINILM_TOP, inputs, y, physical=physical, units=UNITS)
        for key in one_pass:
            torch.testing.assert_close(passes[key], one_pass[key], rtol=1e-4, atol=1e-6)


# Like the test above: only where CUDA exists (neither CI nor the dev machine has it).
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_on_cuda_the_unit_level_step_equals_the_cpu_step():
    inputs, y = hidden_states(12)
    on_cpu = _clipped_update(MINILM_TOP, inputs, y, physical=5, units=UNITS)
    on_gpu = _clipped_update(MINILM_TOP, inputs, y, physical=0, device=CUDA, units=UNITS)
    for key in on_cpu:
        torch.testing.assert_close(on_gpu[key], on_cpu[key], rtol=1e-4, atol=1e-6)


def test_minilm_federated_benchmark_runs_a_tiny_slice_on_cpu(tmp_path):
    results = tmp_path / "fed.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "minilm_federated.py"),
            *("--slice", "60", "--clients", "2", "--rounds", "2", "--max-tokens", "16"),
            *("--device", "cpu", "--json", str(results)),
        ],
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "round 2: accuracy" in proc.stdout
    result = json.loads(results.read_text())
    assert result == json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["epsilon"] <= 3.0 + 1e-9 and result["split"] == "test"
    assert len(result["accuracy"]) == 2
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"])
    assert result["samples/s"] > 0
