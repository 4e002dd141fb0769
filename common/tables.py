"""Reading a table of records: CSV, JSON Lines or Parquet, with errors a person can act on.

Guarantee: a file of another kind, an empty file, a file that is not UTF-8 or not
parseable, and a CSV whose header repeats a name are refused with the path and the fix;
every other file is returned as a DataFrame of its cells, as read (CSV cells as text).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedshield.common.errors import DataError

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def shown_columns(names: list[str], limit: int = 10) -> str:
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
                raise DataError(
                    f"{path}: duplicate column names {shown_columns(duplicated)}; rename them"
                )
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
