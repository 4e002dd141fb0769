"""Text -> fixed-length vectors, without looking at anybody's data.

Guarantee: the featuriser is a pure function of its parameters (bucket count, n-gram
range, output size, seed). Nothing is fitted on text, so no vocabulary, frequency or
other statistic of a data owner's records exists to leak. Every node that uses the same
:class:`FeaturizerSpec` maps the same text to the same vector.

Pipeline: word n-grams (unigrams by default, up to ``ngram_max``) hashed into ``n_buckets`` (scikit-learn's stateless
``HashingVectorizer``) -> log(1 + tf) -> L2 -> a fixed, seeded sparse random projection
to ``out_dim`` dimensions -> L2. NOTES-stack.md records why: a DP head over these
features keeps most of the non-private accuracy, where trained embeddings drown in noise.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize


@dataclass(frozen=True)
class FeaturizerSpec:
    """Everything that defines the feature map; equal specs give equal features."""

    n_buckets: int = 2**18
    ngram_max: int = 1
    out_dim: int = 4096
    entries_per_bucket: int = 4
    seed: int = 0

    def as_config(self) -> dict[str, int]:
        return {f"feat-{k.replace('_', '-')}": v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> FeaturizerSpec:
        fields = cls.__dataclass_fields__
        kwargs = {}
        for key, value in config.items():
            if key.startswith("feat-"):
                name = key[len("feat-") :].replace("-", "_")
                if name in fields:
                    kwargs[name] = int(value)
        return cls(**kwargs)


@lru_cache(maxsize=4)
def _projection(spec: FeaturizerSpec) -> sp.csr_matrix:
    # Hand-written (a few lines) because scikit-learn's sparse random matrix generator is
    # private API; this one must be bit-identical on every node and version.
    rng = np.random.default_rng(spec.seed)
    k = spec.entries_per_bucket
    rows = np.repeat(np.arange(spec.n_buckets), k)
    cols = rng.integers(0, spec.out_dim, size=spec.n_buckets * k)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=spec.n_buckets * k)
    values = signs / np.sqrt(k)
    return sp.csr_matrix(
        (values.astype(np.float32), (rows, cols)), shape=(spec.n_buckets, spec.out_dim)
    )


def projection_digest(spec: FeaturizerSpec) -> str:
    """SHA-256 of the projection matrix: lets nodes prove they share one feature map."""
    matrix = _projection(spec)
    digest = hashlib.sha256()
    for part in (matrix.indptr, matrix.indices, matrix.data):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


def featurize(texts: list[str], spec: FeaturizerSpec | None = None) -> np.ndarray:
    """Map texts to an (n, spec.out_dim) float32 array of unit-norm rows."""
    spec = spec or FeaturizerSpec()
    hasher = HashingVectorizer(
        n_features=spec.n_buckets,
        ngram_range=(1, spec.ngram_max),
        alternate_sign=False,
        norm=None,
        dtype=np.float32,
    )
    counts = hasher.transform(texts)
    counts.data = np.log1p(counts.data)
    projected = normalize(counts, norm="l2") @ _projection(spec)
    dense = np.asarray(projected.todense() if sp.issparse(projected) else projected)
    return normalize(dense, norm="l2").astype(np.float32, copy=False)
