"""Load a run's model and classify text with it.

Guarantee: the model classifies nothing until ``common/model_card.py`` has verified it
(SHA-256 of model.pt, format, rebuilt digests); the weights are read with
``torch.load(..., weights_only=True)``, which unpickles tensors only, never code.
Predictions written to a file are readable by their owner only (mode 0600): they hold
the owner's texts.

Heavy libraries (torch, pandas) are imported inside the functions that need them, so
that the CLI checks its arguments before they load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedshield.common.errors import DataError, ModelRefused
from fedshield.common.model_card import ModelCard, read_model_card, spec_from_card

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from fedshield.common.model import ModelSpec

PREDICTION_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


@dataclass
class LoadedModel:
    """A verified model, ready to classify text on ``device``."""

    card: ModelCard
    spec: ModelSpec
    module: nn.Module
    device: torch.device

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    def probabilities(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """(n, classes) softmax probabilities, encoded and classified ``batch_size`` at a time."""
        import numpy as np
        import torch

        from fedshield.common.model import as_tensors

        out = []
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                inputs = self.spec.encode(texts[start : start + batch_size], self.device)
                parts = [t.to(self.device) for t in as_tensors(inputs)]
                logits = self.module(*parts).float()
                out.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, texts: list[str], batch_size: int = 256) -> list[Prediction]:
        """The most probable class of each text, with its probability and all the others."""
        probabilities = self.probabilities(texts, batch_size)
        return [
            Prediction(
                text=text,
                label=self.classes[int(row.argmax())],
                probability=float(row.max()),
                probabilities=dict(zip(self.classes, map(float, row), strict=True)),
            )
            for text, row in zip(texts, probabilities, strict=True)
        ]


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Verify and rebuild the model of a run folder (or its model.json) on ``device``."""
    import torch

    from fedshield.common.model import resolve_device

    card = read_model_card(path)
    spec = spec_from_card(card)
    target = resolve_device(device)
    try:
        state = torch.load(card.weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/zip/runtime errors alike
        raise ModelRefused(
            f"{card.weights_path}: cannot be read as a tensor-only state_dict ({exc}); "
            "restore the run's model.pt"
        ) from exc
    module = spec.build(len(card.classes))
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelRefused(
            f"{card.weights_path}: the weights do not fit the model {card.json_path.name} "
            f"describes ({first}); restore the run's files"
        ) from exc
    return LoadedModel(card, spec, module.to(target).eval(), target)


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """The texts of a CSV, JSON Lines or Parquet file (no label needed), checked."""
    from fedshield.common.tables import read_table

    path = Path(path)
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    if text_column not in columns:
        raise DataError(
            f"{path}: text column '{text_column}' not found (columns: {', '.join(columns[:10])}); "
            "pass --text-column"
        )
    texts = frame[text_column].tolist()
    if not texts:
        raise DataError(f"{path}: no records; the file has a header but no rows")
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{path}: row {row + 1}, column '{text_column}': empty or missing text; "
                "remove the row or fill it in"
            )
    return texts


def write_predictions(predictions: list[Prediction], path: Path) -> Path:
    """All predictions as CSV (one ``prob-<class>`` column per class) or JSON Lines."""
    import pandas as pd

    from fedshield.common.durable import write_bytes_atomic

    if path.suffix.lower() == ".jsonl":
        lines = (
            json.dumps(
                {
                    "text": p.text,
                    "predicted": p.label,
                    "probability": p.probability,
                    "probabilities": p.probabilities,
                },
                ensure_ascii=False,
            )
            for p in predictions
        )
        body = "".join(line + "\n" for line in lines).encode("utf-8")
    else:
        frame = pd.DataFrame(
            {
                "text": [p.text for p in predictions],
                "predicted": [p.label for p in predictions],
                "probability": [p.probability for p in predictions],
            }
        )
        if predictions:
            for name in predictions[0].probabilities:
                frame[f"prob-{name}"] = [p.probabilities[name] for p in predictions]
        body = frame.to_csv(index=False).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, body, mode=0o600)  # the owner's texts: readable by the owner only
    return path
