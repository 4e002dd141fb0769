"""Small multi-class owners: DP (target epsilon) against the same federation without DP.

Each seed draws ``owners * per_owner`` records from a corpus's train split
(bench/corpora.py) and splits them among ``owners`` owners (Dirichlet over labels by
default, as ``fedshield simulate``); every setting is trained for each planned number of
rounds, once with DP and once without, with the in-process loop of bench/fedloop.py (the
product's ``train_locally``, FedAvgM at the server). Accuracy is on the corpus's
validation split, or with ``--test`` on its test split (the final table only).

Settings may depend on what an owner knows publicly (its record count N, the class
count K, the planned rounds R):

- ``learning_rate`` is multiplied by ``(K / 2) ** lr_class_pow * (40 / R) ** lr_round_pow``
  (both powers 0 = the plain learning rate; K = 2, R = 40 are IMDB's plan);
- ``local_steps`` S > 0 sets the owner's batch size to ceil(N / S) (Poisson rate ~1/S,
  S steps per local epoch whatever N); 0 uses ``batch_size`` (0 = full batch);
- ``min_steps`` M > 0 raises local_epochs to ceil(M / (R * steps per epoch)).

    python bench/small_owners.py --grid '{"learning_rate":[5,10],"lr_class_pow":[0,1]}'
    python bench/small_owners.py --imdb --seeds 0 1 2        # target A with one setting
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
import warnings

import fedloop  # bench/fedloop.py
import torch
from corpora import load_corpus  # bench/corpora.py

from fedshield.client.train import TrainSettings
from fedshield.common.config import RunConfig
from fedshield.common.data import load_builtin
from fedshield.common.featurize import FeaturizerSpec, featurize
from fedshield.common.plan import LEARNING_RATE_PER_CLASS
from fedshield.common.splits import partition, split_holdout, take

# The product's defaults (common/config.py RunConfig) plus the rule knobs (doc above):
# 2.5 per class is 5 at K = 2 with power 1.
DEFAULTS = {
    "learning_rate": LEARNING_RATE_PER_CLASS * 2,
    "lr_class_pow": 1.0,
    "lr_round_pow": 0.0,
    "momentum": 0.0,
    "batch_size": 0,
    "local_steps": 0,
    "local_epochs": 1,
    "min_steps": 0,
    "max_grad_norm": 1.0,
    "server_lr": 1.0,
    "server_momentum": 0.9,
    "out_dim": 4096,
    "ngram_max": RunConfig().feat_ngram_max,
}


def owner_settings(cfg: dict, n: int, k: int, rounds: int, dp: bool) -> TrainSettings:
    """The TrainSettings an owner with ``n`` records would use under rule set ``cfg``."""
    lr = cfg["learning_rate"] * (k / 2) ** cfg["lr_class_pow"]
    lr *= (40 / rounds) ** cfg["lr_round_pow"]
    batch = math.ceil(n / cfg["local_steps"]) if cfg["local_steps"] > 0 else cfg["batch_size"]
    steps_per_epoch = math.ceil(n / batch) if batch > 0 else 1
    epochs = cfg["local_epochs"]
    if cfg["min_steps"] > 0:
        epochs = max(epochs, math.ceil(cfg["min_steps"] / (rounds * steps_per_epoch)))
    return TrainSettings(
        local_epochs=int(epochs),
        batch_size=int(batch),
        learning_rate=float(lr),
        momentum=cfg["momentum"],
        max_grad_norm=cfg["max_grad_norm"],
        dp=dp,
    )


def run_federation(parts, val, cfg, rounds, epsilon, delta, num_classes, dp):
    """bench/fedloop.run_federation with per-owner settings; returns (curve, max eps)."""
    settings = [owner_settings(cfg, len(x), num_classes, rounds, dp) for x, _ in parts]
    return fedloop.run_federation(
        parts,
        val,
        settings,
        rounds,
        cfg["server_lr"],
        cfg["server_momentum"],
        epsilon,
        delta,
        seed=0,
        num_classes=num_classes,
    )


class Features:
    """Featurised texts, cached per (texts id, out_dim)."""

    def __init__(self):
        self.cache = {}

    def __call__(self, texts, cfg):
        key = (id(texts), cfg["out_dim"], cfg["ngram_max"])
        if key not in self.cache:
            spec = FeaturizerSpec(out_dim=cfg["out_dim"], ngram_max=cfg["ngram_max"])
            self.cache[key] = (texts, featurize(texts, spec))
        return self.cache[key][1]


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def small_owner_table(args, configs, feats) -> None:
    split = "test" if args.test else "val"
    print(
        f"\n{args.owners} owners x {args.per_owner} records ({args.partition}"
        f"{' alpha ' + str(args.alpha) if args.partition == 'dirichlet' else ''}), "
        f"epsilon {args.epsilon}, delta {args.delta}, {split} accuracy, seeds {args.seeds}\n"
    )
    print("| corpus | setting | rounds | DP | no DP | gap | DP per seed | eps | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for corpus in args.corpora:
        train = load_corpus(corpus, "train")
        held = load_corpus(corpus, split)
        k = len(train.classes)
        pools = {}
        for seed in args.seeds:
            pool = take(train, args.owners * args.per_owner, seed)
            pools[seed] = partition(pool, args.owners, args.partition, args.alpha, seed)
        for cfg in configs:
            for rounds in args.rounds:
                t = time.time()
                acc = {True: [], False: []}
                eps_max = 0.0
                for seed in args.seeds:
                    parts = [(feats(p.texts, cfg), p.labels) for p in pools[seed]]
                    val = (feats(held.texts, cfg), held.labels)
                    for dp in (True, False):
                        curve, eps = run_federation(
                            parts, val, cfg, rounds, args.epsilon, args.delta, k, dp
                        )
                        acc[dp].append(curve[-1])
                        eps_max = max(eps_max, eps)
                gap = statistics.mean(acc[False]) - statistics.mean(acc[True])
                print(
                    f"| {corpus} | {describe(cfg)} | {rounds} | {fmt(acc[True])} | "
                    f"{fmt(acc[False])} | {gap:+.3f} | "
                    f"{' '.join(f'{a:.3f}' for a in acc[True])} | {eps_max:.2f} | "
                    f"{time.time() - t:.0f}s |",
                    flush=True,
                )


def imdb_table(args, configs, feats) -> None:
    """Target A: IMDB, 10 owners Dirichlet 0.5, 40 rounds, epsilon 3 (bench/tune.py's split)."""
    data = load_builtin("imdb")
    train, test = split_holdout(data, 0.2, seed=0)
    train, val = split_holdout(train, 0.125, seed=1)
    held = test if args.test else val
    print(
        f"\nIMDB, 10 owners dirichlet 0.5, 40 rounds, epsilon 3, delta 1e-5, "
        f"{'test' if args.test else 'val'} accuracy\n"
    )
    print("| setting | seed | last | best | acc at 10/20/30/40 | eps | time |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        parts_ds = partition(train, 10, "dirichlet", 0.5, seed)
        for cfg in configs:
            t = time.time()
            parts = [(feats(p.texts, cfg), p.labels) for p in parts_ds]
            val_xy = (feats(held.texts, cfg), held.labels)
            curve, eps = run_federation(parts, val_xy, cfg, 40, 3.0, 1e-5, 2, not args.no_dp)
            print(
                f"| {describe(cfg)} | {seed} | {curve[-1]:.3f} | {max(curve):.3f} | "
                f"{' '.join(f'{curve[r - 1]:.3f}' for r in (10, 20, 30, 40))} | {eps:.2f} | "
                f"{time.time() - t:.0f}s |",
                flush=True,
            )
        feats.cache = {k: v for k, v in feats.cache.items() if v[0] is held.texts}


def describe(cfg: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items() if DEFAULTS.get(k) != v) or "defaults"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpora", nargs="+", default=["bbc", "stackoverflow"])
    ap.add_argument("--owners", type=int, default=4)
    ap.add_argument("--per-owner", type=int, default=300)
    ap.add_argument("--partition", default="dirichlet")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", default="{}", help="JSON: setting -> value (base for the grid)")
    ap.add_argument("--grid", default="{}", help="JSON: setting -> list of values")
    ap.add_argument("--test", action="store_true", help="report the test split (final table)")
    ap.add_argument("--imdb", action="store_true", help="target A (IMDB) instead")
    ap.add_argument("--no-dp", action="store_true", help="with --imdb: train without DP")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook")

    base = {**DEFAULTS, **json.loads(args.set)}
    grid = json.loads(args.grid)
    unknown = set(base) - set(DEFAULTS) | set(grid) - set(DEFAULTS)
    if unknown:
        ap.error(f"unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    keys = list(grid)
    configs = [
        {**base, **dict(zip(keys, values, strict=True))}
        for values in itertools.product(*(grid[k] for k in keys))
    ]
    feats = Features()
    if args.imdb:
        imdb_table(args, configs, feats)
    else:
        small_owner_table(args, configs, feats)


if __name__ == "__main__":
    main()
