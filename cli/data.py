"""``fedshield data``: check a data file before it is used."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedshield.cli.shared import console

data_app = typer.Typer(help="Check a data file before it is used.", no_args_is_help=True)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="CSV, JSON Lines or Parquet file.")],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
) -> None:
    """Validate a data file and print records, classes and fingerprint (no text shown)."""
    from fedshield.common.data import load_dataset

    dataset = load_dataset(path, text_column, label_column)
    console.print(f"{path}: {len(dataset)} records, fingerprint {dataset.fingerprint}")
    for name, count in dataset.class_counts().items():
        console.print(f"  class {name!r}: {count}")
