"""The run's data split: what the server and the simulated owners derive identically
from one RunConfig (the held-out test split and each simulated owner's partition).

In simulation the operator plays every data owner: the held-out test split and each
owner's partition are cut from one data set with one seed, so the server's test split
and the clients' training data never overlap.
"""

from __future__ import annotations

from functools import lru_cache

from fedshield.common.config import RunConfig
from fedshield.common.data import TextDataset, load_dataset, partition, split_holdout, take


@lru_cache(maxsize=2)
def _train_test(config: RunConfig) -> tuple[TextDataset, TextDataset]:
    dataset = load_dataset(
        config.data, config.text_column, config.label_column, config.class_names()
    )
    dataset = take(dataset, config.max_records, config.seed)
    return split_holdout(dataset, config.test_fraction, config.seed)


def heldout_test_split(config: RunConfig) -> TextDataset:
    return _train_test(config)[1]


def class_names(config: RunConfig) -> tuple[str, ...]:
    return _train_test(config)[1].classes


@lru_cache(maxsize=2)
def _partitions(config: RunConfig, num_partitions: int) -> list[TextDataset]:
    train, _ = _train_test(config)
    return partition(train, num_partitions, config.partition, config.alpha, config.seed)


def simulated_owner_data(config: RunConfig, partition_id: int, num_partitions: int) -> TextDataset:
    return _partitions(config, num_partitions)[partition_id]
