"""Full-size MiniLM federated benchmark: IMDB, 10 Dirichlet owners, DP at epsilon 3.

Built-in IMDB (25k reviews; ``--slice N`` takes a seeded N), split 80/20 into training
and held-out records (``split_holdout``), the training part split among ``--clients``
Dirichlet(``--alpha``) owners (``partition``). Each owner's texts go through the
product's ``ModelSpec.encode``; every round each owner trains the global model with
the product's ``train_locally`` (DP-SGD, noise from ``train.calibrated`` so
that ``--rounds`` rounds compose to ``--epsilon`` at ``--delta``), and the updates are
aggregated like the server's FedAvgM (weighted mean, then server momentum and server
learning rate; ``bench/fedloop.py`` does the same for the hashed model). Prints the
accuracy after every round, the epsilon spent and training samples/s, and a final JSON
line (also written to ``--json``). Defaults are RunConfig's.

Tuning never sees the test split: ``--split validation`` (and every ``--grid`` run)
trains on 80% of the training records and evaluates on the other 20%.

    python bench/minilm_federated.py                              # full size (H200)
    python bench/minilm_federated.py --slice 120 --rounds 2 --max-tokens 32 --device cpu
    python bench/minilm_federated.py --grid server-momentum=0,0.9 encoder-learning-rate=0.25,0.5

A GPU host without flwr-datasets can read the owners from ``--partition-file``, written
on a machine that has it (the file is created when it does not exist):

    python bench/minilm_federated.py --partition-file owners.json --partition-only
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedshield.client.train import TrainSettings, calibrated, train_locally
from fedshield.common.config import RunConfig
from fedshield.common.data import TextDataset, load_builtin
from fedshield.common.model import (
    ModelInputs,
    ModelSpec,
    evaluate_model,
    resolve_device,
    unwrapped_state_dict,
)
from fedshield.common.privacy import epsilon_spent
from fedshield.common.splits import partition, split_holdout, take

NUM_CLASSES = 2
# What --grid may vary, with the type of each value.
GRID_KEYS = {
    "learning-rate": float,
    "encoder-learning-rate": float,
    "server-learning-rate": float,
    "server-momentum": float,
    "max-grad-norm": float,
    "finetune-layers": int,
    "max-tokens": int,
}


@dataclass(frozen=True)
class Hyper:
    """One configuration of the benchmark (the names of GRID_KEYS, snake_case)."""

    rounds: int
    learning_rate: float
    encoder_learning_rate: float
    server_learning_rate: float
    server_momentum: float
    max_grad_norm: float
    finetune_layers: int
    max_tokens: int
    batch_size: int
    local_epochs: int
    momentum: float
    physical_batch_size: int


def owner_rows(train: TextDataset, args: argparse.Namespace) -> list[np.ndarray]:
    """Each owner's row numbers in ``train``, from ``partition`` or ``--partition-file``."""
    key = {
        "slice": args.slice,
        "records": len(train),
        "clients": args.clients,
        "alpha": args.alpha,
        "seed": args.seed,
    }
    path = args.partition_file
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] != key:
            sys.exit(f"{path} was written for {saved['key']}, this run is {key}; delete it")
        return [np.asarray(rows, dtype=np.int64) for rows in saved["owners"]]
    # partition() only reads labels and takes subsets: texts that are row numbers make
    # its subsets name the rows they hold.
    numbered = TextDataset(
        [str(i) for i in range(len(train))], train.labels, train.classes, "", train.source
    )
    parts = partition(numbered, args.clients, "dirichlet", args.alpha, args.seed)
    owners = [np.asarray([int(t) for t in part.texts], dtype=np.int64) for part in parts]
    if path is not None:
        path.write_text(json.dumps({"key": key, "owners": [o.tolist() for o in owners]}))
    return owners


