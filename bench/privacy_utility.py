"""Privacy against utility on IMDB: centralised, federated, federated DP, and a naive baseline.

Fixed held-out test split (``split_holdout(load_builtin('imdb'), 0.2, seed=0)``), 10
owners, Dirichlet(0.5) and IID partitions, the product's defaults (common/config.py):

  (a) central      logistic regression on the same 4096-d features, all training data
  (b) fed-nodp     federated, the product's local training with DP off
  (c) fed-dp-epsE  federated DP at epsilon E per owner (delta 1e-5) over all rounds
  (d) naive-*      hashed uni+bigram ids -> nn.Embedding(2^16, 16) -> mean -> Linear,
                   trained from scratch, per-owner DP-SGD/Adam with Opacus (or without DP)

Every (condition, partition, seed) cell is written to bench/results/privacy_utility/ as
it finishes and skipped when rerun, so the whole benchmark runs in pieces:

    python bench/privacy_utility.py --budget-min 8          # repeat until "all done"
    python bench/privacy_utility.py --report                # tables + summary JSON

Tiny smoke run: ``--rounds 2 --seeds 0 --max-records 2000 --tag tiny``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from bench_machine import invocation, provenance
from fedloop import accuracy, run_federation
from torch import nn

from fedshield.client.train import TrainSettings
from fedshield.common.config import RunConfig
from fedshield.common.data import load_builtin
from fedshield.common.featurize import FeaturizerSpec, featurize
from fedshield.common.model import build_model
from fedshield.common.splits import partition, split_holdout, take

RESULTS = Path(__file__).resolve().parent / "results"
EPSILONS = (8.0, 3.0, 1.0)


# ---------------------------------------------------------------- data


class Data:
    """Lazily built features of the fixed split and of each partition."""

    def __init__(self, args):
        self.args = args
        data = load_builtin("imdb")
        self.train, self.test = split_holdout(data, 0.2, seed=0)
        if args.max_records:
            self.train = take(self.train, args.max_records, 0)
            self.test = take(self.test, max(args.max_records // 4, 200), 0)
        self.spec = FeaturizerSpec()  # RunConfig's feat-* defaults
        self._feat = {}
        self._parts = {}

    def features(self, which: str) -> np.ndarray:
        if which not in self._feat:
            ds = self.train if which == "train" else self.test
            self._feat[which] = featurize(ds.texts, self.spec)
        return self._feat[which]

    def parts(self, scheme: str, seed: int):
        key = (scheme, seed)
        if key not in self._parts:
            self._parts[key] = partition(self.train, self.args.clients, scheme, 0.5, seed)
        return self._parts[key]


# ---------------------------------------------------------------- (a) central


def run_central(data: Data, seed: int) -> dict:
    """Logistic regression on all training features: sklearn (L2, C=1) and the product's
    own zero-initialised linear model trained full-batch with Adam, no regularisation."""
    from sklearn.linear_model import LogisticRegression

    x, y = data.features("train"), data.train.labels
    xt, yt = data.features("test"), data.test.labels
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    sk_acc = float((clf.predict(xt) == yt).mean())
    torch.manual_seed(seed)
    model = build_model(x.shape[1], 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    xx, yy = torch.from_numpy(x), torch.from_numpy(y).long()
    # Unregularised logistic loss on near-separable data never converges: a fixed 300
    # full-batch steps (no early stopping on the test split).
    for step in range(300):  # noqa: B007
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xx), yy)
        loss.backward()
        opt.step()
    return {
        "accuracy": sk_acc,
        "sklearn_l2_c1": sk_acc,
        "adam_fullbatch_unregularised": accuracy(model, xt, yt),
        "adam_steps": step + 1,
        "adam_final_train_loss": float(loss.item()),
    }


# ---------------------------------------------------------------- (b), (c) federated


def run_fed(data: Data, scheme: str, seed: int, epsilon: float | None) -> dict:
    cfg = RunConfig()
    settings = dataclasses.replace(
        TrainSettings.from_plan(cfg), dp=epsilon is not None, learning_rate=cfg.learning_rate_for(2)
    )
    parts = data.parts(scheme, seed)
    x = data.features("train")
    # features are a pure function of the text: any row holding the same text will do
    index = {t: i for i, t in enumerate(data.train.texts)}
    feats = []
    for p in parts:
        rows = [index[t] for t in p.texts]
        feats.append((x[rows], p.labels))
    curve, eps = run_federation(
        feats,
        (data.features("test"), data.test.labels),
        settings,
        data.args.rounds,
        cfg.server_learning_rate,
        cfg.server_momentum,
        epsilon or 0.0,
        cfg.delta,
        seed,
    )
    return {
        "accuracy": curve[-1],
        "curve": curve,
        "epsilon_spent_max": eps,
        "client_sizes": [len(p) for p in parts],
        "settings": settings.__dict__,
        "server_lr": cfg.server_learning_rate,
        "server_momentum": cfg.server_momentum,
    }


# ---------------------------------------------------------------- (d) naive baseline

NAIVE_BUCKETS = 2**16


def hashed_ids(texts: list[str], max_len: int) -> np.ndarray:
    """crc32 of word uni+bigrams (interleaved: w1, w1 w2, w2, ...) into 2^16 - 1 buckets,
    shifted by one so that id 0 is padding; first ``max_len`` ids of each text."""
    from sklearn.feature_extraction.text import HashingVectorizer

    hv = HashingVectorizer()
    pre, tok = hv.build_preprocessor(), hv.build_tokenizer()
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for r, text in enumerate(texts):
        words = tok(pre(text))
        ids = []
        for i, w in enumerate(words):
            ids.append(w)
            if i + 1 < len(words):
                ids.append(w + " " + words[i + 1])
            if len(ids) >= max_len:
                break
        ids = [1 + zlib.crc32(g.encode()) % (NAIVE_BUCKETS - 1) for g in ids[:max_len]]
        out[r, : len(ids)] = ids
    return out


class MeanEmbed(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.emb = nn.Embedding(NAIVE_BUCKETS, dim, padding_idx=0)
        self.fc = nn.Linear(dim, 2)

    def forward(self, ids):
        mask = (ids > 0).float().unsqueeze(-1)
        pooled = (self.emb(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.fc(pooled)


def run_naive(data: Data, scheme: str, seed: int, epsilon: float | None) -> dict:
    """Per-owner training of the embedding model, FedAvg of the whole model each round.

    Local: 1 epoch of Adam (lr ``--naive-lr``), batch ``--naive-batch``; with DP, Opacus
    ghost clipping, Poisson sampling, clip 1.0, noise for ``epsilon`` over all rounds.
    """
    import logging

    level = logging.getLogger("flwr").level
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier

    logging.getLogger("flwr").setLevel(level)
    args = data.args
    rounds = args.naive_rounds
    parts = data.parts(scheme, seed)
    ids = [torch.from_numpy(hashed_ids(p.texts, args.naive_len)) for p in parts]
    labels = [torch.from_numpy(p.labels).long() for p in parts]
    test_ids = torch.from_numpy(hashed_ids(data.test.texts, args.naive_len))
    test_y = data.test.labels
    torch.manual_seed(seed)
    glob = MeanEmbed()
    curve, eps_spent, step_times = [], [], []
    for rnd in range(rounds):
        gstate = {k: v.clone() for k, v in glob.state_dict().items()}
        total = sum(len(y) for y in labels)
        new = {k: torch.zeros_like(v) for k, v in gstate.items()}
        for i, (xi, yi) in enumerate(zip(ids, labels, strict=True)):
            local = MeanEmbed()
            local.load_state_dict(gstate)
            bs = min(args.naive_batch, len(yi))
            gen = torch.Generator().manual_seed(seed * 1000 + rnd * 100 + i)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(xi, yi), batch_size=bs, shuffle=True, generator=gen
            )
            opt = torch.optim.Adam(local.parameters(), lr=args.naive_lr)
            crit = nn.CrossEntropyLoss()
            model = local
            if epsilon is not None:
                steps_per_round = len(loader)
                sigma = get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=1e-5,
                    sample_rate=1 / steps_per_round,
                    steps=steps_per_round * rounds,
                    accountant="rdp",
                )
                engine = PrivacyEngine(accountant="rdp")
                model, opt, crit, loader = engine.make_private(
                    module=local,
                    optimizer=opt,
                    data_loader=loader,
                    criterion=crit,
                    noise_multiplier=sigma,
                    max_grad_norm=1.0,
                    poisson_sampling=True,
                    grad_sample_mode="ghost",
                    noise_generator=torch.Generator().manual_seed(seed * 7919 + rnd * 101 + i),
                )
            model.train()
            for xb, yb in loader:
                t = time.perf_counter()
                opt.zero_grad()
                loss = crit(model(xb), yb)
                loss.backward()
                opt.step()
                step_times.append(time.perf_counter() - t)
            if epsilon is not None:
                # this round's events composed with the previous rounds' (same sigma, q)
                sigma_q = engine.accountant.history[0][:2]
                n_steps = sum(h[2] for h in engine.accountant.history)
                from fedshield.common.dp_event import DpEvent
                from fedshield.common.privacy import epsilon_spent

                ev = DpEvent(sigma_q[0], sigma_q[1], n_steps)
                eps_spent.append(epsilon_spent([ev] * (rnd + 1), 1e-5))
            for k, v in local.state_dict().items():
                new[k] += v.detach() * (len(yi) / total)
        glob.load_state_dict(new)
        curve.append(_acc_ids(glob, test_ids, test_y))
        print(f"  naive round {rnd + 1}/{rounds}: {curve[-1]:.4f}", flush=True)
    return {
        "accuracy": curve[-1],
        "curve": curve,
        "epsilon_spent_max": max(eps_spent[-len(parts) :]) if eps_spent else 0.0,
        "rounds": rounds,
        "max_len": args.naive_len,
        "batch": args.naive_batch,
        "local_optimizer": f"Adam lr {args.naive_lr}, 1 epoch",
        "grad_sample_mode": "ghost" if epsilon is not None else None,
        "median_step_s": float(np.median(step_times)),
    }


def _acc_ids(model, ids, y) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(ids[i : i + 2048]).argmax(1) for i in range(0, len(ids), 2048)])
    return float((pred.numpy() == y).mean())


# ---------------------------------------------------------------- driver


def cells(args) -> list[tuple[str, str, int]]:
    out = [("central", "-", 0)]
    for scheme in ("dirichlet", "iid"):
        for seed in args.seeds:
            out.append(("fed-nodp", scheme, seed))
            for e in EPSILONS:
                out.append((f"fed-dp-eps{e:g}", scheme, seed))
    if not args.skip_naive:
        out.append(("naive-dp-eps3", "dirichlet", args.seeds[0]))
        out.append(("naive-nodp", "dirichlet", args.seeds[0]))
    return out


def run_cell(data: Data, name: str, scheme: str, seed: int) -> dict:
    if name == "central":
        return run_central(data, seed)
    if name == "fed-nodp":
        return run_fed(data, scheme, seed, None)
    if name.startswith("fed-dp-eps"):
        return run_fed(data, scheme, seed, float(name[len("fed-dp-eps") :]))
    if name == "naive-dp-eps3":
        return run_naive(data, scheme, seed, 3.0)
    if name == "naive-nodp":
        return run_naive(data, scheme, seed, None)
    raise ValueError(name)


def report(args, outdir: Path) -> None:
    rows = {}
    for f in sorted(outdir.glob("cell-*.json")):
        c = json.loads(f.read_text())
        rows.setdefault((c["condition"], c["partition"]), []).append(c)
    summary = {}
    for (cond, scheme), cs in rows.items():
        accs = [c["result"]["accuracy"] for c in cs]
        summary[f"{cond}/{scheme}"] = {
            "condition": cond,
            "partition": scheme,
            "seeds": [c["seed"] for c in cs],
            "accuracy": accs,
            "mean": float(np.mean(accs)),
            "min": float(np.min(accs)),
            "max": float(np.max(accs)),
            "epsilon_spent_max": max(c["result"].get("epsilon_spent_max", 0.0) for c in cs),
            "seconds": [c["seconds"] for c in cs],
        }
    print(
        f"\nIMDB, test split 5,000, {args.clients} owners, {args.rounds} rounds "
        f"(naive: {args.naive_rounds}); accuracy on the test split\n"
    )
    print(
        "| condition | partition | seeds | mean | min-max | gap to fed non-DP (pts) | eps spent |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    order = (
        ["central", "fed-nodp"]
        + [f"fed-dp-eps{e:g}" for e in EPSILONS]
        + ["naive-nodp", "naive-dp-eps3"]
    )
    for cond in order:
        for scheme in ("-", "dirichlet", "iid"):
            s = summary.get(f"{cond}/{scheme}")
            if not s:
                continue
            ref = summary.get(f"fed-nodp/{scheme}")
            gap = ""
            if ref and cond.startswith("fed-dp"):
                gap = f"{100 * (s['mean'] - ref['mean']):+.1f}"
            print(
                f"| {cond} | {scheme} | {len(s['accuracy'])} | {s['mean']:.4f} | "
                f"{s['min']:.4f}-{s['max']:.4f} | {gap} | {s['epsilon_spent_max']:.2f} |"
            )
    central = next(iter(rows.get(("central", "-"), [])), None)
    if central:
        r = central["result"]
        print(
            f"\ncentral: sklearn LR (L2, C=1) {r['sklearn_l2_c1']:.4f}; same linear model, "
            f"full-batch Adam, unregularised, {r['adam_steps']} steps: "
            f"{r['adam_fullbatch_unregularised']:.4f}"
        )
    out = {
        **provenance(),
        "settings": {k: v for k, v in vars(args).items()},
        "product_defaults": RunConfig().as_dict(),
        "summary": summary,
        "cells": {f.stem: json.loads(f.read_text()) for f in sorted(outdir.glob("cell-*.json"))},
    }
    path = RESULTS / f"privacy_utility{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=RunConfig().num_rounds)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-records", type=int, default=0, help="tiny runs only")
    ap.add_argument("--only", nargs="*", default=None, help="condition names to run")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-rounds", type=int, default=5)
    ap.add_argument("--naive-len", type=int, default=256)
    ap.add_argument("--naive-batch", type=int, default=256)
    ap.add_argument("--naive-lr", type=float, default=0.02)
    ap.add_argument(
        "--budget-min", type=float, default=8.0, help="start no new cell after this many minutes"
    )
    ap.add_argument("--tag", default="")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    outdir = RESULTS / ("privacy_utility" + ("-" + args.tag if args.tag else ""))
    outdir.mkdir(parents=True, exist_ok=True)
    if args.report:
        report(args, outdir)
        return
    t0 = time.time()
    data = Data(args)
    todo = [c for c in cells(args) if args.only is None or c[0] in args.only]
    for name, scheme, seed in todo:
        path = outdir / f"cell-{name}-{scheme}-s{seed}.json"
        if path.exists():
            continue
        if time.time() - t0 > args.budget_min * 60:
            print("budget reached; rerun to continue", flush=True)
            return
        t = time.time()
        result = run_cell(data, name, scheme, seed)
        cell = {
            "condition": name,
            "partition": scheme,
            "seed": seed,
            "result": result,
            "seconds": round(time.time() - t, 1),
            **invocation(),
        }
        path.write_text(json.dumps(cell, indent=1))
        print(
            f"{name:14s} {scheme:9s} seed {seed}: acc {result['accuracy']:.4f} "
            f"({cell['seconds']:.0f}s)",
            flush=True,
        )
    print("all done", flush=True)


if __name__ == "__main__":
    main()
