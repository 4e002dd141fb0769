"""Cutting one data set into parts: a held-out test split, a seeded slice, and the
partitions of simulated owners (flwr-datasets' partitioners).

Guarantee: every cut is a function of the data and the seed alone; with privacy units
(``TextDataset.units``) an owner's partition holds whole units, so no person's records
are split between two simulated owners.
"""

from __future__ import annotations

import numpy as np

from fedshield.common.data import TextDataset
from fedshield.common.errors import DataError


def check_batch_fits(dataset: TextDataset, batch_size: int) -> None:
    """Refuse a data set smaller than the batch (0 = full batch always fits)."""
    if len(dataset) < batch_size:
        raise DataError(
            f"{dataset.source}: {len(dataset)} records is fewer than the batch size "
            f"{batch_size}; lower --batch-size or provide more records"
        )


def split_holdout(
    dataset: TextDataset, test_fraction: float, seed: int
) -> tuple[TextDataset, TextDataset]:
    """Shuffle and split off a held-out test set that no client trains on; with privacy
    units, whole units (about ``test_fraction`` of the records), so that no person's
    records are both trained on and scored."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    cut = int(round(len(dataset) * test_fraction))
    if dataset.units is not None:
        units = np.random.default_rng(seed).permutation(dataset.unit_count)
        rank = np.empty_like(units)
        rank[units] = np.arange(len(units))  # each unit's place in the shuffled order
        order = np.lexsort((order, rank[dataset.units]))  # records, unit by unit
        placed = rank[dataset.units][order]
        if cut > 0:  # the cut moves to the end of the unit it falls in
            cut = int(np.searchsorted(placed, placed[cut - 1], side="right"))
    return (
        dataset.subset(np.sort(order[cut:]), f"{dataset.source}[train]"),
        dataset.subset(np.sort(order[:cut]), f"{dataset.source}[test]"),
    )


def partition(
    dataset: TextDataset, num_partitions: int, scheme: str, alpha: float, seed: int
) -> list[TextDataset]:
    """Split among simulated owners with flwr-datasets (``iid`` or ``dirichlet``).

    With privacy units the partitioner splits units, not records (a unit's label for
    ``dirichlet`` is its records' most common one), and each owner gets its units'
    records whole."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if num_partitions < 1:
        raise DataError(f"number of clients must be >= 1, got {num_partitions}")
    # Shuffle first: IidPartitioner cuts contiguous chunks, and files are often sorted.
    members, labels = _items(dataset)
    order = np.random.default_rng(seed).permutation(len(labels))
    table = Dataset.from_dict({"row": order, "label": labels[order]})
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise DataError(f"Dirichlet alpha must be > 0, got {alpha}")
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=2,
            self_balancing=True,
            shuffle=True,
            seed=seed,
        )
    else:
        raise DataError(f"unknown partition scheme '{scheme}'; use 'iid' or 'dirichlet'")
    partitioner.dataset = table
    parts = []
    try:
        for i in range(num_partitions):
            items = np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
            if members is not None and len(items):
                items = np.concatenate([members[item] for item in items])
            rows = items
            parts.append(dataset.subset(np.sort(rows), f"{dataset.source}[client {i}]"))
    except ValueError as exc:
        raise DataError(
            f"{dataset.source}: cannot split {len(labels)} {_items_named(dataset)} into {num_partitions} "
            f"{scheme} partitions ({exc}); use fewer clients, more records, a larger --alpha "
            "or --partition iid"
        ) from exc
    return parts


def take(dataset: TextDataset, max_records: int, seed: int) -> TextDataset:
    """A seeded random slice of at most ``max_records`` (0 = everything), order kept."""
    if max_records <= 0 or max_records >= len(dataset):
        return dataset
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), max_records, replace=False))
    return dataset.subset(rows, f"{dataset.source}[:{max_records}]")


def _items(dataset: TextDataset) -> tuple[list[np.ndarray] | None, np.ndarray]:
    """What a partitioner deals out, and the label of each: records (None: each item is
    its row), or with units each unit's records, labelled by their most common label."""
    if dataset.units is None:
        return None, dataset.labels
    order = np.argsort(dataset.units, kind="stable")
    bounds = np.searchsorted(dataset.units[order], np.arange(dataset.unit_count + 1))
    members = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    labels = np.array([np.bincount(dataset.labels[rows]).argmax() for rows in members])
    return members, labels


def _items_named(dataset: TextDataset) -> str:
    return "records" if dataset.units is None else f"units ('{dataset.unit_name}')"