def federate(
    hyper: Hyper,
    owners: list[tuple[ModelInputs, np.ndarray]],
    evaluation: tuple[ModelInputs, np.ndarray],
    args: argparse.Namespace,
    device: torch.device,
) -> dict:
    """``hyper.rounds`` rounds of DP FedAvgM; accuracy on ``evaluation`` after each."""
    plan = RunConfig().replace(
        model="minilm",
        finetune_layers=hyper.finetune_layers,
        max_tokens=hyper.max_tokens,
        local_epochs=hyper.local_epochs,
        batch_size=hyper.batch_size,
        learning_rate=hyper.learning_rate,
        momentum=hyper.momentum,
        max_grad_norm=hyper.max_grad_norm,
        physical_batch_size=hyper.physical_batch_size,
        encoder_learning_rate=hyper.encoder_learning_rate,
    )
    base = TrainSettings.from_plan(plan)  # the ClientApp's reading of a plan
    spec = base.model_spec
    settings = [
        calibrated(base, len(labels), hyper.rounds, args.epsilon, args.delta)
        for _, labels in owners
    ]
    model = spec.build(NUM_CLASSES)
    state = unwrapped_state_dict(model)
    velocity = {k: torch.zeros_like(v) for k, v in state.items()}
    total = sum(len(labels) for _, labels in owners)
    curve, train_s, trained, events = [], 0.0, 0, []
    for rnd in range(1, hyper.rounds + 1):
        mean_delta = {k: torch.zeros_like(v) for k, v in state.items()}
        events = []
        for (inputs, labels), owner_settings in zip(owners, settings, strict=True):
            local = spec.build(NUM_CLASSES)
            local.load_state_dict(state)
            _sync(device)
            start = time.perf_counter()
            outcome = train_locally(local, inputs, labels, owner_settings, device)
            _sync(device)
            train_s += time.perf_counter() - start
            trained += len(labels)
            events.append(outcome.dp_event)
            for k, v in unwrapped_state_dict(local).items():
                mean_delta[k] += (v - state[k]) * (len(labels) / total)
        for k in state:
            velocity[k] = hyper.server_momentum * velocity[k] + mean_delta[k]
            state[k] = state[k] + hyper.server_learning_rate * velocity[k]
        model.load_state_dict(state)
        _, accuracy = evaluate_model(model, *evaluation, device=device)
        curve.append(accuracy)
        print(f"round {rnd}: accuracy {accuracy:.4f} ({trained / train_s:.0f} samples/s)")
    epsilon = max(epsilon_spent([event] * hyper.rounds, args.delta) for event in events)
    return {
        **hyper.__dict__,
        "accuracy": curve,
        "final accuracy": curve[-1],
        "best accuracy": max(curve),
        "epsilon": epsilon,
        "samples/s": trained / train_s,
        "noise multipliers": [s.noise_multiplier for s in settings],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grid_points(base: Hyper, grid: list[str]) -> list[Hyper]:
    """Every combination of ``KEY=V1,V2`` values, on top of ``base``."""
    axes = []
    for item in grid:
        key, _, values = item.partition("=")
        if key not in GRID_KEYS or not values:
            sys.exit(f"--grid {item!r}: use KEY=V1,V2 with KEY one of {', '.join(GRID_KEYS)}")
        axes.append([(key.replace("-", "_"), GRID_KEYS[key](v)) for v in values.split(",")])
    return [replace(base, **dict(point)) for point in itertools.product(*axes)]


def parse_args() -> argparse.Namespace:
    plan = RunConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rounds", type=int, default=plan.num_rounds)
    add("--clients", type=int, default=10)
    add("--alpha", type=float, default=plan.alpha)
    add("--epsilon", type=float, default=plan.target_epsilon)
    add("--delta", type=float, default=plan.delta)
    add("--learning-rate", type=float, default=plan.learning_rate_for(NUM_CLASSES))
    add("--encoder-learning-rate", type=float, default=plan.encoder_learning_rate)
    add("--server-learning-rate", type=float, default=plan.server_learning_rate)
    add("--server-momentum", type=float, default=plan.server_momentum)
    add("--momentum", type=float, default=plan.momentum)
    add("--max-grad-norm", type=float, default=plan.max_grad_norm)
    add("--batch-size", type=int, default=plan.batch_size)
    add("--local-epochs", type=int, default=plan.local_epochs)
    add("--finetune-layers", type=int, default=plan.finetune_layers)
    add("--max-tokens", type=int, default=plan.max_tokens)
    add("--physical-batch-size", type=int, default=plan.physical_batch_size)
    add("--slice", type=int, default=0, help="use N seeded records of IMDB (0: all 25k)")
    add("--seed", type=int, default=plan.seed)
    add("--device", default=plan.device, help="auto, cpu, cuda or cuda:N")
    add("--split", choices=("test", "validation"), default="test", help="what to score on")
    add("--grid", nargs="+", metavar="KEY=V1,V2", help="tune on the validation split")
    add("--partition-file", type=Path, help="owners' rows: read if present, else written")
    add("--partition-only", action="store_true", help="write --partition-file, then stop")
    add("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.partition_only and args.partition_file is None:
        parser.error("--partition-only needs --partition-file")
    return args


def main() -> int:
    args = parse_args()
    # Opacus's hooks on a module whose inputs need no gradient: expected, not a problem.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    device = resolve_device(args.device)
    base = Hyper(**{name: getattr(args, name) for name in Hyper.__dataclass_fields__})
    data = take(load_builtin("imdb"), args.slice, seed=args.seed)
    train, test = split_holdout(data, 0.2, seed=args.seed)
    split = "validation" if args.grid else args.split
    if split == "validation":
        train, test = split_holdout(train, 0.2, seed=args.seed + 1)
    rows = owner_rows(train, args)
    if args.partition_only:
        print(f"{len(rows)} owners' rows in {args.partition_file}")
        return 0
    points = grid_points(base, args.grid) if args.grid else [base]
    print(
        f"device {device}; {len(train)} training records over {len(rows)} owners "
        f"({sorted(len(r) for r in rows)}), {len(test)} {split} records; "
        f"epsilon {args.epsilon}, delta {args.delta}"
    )
    results, encoded = [], {}
    for hyper in points:
        shape = (hyper.finetune_layers, hyper.max_tokens)
        if shape not in encoded:
            spec = ModelSpec(name="minilm", finetune_layers=shape[0], max_tokens=shape[1])
            start = time.perf_counter()
            owners = [
                (spec.encode([train.texts[i] for i in r], device), train.labels[r]) for r in rows
            ]
            evaluation = (spec.encode(test.texts, device), test.labels)
            encoded[shape] = owners, evaluation
            print(f"encoded {len(data)} texts at {shape} in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        result = federate(hyper, *encoded[shape], args, device)
        result.update(split=split, seconds=time.perf_counter() - start, device=str(device))
        results.append(result)
        print(
            f"{split} accuracy {result['final accuracy']:.4f} (best {result['best accuracy']:.4f})"
            f", epsilon {result['epsilon']:.3f}, {result['samples/s']:.0f} samples/s, "
            f"{result['seconds']:.0f} s: {hyper}"
        )
    if args.grid:
        print("\n| final | best | " + " | ".join(GRID_KEYS) + " |")
        for r in sorted(results, key=lambda r: -r["final accuracy"]):
            values = " | ".join(str(r[k.replace("-", "_")]) for k in GRID_KEYS)
            print(f"| {r['final accuracy']:.4f} | {r['best accuracy']:.4f} | {values} |")
    summary = results[0] if len(results) == 1 else results
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
