"""Pick DP training hyperparameters on a validation split, in-process (no Flower).

Runs the same local training code the ClientApp runs (client/train.py) and plain
weighted FedAvg with optional server momentum, so a sweep over many settings fits in
minutes. The held-out test split is never looked at here; only validation accuracy.

    python bench/tune.py --partition dirichlet --epsilon 3 --grid '{"learning_rate":[2,5]}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from fedloop import run_federation  # bench/fedloop.py (the shared in-process loop)

from fedshield.client.train import TrainSettings
from fedshield.common.data import load_builtin
from fedshield.common.featurize import FeaturizerSpec, featurize
from fedshield.common.splits import partition, split_holdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partition", default="dirichlet")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--no-dp", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out-dim", type=int, default=4096)
    ap.add_argument("--grid", default="{}", help="JSON: setting -> list of values")
    args = ap.parse_args()

    spec = FeaturizerSpec(out_dim=args.out_dim)
    data = load_builtin("imdb")
    train, _test = split_holdout(data, 0.2, seed=0)  # test split untouched here
    train, val = split_holdout(train, 0.125, seed=1)
    xv = featurize(val.texts, spec)
    grid = {
        "learning_rate": [2.0],
        "momentum": [0.0],
        "batch_size": [128],
        "local_epochs": [1],
        "max_grad_norm": [1.0],
        "server_lr": [1.0],
        "server_momentum": [0.0],
    }
    grid.update(json.loads(args.grid))
    keys = list(grid)
    print("| " + " | ".join(keys) + " | seed | val acc per round | last | eps |")
    for seed in args.seeds:
        parts_ds = partition(train, args.clients, args.partition, args.alpha, seed)
        parts = [(featurize(p.texts, spec), p.labels) for p in parts_ds]
        for values in itertools.product(*(grid[k] for k in keys)):
            cfg = dict(zip(keys, values, strict=True))
            server_lr = cfg.pop("server_lr")
            server_momentum = cfg.pop("server_momentum")
            settings = TrainSettings(dp=not args.no_dp, **cfg)
            t = time.time()
            curve, eps = run_federation(
                parts,
                (xv, val.labels),
                settings,
                args.rounds,
                server_lr,
                server_momentum,
                args.epsilon,
                args.delta,
                seed,
            )
            print(
                "| "
                + " | ".join(str(v) for v in values)
                + f" | {seed} | "
                + " ".join(f"{a:.3f}" for a in curve)
                + f" | {curve[-1]:.3f} | {eps:.2f} |"
                + f" {time.time() - t:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
