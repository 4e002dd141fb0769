"""The run's data split: what the server and the simulated owners derive identically
from one RunConfig (the held-out test split and each simulated owner's partition).

In simulation the operator plays every data owner: the held-out test split and each
owner's partition are cut from one data set with one seed, so the server's test split
and the clients' training data never overlap. With ``eval-data`` the server evaluates on
that file, whole, and the owners train on all of ``data``; a deployed server has only
``eval-data`` (the owners' data never reaches it).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedshield.common.config import RunConfig
from fedshield.common.data import TextDataset, fingerprint_records, load_dataset, unit_codes
from fedshield.common.errors import ConfigError
from fedshield.common.splits import partition, split_holdout, take

# The empirical audit's file of included canaries (audit/canaries.py writes it).
CANARY_FORMAT = "fedshield-canaries/1"


@lru_cache(maxsize=2)
def _eval_file(config: RunConfig) -> TextDataset:
    return load_dataset(
        config.eval_data, config.text_column, config.label_column, config.class_names()
    )


@lru_cache(maxsize=2)
def _train_test(config: RunConfig) -> tuple[TextDataset, TextDataset]:
    classes = config.class_names()
    test = _eval_file(config) if config.eval_data else None
    dataset = load_dataset(
        config.data,
        config.text_column,
        config.label_column,
        classes or (test.classes if test is not None else None),
        unit_column=config.privacy_unit,
    )
    dataset = take(dataset, config.max_records, config.seed)
    if test is not None:
        return dataset, test
    return split_holdout(dataset, config.test_fraction, config.seed)


def heldout_test_split(config: RunConfig) -> TextDataset:
    """The server's evaluation data: ``eval-data`` whole, else the held-out slice of ``data``."""
    if config.eval_data:
        return _eval_file(config)
    return _train_test(config)[1]


def class_names(config: RunConfig) -> tuple[str, ...]:
    return _train_test(config)[1].classes


@lru_cache(maxsize=2)
def _partitions(config: RunConfig, num_partitions: int) -> list[TextDataset]:
    train, _ = _train_test(config)
    return partition(train, num_partitions, config.partition, config.alpha, config.seed)


@lru_cache(maxsize=2)
def _canaries(path: str) -> dict[int, list[dict]]:
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"audit-canaries {path}: cannot read it ({exc})") from exc
    if not isinstance(content, dict) or content.get("format") != CANARY_FORMAT:
        raise ConfigError(f"audit-canaries {path}: not a {CANARY_FORMAT} file")
    owners = content.get("owners")
    well_formed = isinstance(owners, dict) and all(
        isinstance(key, str)
        and key.isdigit()
        and isinstance(records, list)
        and all(
            isinstance(r, dict)
            and isinstance(r.get("text"), str)
            and isinstance(r.get("label"), str)
            and isinstance(r.get("unit", ""), str)
            for r in records
        )
        for key, records in owners.items()
    )
    if not well_formed:
        raise ConfigError(
            f"audit-canaries {path}: 'owners' must map owner numbers to lists of "
            "{text, label} records (and an optional unit name); write it with fedshield audit empirical"
        )
    return {int(owner): records for owner, records in owners.items()}


def _with_canaries(data: TextDataset, extra: list[dict]) -> TextDataset:
    index = {name: i for i, name in enumerate(data.classes)}
    unknown = sorted({r["label"] for r in extra} - set(index))
    if unknown:
        raise ConfigError(f"audit-canaries: labels {unknown} are not among {list(data.classes)}")
    texts = data.texts + [r["text"] for r in extra]
    added = np.array([index[r["label"]] for r in extra], dtype=data.labels.dtype)
    labels = np.concatenate([data.labels, added])
    units = None
    if data.units is not None:
        # A canary unit is new to the owner: its records share the canary's "unit" name
        # (each record its own unit when it has none), after every unit of the data.
        names = [str(r.get("unit", f"canary-record-{i}")) for i, r in enumerate(extra)]
        units = np.concatenate([data.units, data.unit_count + unit_codes(names)])
    return TextDataset(
        texts=texts,
        labels=labels,
        classes=data.classes,
        fingerprint=fingerprint_records(texts, labels, units),
        source=f"{data.source} + {len(extra)} canaries",
        units=units,
        unit_name=data.unit_name,
    )


@lru_cache(maxsize=2)
def _owner_datasets(config: RunConfig, num_partitions: int) -> list[TextDataset]:
    parts = _partitions(config, num_partitions)
    if not config.audit_canaries:
        return parts
    canaries = _canaries(config.audit_canaries)
    return [_with_canaries(part, canaries.get(i, [])) for i, part in enumerate(parts)]


def simulated_owner_data(config: RunConfig, partition_id: int, num_partitions: int) -> TextDataset:
    """Simulated owner ``partition_id``'s records: its partition, plus, in an empirical
    audit run (``audit-canaries``), the canaries its coins put in (built once per run)."""
    return _owner_datasets(config, num_partitions)[partition_id]
