"""Text that crosses a trust boundary, made safe to show on a terminal or in a table.

An owner's label and refusal reason reach the operator's console and ``server status``;
a server's notices and class list reach the owner's console. Rich stops markup but lets
terminal escape sequences through (ESC, CSI), so every such text goes through
``printable`` first, and an owner's label must look like a label.
"""

from __future__ import annotations

import re

OWNER_LABEL = re.compile(r"[A-Za-z0-9._@:+/-][A-Za-z0-9._@:+/ -]{0,63}")


def printable(text: object, limit: int = 200) -> str:
    """``text`` with every non-printable character (controls, escapes) replaced by '?'."""
    shown = "".join(c if c.isprintable() else "?" for c in str(text))
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def owner_label(value: object) -> str | None:
    """An owner's self-declared label if it is a plain label (letters, digits, space, ._@:+/-)."""
    text = str(value) if value is not None else ""
    return text if OWNER_LABEL.fullmatch(text) else None
