"""What a bench script shows and keeps of its rows: a Markdown table on stdout, and the
rows as JSON where ``--json`` asks for a copy."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A Markdown table: the header, its rule, then one line per row of cells."""
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def write_json(path: Path | None, value: object, indent: int = 2) -> None:
    """``value`` as JSON at ``path`` (a script's ``--json``); nothing when it is None."""
    if path is not None:
        path.write_text(json.dumps(value, indent=indent))
