"""TOML text for Flower's files and config arguments: one renderer for every value.

Guarantee: any string (quotes, apostrophes, backslashes, newlines, non-ASCII) comes back
from a TOML parser as written. Flower reads ``--run-config`` / ``--node-config`` either
as ``key=value`` pairs, split by a regular expression that stops at the first quote
inside a value, or as one ``.toml`` file parsed whole; fedshield passes files, so no
value can end early or smuggle a second key. Hand-written because the standard library
reads TOML (``tomllib``) but does not write it, and these flat tables need 30 lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import ConfigError

Scalar = str | bool | int | float


def toml_value(value: Scalar | list[Scalar]) -> str:
    """One TOML value. Strings are JSON-escaped basic strings: every JSON escape that
    ``json.dumps`` writes is a TOML escape too, and non-ASCII stays as UTF-8."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML value {value!r}: only finite numbers are written")
        return repr(value)
    if isinstance(value, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ConfigError(
                f"{value[:80]!r}: not valid Unicode (a lone surrogate, e.g. a path that is "
                "not UTF-8); rename it or pass it in UTF-8"
            )
        # DEL is the one control character json.dumps leaves raw; TOML forbids it.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"TOML value {value!r}: expected str, bool, int, float or a list of them")


def toml_table(header: str | None, values: Mapping[str, Scalar | list[Scalar]]) -> str:
    """``[header]`` (none for the top level) and one ``key = value`` line per entry."""
    lines = [f"[{header}]"] if header else []
    lines += [
        f"{json.dumps(key) if not _bare(key) else key} = {toml_value(v)}"
        for key, v in values.items()
    ]
    return "\n".join(lines) + "\n"


def write_toml(path: Path, tables: Mapping[str | None, Mapping], mode: int = 0o600) -> Path:
    """A TOML file of ``tables`` (``None``: the top level), written atomically."""
    text = "\n".join(toml_table(header, values) for header, values in tables.items())
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)
    return path


def _bare(key: str) -> bool:
    return bool(key) and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
