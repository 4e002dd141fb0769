"""Cost of DP per local training step, and a check of what the DP step computes.

Same model as the product (``build_model``: Linear 4096 -> 2 over the product's IMDB
features), same optimizer (SGD), one process. Per batch size:

  * plain:  a shuffled DataLoader of ``B``, zero_grad / forward / CE / backward / step;
  * dp-hooks: the product's path (client/train.py): Opacus ``make_private`` with Poisson
    sampling at ``B / n``, per-sample gradients by hooks, clipping, Gaussian noise;
  * dp-ghost: the same with ``grad_sample_mode="ghost"`` (ghost clipping).

A "step" includes drawing the batch from the loader. Warm-up steps are discarded; the
median over the timed steps is reported. ``make_private`` itself runs once per round in
the product (and with the full local batch a round is one step), so it is timed too.

Correctness: with noise 0, the gradient the DP optimizer leaves in ``p.grad`` must equal
the clipped per-sample mean computed by hand (per-example autograd, clip factor
``min(1, C / (norm + 1e-6))`` as Opacus, sum / expected batch size ``n * q``).

    python bench/dp_overhead.py [--records 2000] [--batches 64 1024 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_machine import machine, provenance
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.common.data import load_builtin
from fedshield.common.featurize import featurize
from fedshield.common.model import build_model
from fedshield.common.splits import split_holdout, take

RESULTS = Path(__file__).resolve().parent / "results"
warnings.filterwarnings("ignore")


def opacus_engine():
    level = logging.getLogger("flwr").level
    from opacus import PrivacyEngine

    logging.getLogger("flwr").setLevel(level)
    return PrivacyEngine(accountant="rdp", secure_mode=False)


def make(mode: str, x, y, batch: int, noise: float, clip: float, seed: int = 0):
    """(model, optimizer, criterion, loader, make_private seconds) for ``mode``."""
    torch.manual_seed(seed)
    model = build_model(x.shape[1], 2)
    # a non-zero start, so per-sample gradients differ in norm
    with torch.no_grad():
        model.weight.normal_(0, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long()),
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    if mode == "plain":
        return model, optimizer, criterion, loader, 0.0
    engine = opacus_engine()
    t = time.perf_counter()
    kwargs = dict(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=clip,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )
    if mode == "dp-ghost":
        model, optimizer, criterion, loader = engine.make_private(
            criterion=criterion, grad_sample_mode="ghost", **kwargs
        )
    else:
        model, optimizer, loader = engine.make_private(**kwargs)
    return model, optimizer, criterion, loader, time.perf_counter() - t


def time_interleaved(modes, x, y, batch, warmup, repeat) -> dict:
    """Steps of all modes taken in turn (plain, hooks, ghost, plain, ...), so that load
    from other processes on a shared machine falls on every mode alike."""
    runs = {}
    for mode in modes:
        model, optimizer, criterion, loader, setup_s = make(mode, x, y, batch, 1.0, 1.0)
        runs[mode] = {
            "parts": (model, optimizer, criterion, loader),
            "it": iter(loader),
            "times": [],
            "setup_s": setup_s,
        }
    for step in range(warmup + repeat):
        for mode in modes:
            run = runs[mode]
            model, optimizer, criterion, loader = run["parts"]
            t = time.perf_counter()
            try:
                xb, yb = next(run["it"])
            except StopIteration:
                run["it"] = iter(loader)
                xb, yb = next(run["it"])
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            if step >= warmup:
                run["times"].append(time.perf_counter() - t)
    return {
        mode: {
            "median_ms": 1000 * statistics.median(run["times"]),
            "min_ms": 1000 * min(run["times"]),
            "steps": len(run["times"]),
            "make_private_ms": 1000 * run["setup_s"],
        }
        for mode, run in runs.items()
    }


def reference_grad(x, y, weight, bias, clip, expected_batch):
    """Clipped per-sample mean by hand: per-example autograd, Opacus's clip factor."""
    grads = []
    for i in range(len(y)):
        w = weight.detach().clone().requires_grad_(True)
        b = bias.detach().clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(x[i : i + 1] @ w.T + b, y[i : i + 1])
        gw, gb = torch.autograd.grad(loss, (w, b))
        grads.append(torch.cat([gw.flatten(), gb.flatten()]).double())
    g = torch.stack(grads)
    factor = (clip / (g.norm(dim=1) + 1e-6)).clamp(max=1.0)
    summed = (g * factor[:, None]).sum(0)
    return summed / expected_batch, float((factor < 1).float().mean())


