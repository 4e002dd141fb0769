"""Pick training choices for every class (issue 24) on validation splits, in-process.

The same loop as ``bench/tune.py`` (``bench/fedloop.py``: the product's local DP
training at every owner, FedAvg with server momentum), over the corpora of
``bench/corpora.py``, Dirichlet owners, scored per class: accuracy, macro-F1 and the worst
class's recall on the validation split, after the last round. ``--post-tau`` also scores
the final model with ``tau x log(prior)`` subtracted from its logits (post-hoc logit
adjustment; the priors are the evaluation split's class shares, as the operator's
evaluation data would publish them). Test splits are never read.

    python bench/class_tune.py r8 trec bbc --grid '{"rounds": [5, 10, 20]}'
    python bench/class_tune.py r8 trec bbc --seeds 0 1 2 --grid '{"features": ["minilm"],
        "descriptions": ["file"], "rounds": [20], "learning_rate_per_class": [1.0]}'
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from corpora import CORPORA
from every_class import splits
from fedloop import run_federation
from sklearn.preprocessing import normalize

from fedshield.client.train import TrainSettings
from fedshield.common.class_metrics import classification_metrics, round_metrics
from fedshield.common.featurize import FeaturizerSpec, featurize
from fedshield.common.model import ModelSpec, build_model
from fedshield.common.splits import partition
from fedshield.server.class_descriptions import class_descriptions, set_description_head
from fedshield.server.class_priors import published_priors, set_prior_bias

DEFAULTS = {
    "rounds": 40,
    "learning_rate_per_class": 2.5,
    "local_epochs": 1,
    "batch_size": 0,
    "max_grad_norm": 1.0,
    "server_lr": 1.0,
    "server_momentum": 0.9,
    "server_opt": "sgd",  # or "adam" / "yogi" (server_momentum is then beta 1)
    "server_tau": 1e-3,
    "ngram_max": 1,
    "out_dim": 4096,
    # "prior": the product's default, the head's bias fixed at the log of the published
    # priors (server/class_priors.py); "uniform": fixed at zero; "learnt": trained.
    "bias": "prior",
    # or "minilm": the frozen encoder's sentence embeddings; or "concat": both, the
    # encoder's share of the unit squared norm being "mix"
    "features": "hashed",
    "mix": 0.5,
    "tokens": 128,  # the encoder's max tokens
    "centre": 0,  # 1: subtract the evaluation split's mean feature, then L2 again
    # > 0: hashed buckets weighted by idf ** idf (document frequencies of the evaluation
    # split, which is the operator's), before the L2 norm and the projection
    "idf": 0.0,
    # The zero-shot head (server/class_descriptions.py): "" = a zero head; "names"; or
    # "file" = bench/class_descriptions/CORPUS.json. "scale" = class-description-scale.
    "descriptions": "",
    "scale": 30.0,
}
DESCRIBED = Path(__file__).resolve().parent / "class_descriptions"


def scores(logits: np.ndarray, true: np.ndarray, classes: tuple[str, ...]) -> dict:
    predicted = logits.argmax(1)
    _, _, _, accuracy = classification_metrics(true, predicted, classes)
    per_class = round_metrics(true, predicted, classes)
    present = {classes[i] for i in np.unique(true)}
    worst = min(r for name, r in per_class["recall-per-class"].items() if name in present)
    return {"acc": accuracy, "f1": per_class["macro-f1"], "worst": worst}


def starting_model(kind: str, in_dim: int, log_prior: np.ndarray):
    """The global model before round 1: its bias at the log priors for ``prior``."""
    model = build_model(in_dim, len(log_prior))
    if kind == "prior":
        set_prior_bias(model, np.exp(log_prior))
    return model


def described(model, cfg: dict, corpus: str, classes: tuple[str, ...]):
    """``model`` with its head set from the corpus's class descriptions, when asked."""
    if cfg["descriptions"]:
        source = "names" if cfg["descriptions"] == "names" else str(DESCRIBED / f"{corpus}.json")
        spec = (
            ModelSpec(name="minilm", max_tokens=128)
            if cfg["features"] == "minilm"
            else ModelSpec(
                featurizer=FeaturizerSpec(ngram_max=cfg["ngram_max"], out_dim=cfg["out_dim"])
            )
        )
        descriptions = class_descriptions(source, classes)
        set_description_head(model, spec, descriptions, cfg["scale"], torch.device("cpu"))
    return model


def idf_featurize(texts, spec: FeaturizerSpec, reference, power: float) -> np.ndarray:
    """The product's hashed features, with buckets weighted by idf ** power of ``reference``."""
    if not power:
        return featurize(texts, spec)
    from sklearn.feature_extraction.text import HashingVectorizer

    from fedshield.common.featurize import _projection

    hasher = HashingVectorizer(
        n_features=spec.n_buckets, alternate_sign=False, norm=None, dtype=np.float32
    )
    df = np.asarray((hasher.transform(reference) > 0).sum(0)).ravel()
    weights = (np.log((1 + len(reference)) / (1 + df)) + 1.0) ** power
    counts = hasher.transform(texts)
    counts.data = np.log1p(counts.data)
    counts = counts.multiply(weights[None, :]).tocsr()
    dense = np.asarray((normalize(counts) @ _projection(spec)).todense())
    return normalize(dense).astype(np.float32)


