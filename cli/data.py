"""``fedshield data``: check a data file before it is used."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedshield.cli.shared import (
    DesensitiseFlag,
    DesensitisePolicyOption,
    KeyDirOption,
    PrivacyUnitOption,
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
    privacy_unit: PrivacyUnitOption = "",
    epsilon: Annotated[
        float, typer.Option(help="With --privacy-unit: the budget the group figure is shown for.")
    ] = 3.0,
    delta: Annotated[float, typer.Option(help="With --privacy-unit: delta of that figure.")] = 1e-5,
) -> None:
    """Validate a data file and print records, classes and fingerprint, and what your
    desensitisation policy would replace in a sample: counts per type, never a value."""
    from fedshield.common.data import load_dataset
    from fedshield.common.desensitised_data import local_desensitiser

    desensitiser = local_desensitiser(desensitise, desensitise_policy, key_dir)
    dataset = load_dataset(path, text_column, label_column, unit_column=privacy_unit)
    console.print(f"{path}: {len(dataset)} records, fingerprint {dataset.fingerprint}")
    for name, count in dataset.class_counts().items():
        console.print(f"  class {name!r}: {count}")
    if privacy_unit:
        print_group_privacy(dataset, epsilon, delta)
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


def print_group_privacy(dataset, epsilon: float, delta: float) -> None:
    """Units, the largest, and what a record-level budget means for it, on this console.

    The figure is for full-batch rounds (the default), where it is exact whatever the
    number of rounds: their Gaussian steps compose to one Gaussian, and k records move
    its sum by at most k C."""
    from fedshield.common.dp_event import DpEvent
    from fedshield.common.group_privacy import group_epsilon
    from fedshield.common.privacy import noise_for_target_epsilon

    name, largest = dataset.unit_name, dataset.largest_unit
    import warnings

    with warnings.catch_warnings():  # Opacus: "optimal order is the largest alpha"
        warnings.simplefilter("ignore", UserWarning)
        sigma = noise_for_target_epsilon(epsilon, delta, 1.0, 1)
    grouped = group_epsilon([DpEvent(sigma, 1.0, 1)], delta, largest)
    console.print(
        f"privacy unit '{name}': {dataset.unit_count} units, the largest holds {largest} "
        f"records.\n  --privacy-unit {name}: epsilon {epsilon:g} protects each '{name}', all "
        f"its records together.\n  per record (no --privacy-unit, or --record-level): "
        f"epsilon {epsilon:g} per record protects the '{name}' with {largest} records only "
        f"at epsilon {grouped:.1f} (group privacy, full-batch rounds, delta {delta:g}).",
        highlight=False,
    )