def check_gradient(mode, x, y, batch, clip) -> dict:
    model, optimizer, criterion, loader, _ = make(mode, x, y, batch, 0.0, clip, seed=3)
    inner = model._module
    w0, b0 = inner.weight.detach().clone(), inner.bias.detach().clone()
    xb, yb = next(iter(loader))
    optimizer.zero_grad()
    loss = criterion(model(xb), yb)
    loss.backward()
    optimizer.step()
    got = torch.cat([inner.weight.grad.flatten(), inner.bias.grad.flatten()]).double()
    expected_batch = optimizer.expected_batch_size
    ref, clipped = reference_grad(xb, yb, w0, b0, clip, expected_batch)
    err = float((got - ref).abs().max())
    rel = err / float(ref.abs().max())
    ok = torch.allclose(got, ref, rtol=1e-4, atol=1e-7)
    return {
        "batch_drawn": len(yb),
        "expected_batch_size": expected_batch,
        "fraction_clipped": clipped,
        "max_abs_err": err,
        "max_rel_err": rel,
        "ok": bool(ok),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000, help="one owner's local data")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1024, 0], help="0 = full")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=["plain", "dp-hooks", "dp-ghost"])
    ap.add_argument("--out", default="dp_overhead.json")
    args = ap.parse_args()
    train, _ = split_holdout(load_builtin("imdb"), 0.2, seed=0)
    owner = take(train, args.records, 0)
    x = featurize(owner.texts)
    y = owner.labels
    print(f"owner: {len(y)} IMDB reviews -> features {x.shape}, model Linear({x.shape[1]} -> 2)")

    # -- correctness (noise 0): a small batch and the full batch, clip low enough to bind
    checks = {}
    # clip at the median per-sample gradient norm of the starting model: about half of
    # the samples are clipped, so both branches of the clip factor are exercised
    start, *_ = make("plain", x, y, 64, 0.0, 1.0, seed=3)
    xt, yt = torch.from_numpy(x[:256]), torch.from_numpy(y[:256]).long()
    norms = []
    for i in range(len(yt)):
        g, _ = reference_grad(xt[i : i + 1], yt[i : i + 1], start.weight, start.bias, 1e9, 1)
        norms.append(float(g.norm()))
    clip = float(np.median(norms))
    print(f"grad check clip = median per-sample norm = {clip:.4f}")
    for mode in [m for m in args.modes if m != "plain"]:
        for batch in (64, len(y)):
            r = check_gradient(mode, x, y, batch, clip=clip)
            checks[f"{mode}/B{batch}"] = r
            print(
                f"grad check {mode} B={batch} (drawn {r['batch_drawn']}, "
                f"{100 * r['fraction_clipped']:.0f}% clipped): max rel err "
                f"{r['max_rel_err']:.1e} {'OK' if r['ok'] else 'FAIL'}"
            )
            assert r["ok"], r
    del xt, yt

    # -- timing
    rows = {}
    for batch in args.batches:
        b = batch or len(y)
        for mode, r in time_interleaved(args.modes, x, y, b, args.warmup, args.repeat).items():
            rows[(b, mode)] = r
            print(f"  B={b} {mode}: {r['median_ms']:.2f} ms/step", flush=True)
    print(f"\nload: {machine()['loadavg']}\n")
    print(
        "| batch | mode | ms/step median | x plain | ms/step min | x plain (min) "
        "| make_private ms (per round) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (b, mode), r in rows.items():
        ref = rows.get((b, "plain"))
        r["x_plain"] = r["median_ms"] / ref["median_ms"] if ref else 0.0
        r["x_plain_min"] = r["min_ms"] / ref["min_ms"] if ref else 0.0
        print(
            f"| {b}{' (full)' if b == len(y) else ''} | {mode} | {r['median_ms']:.2f} | "
            f"{r['x_plain']:.1f} | {r['min_ms']:.2f} | {r['x_plain_min']:.1f} | "
            f"{r['make_private_ms']:.1f} |"
        )
    out = {
        **provenance(),
        "records": len(y),
        "feature_dim": int(x.shape[1]),
        "grad_check_clip": clip,
        "grad_checks": checks,
        "timing": {f"B{b}/{m}": r for (b, m), r in rows.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
