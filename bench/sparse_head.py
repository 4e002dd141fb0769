"""Would a wider hashed head reach IMDB's 0.83 at epsilon 3? (issue 24, an experiment)

The product projects 2^18 hashed buckets to ``out_dim`` dense features (4096 by default),
because each owner holds its features dense. A linear head over unit-norm features sees
the same noise on a logit whatever the dimension (noise std x ||x||), so a wider map
costs no privacy; it costs memory. This script asks, before any product change, what the
width buys: the same mechanism as the product's hashed model (per-owner full-batch
DP-GD, every per-record gradient of the linear softmax head clipped to C, one Gaussian
of std sigma x C on the sum, divided by the owner's count; the bias fixed at the log
priors; FedAvgM at the server, momentum 0.9), computed in closed form over sparse
features so that the head can be as wide as the hashing itself:

  * ``projected``: the product's features (``common/featurize.py``, ``--out-dim``), as a
    control: it should land where the product's in-process loop does (0.808 at 4096);
  * ``buckets``: the hashed buckets themselves, log(1 + tf), L2, no projection
    (``--buckets`` wide), kept sparse.

Sigma per owner is the product's calibration (``client/train.py`` ``calibrated``) for
``--rounds`` rounds at ``--epsilon`` (the count's release is left out, as in
``bench/fedloop.py``). Hand-written because Opacus materialises every per-sample gradient
(records x classes x width), 20 GB for one owner at 2^18; for this head the per-sample
norm is ||p - y|| ||x|| in closed form.

    cd bench && ../.venv/bin/python sparse_head.py --features projected buckets --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
from every_class import splits
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

from fedshield.client.train import TrainSettings, calibrated
from fedshield.common.featurize import FeaturizerSpec, featurize
from fedshield.common.splits import partition


def bucket_features(texts: list[str], width: int, ngram_max: int) -> sp.csr_matrix:
    hasher = HashingVectorizer(
        n_features=width,
        ngram_range=(1, ngram_max),
        alternate_sign=False,
        norm=None,
        dtype=np.float32,
    )
    counts = hasher.transform(texts)
    counts.data = np.log1p(counts.data)
    return normalize(counts, norm="l2").tocsr()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def dp_step(w, bias, x, y, lr, clip, sigma, rng, dp=True):
    """One owner's full-batch step: the update (new weights minus old)."""
    k = w.shape[0]
    p = softmax(np.asarray(x @ w.T) + bias)
    g = p - np.eye(k, dtype=np.float32)[y]  # per-record dL/dlogits
    row_norm = (
        np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
        if sp.issparse(x)
        else (np.linalg.norm(x, axis=1))
    )
    norms = np.linalg.norm(g, axis=1) * row_norm
    if dp:
        g = g * np.minimum(1.0, clip / np.maximum(norms, 1e-12))[:, None]
    summed = np.asarray((x.T @ g).T) if sp.issparse(x) else g.T @ x
    if dp:
        summed = summed + rng.standard_normal(summed.shape).astype(np.float32) * sigma * clip
    return -lr * summed / len(y)


def federate(parts, xv, yv, k, rounds, lr, clip, epsilon, delta, rng, dp=True):
    width = xv.shape[1]
    w = np.zeros((k, width), dtype=np.float32)
    bias = np.log(np.bincount(yv, minlength=k) / len(yv)).astype(np.float32)
    velocity = np.zeros_like(w)
    sigmas = [
        calibrated(
            TrainSettings(learning_rate=lr, max_grad_norm=clip), len(y), rounds, epsilon, delta
        ).noise_multiplier
        for _, y in parts
    ]
    total = sum(len(y) for _, y in parts)
    curve = []
    for _ in range(rounds):
        update = sum(
            dp_step(w, bias, x, y, lr, clip, s, rng, dp) * (len(y) / total)
            for (x, y), s in zip(parts, sigmas, strict=True)
        )
        velocity = 0.9 * velocity + update
        w = w + velocity
        curve.append(float(((np.asarray(xv @ w.T) + bias).argmax(1) == yv).mean()))
    return curve, sigmas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--features", nargs="+", default=["projected", "buckets"])
    ap.add_argument("--out-dim", type=int, default=4096)
    ap.add_argument("--buckets", type=int, default=2**18)
    ap.add_argument("--ngram-max", type=int, default=1)
    ap.add_argument("--owners", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--lr-per-class", type=float, nargs="+", default=[2.5])
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--no-dp", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    train, val = splits("imdb", "val", 0)
    k = len(train.classes)
    yv = np.asarray(val.labels)
    print("| features | width | lr/class | seed | final acc | best acc | sigma (mean) | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in args.features:
        if kind == "projected":
            spec = FeaturizerSpec(out_dim=args.out_dim, ngram_max=args.ngram_max)
            xt, xv = featurize(train.texts, spec), featurize(val.texts, spec)
        else:
            xt = bucket_features(train.texts, args.buckets, args.ngram_max)
            xv = bucket_features(val.texts, args.buckets, args.ngram_max)
        for seed in args.seeds:
            owners = partition(train, args.owners, "dirichlet", 0.5, seed)
            index = {text: i for i, text in enumerate(train.texts)}
            parts = []
            for owner in owners:
                rows = np.array([index[t] for t in owner.texts])
                parts.append((xt[rows], np.asarray(owner.labels)))
            for lr_class in args.lr_per_class:
                started = time.monotonic()
                curve, sigmas = federate(
                    parts,
                    xv,
                    yv,
                    k,
                    args.rounds,
                    lr_class * k,
                    1.0,
                    args.epsilon,
                    1e-5,
                    np.random.default_rng(seed),
                    dp=not args.no_dp,
                )
                print(
                    f"| {kind} | {xv.shape[1]} | {lr_class:g} | {seed} | {curve[-1]:.3f} | "
                    f"{max(curve):.3f} | {np.mean(sigmas):.2f} | "
                    f"{time.monotonic() - started:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
