"""``fedshield data``: check a data file before it is used."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedshield.cli.shared import (
    DesensitiseFlag,
    DesensitisePolicyOption,
    KeyDirOption,
    console,
)

data_app = typer.Typer(help="Check a data file before it is used.", no_args_is_help=True)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="CSV, JSON Lines or Parquet file.")],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
    desensitise: DesensitiseFlag = True,
    desensitise_policy: DesensitisePolicyOption = "",
    key_dir: KeyDirOption = Path("~/.fedshield/keys"),
    sample: Annotated[
        int, typer.Option(help="Records the desensitisation preview reads (0 = all).")
    ] = 1000,
) -> None:
    """Validate a data file and print records, classes and fingerprint, and what your
    desensitisation policy would replace in a sample: counts per type, never a value."""
    from fedshield.common.data import load_dataset
    from fedshield.common.desensitised_data import local_desensitiser

    desensitiser = local_desensitiser(desensitise, desensitise_policy, key_dir)
    dataset = load_dataset(path, text_column, label_column)
    console.print(f"{path}: {len(dataset)} records, fingerprint {dataset.fingerprint}")
    for name, count in dataset.class_counts().items():
        console.print(f"  class {name!r}: {count}")
    if desensitiser is None:
        console.print("desensitisation: off (--no-desensitise)")
        return
    texts = dataset.texts[:sample] if sample > 0 else dataset.texts
    replaced, counts = desensitiser.apply(texts)
    touched = sum(before != after for before, after in zip(texts, replaced, strict=True))
    policy = desensitiser.describe()
    console.print(
        f"desensitisation ({policy['source']} policy, {len(policy['entities'])} types, "
        f"{len(policy['recognizers'])} recognizers): in {len(texts)} records, {touched} would "
        f"change; identifiers found: "
        + (", ".join(f"{entity} {n}" for entity, n in sorted(counts.items())) or "none"),
        highlight=False,
    )
