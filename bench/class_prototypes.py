"""DP class prototypes on the frozen encoder (issue 24), against DP-SGD: one Gaussian
release per owner instead of 20 noisy steps, on validation splits.

Each of 10 Dirichlet owners releases once: its per-class sums of unit-norm MiniLM
embeddings and its per-class counts, with Gaussian noise calibrated so that this one
release is epsilon at delta (L2 sensitivity sqrt(2): one record moves one class's sum by
at most 1 and one count by 1). The server sums the releases; a record is classified by
cosine to each class's summed direction (times a temperature) plus the log of the
published priors, optionally after centring on the released overall mean. Test splits
are never read. The same corpora and caches as ``bench/class_tune.py``.

    python bench/class_prototypes.py r8 trec bbc --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import numpy as np
from class_tune import minilm, scores
from every_class import splits

from fedshield.common.privacy import noise_for_target_epsilon
from fedshield.common.splits import partition
from fedshield.server.class_priors import published_priors


def class_sums(parts, k: int, sigma: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Every owner's per-class sums and counts, each released with noise ``sigma``
    (0: exact), summed as the server would."""
    sums, counts = 0.0, 0.0
    for x, y in parts:
        s = np.zeros((k, x.shape[1]))
        np.add.at(s, y, x)
        c = np.bincount(y, minlength=k).astype(float)
        sums = sums + s + rng.normal(0, sigma, s.shape) * (sigma > 0)
        counts = counts + c + rng.normal(0, sigma, k) * (sigma > 0)
    return sums, counts


def logits(xv, sums, counts, log_prior, temperature: float, centre: bool) -> np.ndarray:
    if centre:
        mean = sums.sum(0) / max(counts.sum(), 1.0)
        sums = sums - np.outer(np.maximum(counts, 1.0), mean)
        xv = xv - mean
        xv = xv / np.linalg.norm(xv, axis=1, keepdims=True)
    directions = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    return temperature * xv @ directions.T + log_prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("corpora", nargs="+")
    ap.add_argument("--owners", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[10.0, 30.0])
    args = ap.parse_args()
    # One Gaussian of sensitivity sqrt(2): the multiplier for sensitivity 1, times sqrt(2).
    sigma = noise_for_target_epsilon(args.epsilon, 1e-5, 1.0, 1) * np.sqrt(2)
    print(f"noise std per coordinate and count: {sigma:.3f} (epsilon {args.epsilon:g})")
    print("| corpus | release | centred | temperature | acc | macro-F1 | worst |")
    for corpus in args.corpora:
        train, val = splits(corpus, "val", 0)
        index = {name: i for i, name in enumerate(train.classes)}
        true = np.array([index[val.classes[label]] for label in val.labels])
        k = len(train.classes)
        xt, xv = minilm(train.texts, corpus, "train"), minilm(val.texts, corpus, "val")
        log_prior = np.log(published_priors("eval", true, train.classes))
        cells: dict[tuple, list] = {}
        for seed in args.seeds:
            positions = {t: i for i, t in enumerate(train.texts)}
            owners = partition(train, args.owners, "dirichlet", 0.5, seed)
            parts = [(xt[[positions[t] for t in o.texts]], o.labels) for o in owners if len(o)]
            rng = np.random.default_rng(100 + seed)
            for release, noise in (("no DP", 0.0), (f"epsilon {args.epsilon:g}", sigma)):
                sums, counts = class_sums(parts, k, noise, rng)
                for centre in (False, True):
                    for temperature in args.temperatures:
                        s = scores(
                            logits(xv, sums, counts, log_prior, temperature, centre),
                            true,
                            train.classes,
                        )
                        key = (release, centre, temperature)
                        cells.setdefault(key, []).append((s["acc"], s["f1"], s["worst"]))
        for (release, centre, temperature), values in cells.items():
            acc, f1, worst = np.mean(values, axis=0)
            print(
                f"| {corpus} | {release} | {centre} | {temperature:g} | {acc:.3f} | {f1:.3f} "
                f"| {worst:.2f} |"
            )


if __name__ == "__main__":
    main()