def minilm(texts: list[str], corpus: str, split: str, tokens: int = 128) -> np.ndarray:
    """The frozen encoder's embeddings, kept in the temporary folder between runs."""
    from fedshield.common.minilm import encode_frozen

    # keyed by the texts too: a corpus whose loader changed is encoded anew
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:12]
    kept = Path(tempfile.gettempdir()) / f"class-tune-{corpus}-{split}-{digest}-minilm{tokens}.npy"
    if not kept.exists():
        np.save(kept, encode_frozen(texts, 0, tokens, torch.device("cpu"))[0])
    return np.load(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("corpora", nargs="+", choices=("imdb", *CORPORA))
    ap.add_argument("--owners", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--no-dp", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--post-tau", type=float, nargs="+", default=[0.0])
    ap.add_argument("--ema", type=float, nargs="+", default=[], help="also score EMAs")
    ap.add_argument("--grid", default="{}", help="JSON: setting -> list of values")
    args = ap.parse_args()
    grid = {k: [v] for k, v in DEFAULTS.items()} | json.loads(args.grid)
    keys = list(grid)
    print("| corpus | " + " | ".join(keys) + " | seed | post-tau | acc | macro-F1 | worst |")
    for corpus in args.corpora:
        train, val = splits(corpus, "val", 0)
        index = {name: i for i, name in enumerate(train.classes)}
        true = np.array([index[val.classes[label]] for label in val.labels])
        k = len(train.classes)
        log_prior = np.log(published_priors("eval", true, train.classes))
        features = {}
        for values in itertools.product(*(grid[key] for key in keys)):
            cfg = dict(zip(keys, values, strict=True))
            spec = FeaturizerSpec(ngram_max=cfg["ngram_max"], out_dim=cfg["out_dim"])
            key = (spec, cfg["idf"])
            if key not in features:
                features[key] = (
                    idf_featurize(train.texts, spec, val.texts, cfg["idf"]),
                    idf_featurize(val.texts, spec, val.texts, cfg["idf"]),
                )
            if cfg["features"] != "hashed" and cfg["tokens"] not in features:
                features[cfg["tokens"]] = tuple(
                    minilm(d.texts, corpus, name, cfg["tokens"])
                    for d, name in ((train, "train"), (val, "val"))
                )
            xt, xv = features[key] if cfg["features"] == "hashed" else features[cfg["tokens"]]
            if cfg["features"] == "concat":
                m = cfg["mix"]
                xt, xv = (
                    np.hstack([np.sqrt(1 - m) * h, np.sqrt(m) * e]).astype(np.float32)
                    for h, e in zip(features[key], features[cfg["tokens"]], strict=True)
                )
            if cfg["centre"]:
                mean = xv.mean(0, keepdims=True)
                xt, xv = (normalize(x - mean).astype(np.float32) for x in (xt, xv))
            settings = TrainSettings(
                dp=not args.no_dp,
                learning_rate=cfg["learning_rate_per_class"] * k,
                local_epochs=cfg["local_epochs"],
                batch_size=cfg["batch_size"],
                max_grad_norm=cfg["max_grad_norm"],
                train_bias=cfg["bias"] == "learnt",
            )
            for seed in args.seeds:
                owners = partition(train, args.owners, "dirichlet", args.alpha, seed)
                # each owner's rows of the features (the corpora keep each text once)
                positions = {t: i for i, t in enumerate(train.texts)}
                parts = [(xt[[positions[t] for t in o.texts]], o.labels) for o in owners if len(o)]
                start = time.time()
                final = {}

                def keep(model, final=final, xv=xv):
                    with torch.no_grad():
                        final["logits"] = model(torch.from_numpy(xv)).numpy()
                    return 0.0

                start_model = described(
                    starting_model(cfg["bias"], xt.shape[1], log_prior), cfg, corpus, train.classes
                )
                eps = 0.0
                if not cfg["rounds"]:  # the starting model itself, before any owner trains
                    keep(start_model)
                else:
                    _, eps = run_federation(
                        parts,
                        (xv, true),
                        settings,
                        cfg["rounds"],
                        cfg["server_lr"],
                        cfg["server_momentum"],
                        args.epsilon,
                        1e-5,
                        seed,
                        num_classes=k,
                        score=keep,
                        server_opt=cfg["server_opt"],
                        tau=cfg["server_tau"],
                        initial_model=start_model,
                        averages=tuple(args.ema),
                    )
                    for beta, state in run_federation.averaged.items():
                        start_model.load_state_dict(state)
                        with torch.no_grad():
                            logits = start_model(torch.from_numpy(xv)).numpy()
                        s = scores(logits, true, train.classes)
                        print(f"|   ema {beta} | {s['acc']:.3f} | {s['f1']:.3f} | {s['worst']:.2f}")
                for tau in args.post_tau:
                    s = scores(final["logits"] - tau * log_prior, true, train.classes)
                    print(
                        f"| {corpus} | "
                        + " | ".join(str(v) for v in values)
                        + f" | {seed} | {tau} | {s['acc']:.3f} | {s['f1']:.3f} | "
                        f"{s['worst']:.2f} | eps {eps:.2f} {time.time() - start:.0f}s",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
