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

import torch
from fedshield.client.train import TrainSettings, planned_dp_event, train_locally
from fedshield.common.data import load_builtin, partition, split_holdout
from fedshield.common.featurize import FeaturizerSpec, featurize
from fedshield.common.model import build_model
from fedshield.common.privacy import epsilon_spent, noise_for_target_epsilon


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def run_federation(parts, val, settings, rounds, server_lr, server_momentum, epsilon, delta, seed):
    num_classes = 2
    model = build_model(parts[0][0].shape[1], num_classes)
    velocity = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    noise = {}
    for i, (x, _) in enumerate(parts):
        if settings.dp:
            probe = planned_dp_event(len(x), settings)
            noise[i] = noise_for_target_epsilon(
                epsilon, delta, probe.sample_rate, probe.steps * rounds
            )
    curve = []
    for rnd in range(rounds):
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        total = sum(len(x) for x, _ in parts)
        delta_sum = {k: torch.zeros_like(v) for k, v in global_state.items()}
        eps = []
        for i, (x, y) in enumerate(parts):
            local = build_model(x.shape[1], num_classes)
            local.load_state_dict(global_state)
            s = TrainSettings(**{**settings.__dict__, "noise_multiplier": noise.get(i, 0.0)})
            out = train_locally(local, x, y, s, torch.device("cpu"), seed * 1000 + rnd * 100 + i)
            if out.dp_event:
                eps.append(epsilon_spent([out.dp_event] * (rnd + 1), delta))
            inner = getattr(local, "_module", local)
            for k, v in inner.state_dict().items():
                delta_sum[k] += (v.detach() - global_state[k]) * (len(x) / total)
        new_state = {}
        for k in global_state:
            velocity[k] = server_momentum * velocity[k] + delta_sum[k]
            new_state[k] = global_state[k] + server_lr * velocity[k]
        model.load_state_dict(new_state)
        curve.append(accuracy(model, *val))
    return curve, (max(eps) if eps else 0.0)


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
