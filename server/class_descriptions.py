"""The operator's class descriptions: a zero-shot head the federation starts from.

Guarantee: the descriptions are the operator's own public text (one or more short
phrases per class, or the class names themselves), never an owner's records, so the head they make
costs no owner any privacy; the descriptions, their scale and the file's SHA-256 are
published in the run's audit entry, and the head itself is in the model every owner
receives. Owners train from it under their own DP as from any model the server sends.

Why: a linear head on the pretrained encoder starts at zero and learns every class
through DP noise, and the rare classes, a few dozen records spread over ten owners, are
lost in it. Each class's row set to ``scale`` times the unit-norm embedding of its
description (the mean of its phrases' embeddings) makes the head a zero-shot classifier (logit = scale x cosine between a text
and the description) before any owner trains, and DP-SGD refines it from there. Measured
in docs/BENCHMARKS.md, "Every class counts": on R8 the worst class's recall went from
0.00 to 0.77 at epsilon 3.

The head is built by the model's own public featuriser: the pretrained encoder's
sentence embedding (the fine-tuned top starts as the pretrained layers, so its pooled
output is the same embedding), or the hashed features. Hashed features of a one-line
description are a few keywords; measured, they do not help (IMDB 0.804 against 0.805).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedshield.common.errors import ConfigError
from fedshield.common.model import ModelSpec, head_weight

# ``class-descriptions`` = this: every class described by its own name, with "_" and "-"
# read as spaces ("card_arrival" -> "card arrival").
FROM_NAMES = "names"
# Descriptions are a few phrases per class; a larger file is a mistake, and would not fit
# the run-start audit entry that publishes it.
MAX_FILE_BYTES = 1 << 20
_FIX = (
    "write a JSON object mapping each class to a short phrase or a list of phrases, "
    'e.g. {"grain": "grain harvests", "ship": ["shipping", "ports and vessels"]}'
)


def class_descriptions(source: str, classes: tuple[str, ...]) -> dict[str, list[str]] | None:
    """The phrases describing each class, in class order; None when ``source`` is ""."""
    return read_class_descriptions(source, classes)[0]


def read_class_descriptions(
    source: str, classes: tuple[str, ...]
) -> tuple[dict[str, list[str]] | None, str | None]:
    """(the phrases of each class in class order, the SHA-256 of the very bytes they were
    read from); (None, None) for "", no digest for ``names``."""
    if not source:
        return None, None
    if source == FROM_NAMES:
        phrases = {c: [c.replace("_", " ").replace("-", " ").strip()] for c in classes}
        blank = [c for c, (phrase,) in phrases.items() if not phrase]
        if blank:
            raise ConfigError(
                f"class-descriptions names: the class names {blank} have no words once '_' "
                f"and '-' read as spaces; describe the classes in a file instead ({_FIX})"
            )
        return phrases, None
    path = Path(source).expanduser()
    raw = _read_bytes(path)
    written = _parse(raw, path)
    missing = [c for c in classes if c not in written]
    unknown = sorted(set(written) - set(classes))
    if missing or unknown:
        problems = [f"no description for {', '.join(missing)}"] if missing else []
        problems += [f"not a class of this run: {', '.join(unknown)}"] if unknown else []
        raise ConfigError(
            f"class-descriptions {source}: {'; '.join(problems)}. Describe exactly the "
            f"run's classes ({', '.join(classes)})."
        )
    return {c: written[c] for c in classes}, hashlib.sha256(raw).hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"class-descriptions: no file {path}; {_FIX}, or use 'names'") from None
    except OSError as err:
        raise ConfigError(f"class-descriptions: cannot read {path} ({err}); {_FIX}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"class-descriptions: {path} is over {MAX_FILE_BYTES:,} bytes; descriptions are "
            "a few short phrases per class, published whole in the run's audit log"
        )
    return raw


def _parse(raw: bytes, path: Path) -> dict[str, list[str]]:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(
                f"class-descriptions: {path} describes {', '.join(twice)} more than once; "
                "keep one entry per class (a list holds several phrases)"
            )
        return dict(pairs)

    try:
        written = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ConfigError(f"class-descriptions: cannot read {path} ({why}); {_FIX}") from None
    phrases = (
        {str(k): [v] if isinstance(v, str) else v for k, v in written.items()}
        if isinstance(written, dict)
        else {}
    )
    if not phrases or not all(
        isinstance(v, list) and v and all(isinstance(p, str) and p.strip() for p in v)
        for v in phrases.values()
    ):
        raise ConfigError(
            f"class-descriptions: {path} does not give non-empty phrases for each class; {_FIX}"
        )
    return {k: [p.strip() for p in v] for k, v in phrases.items()}


def description_embeddings(spec: ModelSpec, texts: list[str], device: torch.device) -> np.ndarray:
    """Unit-norm rows: the features the model's head reads, for each description."""
    if spec.name == "hashed":
        (features,) = spec.encode(texts, device)
    else:
        from fedshield.common.minilm import encode_frozen

        features = encode_frozen(texts, 0, spec.max_tokens, device)[0]
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def description_rows(
    spec: ModelSpec, descriptions: dict[str, list[str]], device: torch.device
) -> np.ndarray:
    """(classes, features): each class's unit-norm mean of its phrases' unit-norm features,
    in class order; refuses a class whose phrases give the model no features."""
    rows = []
    for name, phrases in descriptions.items():
        mean = description_embeddings(spec, phrases, device).mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if not norm > 1e-6:  # a zero row would be the zero head, claimed as described
            raise ConfigError(
                f"class-descriptions: the phrases of class {name!r} ({phrases}) give this "
                f"model no features (hashed words skip one-character words and "
                f"punctuation); describe the class in words"
            )
        rows.append(mean / norm)
    return np.stack(rows).astype(np.float32)


def check_description_features(spec: ModelSpec, descriptions: dict[str, list[str]]) -> None:
    """The featureless-class refusal before a run starts, where it is cheap: the hashed
    words. (A transformer's embedding of any phrase is non-zero; loading one to check
    would delay every start, so the MiniLM case is left to the run's own head.)"""
    if spec.name == "hashed":
        description_rows(spec, descriptions, torch.device("cpu"))


def set_description_head(
    model: nn.Module,
    spec: ModelSpec,
    descriptions: dict[str, list[str]],
    scale: float,
    device: torch.device,
) -> None:
    """Set the head's weights of a freshly built model: each class's row is ``scale`` x
    the unit-norm mean of its phrases' unit-norm features, in class order."""
    rows = description_rows(spec, descriptions, device)
    with torch.no_grad():
        head_weight(model).copy_(torch.from_numpy(scale * rows))
