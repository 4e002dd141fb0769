"""The owner's labels against the class list the operator publishes.

Guarantee: a node whose every round would be refused does not join. Labels in the
owner's data that the federation lacks, or a ``--classes`` that differs from the
federation's list (names and order), refuse the start with the fix; federation classes
the owner has no record of are only noted. Pure comparison: no I/O, the lines to show
go through ``on_line``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedshield.common.config import split_class_names
from fedshield.common.errors import ConfigError, DataError
from fedshield.common.untrusted import printable

if TYPE_CHECKING:  # torch-free at import: the CLI checks its inputs before loading these
    from fedshield.client.node_settings import SuperNodeSettings
    from fedshield.client.published import FederationInfo
    from fedshield.common.data import TextDataset


@dataclass(frozen=True)
class ClassCheck:
    """The owner's labels against the federation's published class list."""

    federation: tuple[str, ...]
    unknown_labels: dict[str, int]  # the owner's labels the federation lacks: records
    without_records: tuple[str, ...]  # federation classes the owner has no record of
    declared: tuple[str, ...] | None  # the owner's --classes, if set

    @property
    def declared_differs(self) -> bool:
        return self.declared is not None and self.declared != self.federation

    @property
    def refused(self) -> bool:
        """Every round would be refused: the owner's data or --classes cannot take part."""
        return bool(self.unknown_labels) or self.declared_differs


def compare_classes(dataset: TextDataset, info: FederationInfo, declared: str) -> ClassCheck:
    counts = {name: n for name, n in dataset.class_counts().items() if n > 0}
    federation = info.classes or ()
    return ClassCheck(
        federation=federation,
        unknown_labels={name: n for name, n in counts.items() if name not in federation},
        without_records=tuple(c for c in federation if c not in counts),
        declared=split_class_names(declared),
    )


def class_report(info: FederationInfo, check: ClassCheck | None) -> list[str]:
    """What ``client start`` prints about the federation's classes."""
    if check is None:
        return [f"federation classes: not checked: {info.problem} ({info.url})"]
    shown = ", ".join(printable(c, 60) for c in check.federation[:50])
    more = f", ... ({len(check.federation)} classes)" if len(check.federation) > 50 else ""
    lines = [
        f"federation classes ({len(check.federation)}, published by the operator at "
        f"{info.url}): {shown}{more}" + (f"; model {info.model}" if info.model else "")
    ]
    if check.unknown_labels:
        labels = ", ".join(f"{k} ({v} records)" for k, v in check.unknown_labels.items())
        lines.append(f"PROBLEM: labels in your data that the federation lacks: {labels}")
    if check.declared_differs:
        lines.append(
            f"PROBLEM: your --classes {','.join(check.declared)} differ from the federation's "
            "list (names and order must match)"
        )
    if check.without_records:
        names = ", ".join(printable(c, 60) for c in check.without_records[:20])
        lines.append(
            f"note: federation classes you have no records of: {names} (fine: you train on "
            "the classes you have)"
        )
    if not check.refused:
        lines.append("your labels are all among the federation's classes")
    return lines


def refuse_class_mismatch(settings: SuperNodeSettings, check: ClassCheck) -> None:
    """Refuse to join a federation whose every round this owner would refuse."""
    federation = ",".join(printable(c, 60) for c in check.federation)
    if check.unknown_labels:
        labels = ", ".join(check.unknown_labels)
        raise DataError(
            f"{settings.owner.data_path}: labels {labels} are not among the federation's classes "
            f"[{federation}], so every round would be refused; relabel or remove those rows, "
            "or ask the operator to add the class(es), then start again"
        )
    if check.declared_differs:
        raise ConfigError(
            f"--classes {','.join(check.declared)} differ from the federation's classes "
            f"[{federation}], so every plan would be refused; pass --classes "
            f"{shlex.quote(','.join(check.federation))} "
            "or leave --classes unset"
        )


def check_federation_classes(
    settings: SuperNodeSettings,
    dataset: TextDataset,
    info: FederationInfo,
    on_line: Callable[[str], None] = print,
) -> None:
    """Print the federation's class list against the owner's labels; refuse to join when
    every round would be refused."""
    check = compare_classes(dataset, info, settings.owner.classes) if info.classes else None
    for line in class_report(info, check):
        on_line(line)
    if check is not None:
        refuse_class_mismatch(settings, check)
