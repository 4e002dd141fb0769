"""JSON text someone else wrote, read as the one object it must be.

Guarantee: whatever the text (malformed, not UTF-8, nested deeply enough to exhaust the
parser, or valid JSON that is not an object), the answer is a dict or one
``FedshieldError`` (of the caller's subclass) naming where the text came from, what is
wrong with it and the caller's hint; never a traceback from the parser. Used for files a
person names (an evaluation or empirical-audit result) and for what an untrusted server
publishes to owners.
"""

from __future__ import annotations

import json

from fedshield.common.errors import FedshieldError


def json_object(
    text: str | bytes,
    source: object,
    error: type[FedshieldError] = FedshieldError,
    hint: str = "",
) -> dict:
    """The JSON object in ``text``, or ``error`` naming ``source``, the fault and ``hint``."""
    then = f"; {hint}" if hint else ""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise error(f"{source}: not readable JSON ({exc}){then}") from exc
    if not isinstance(value, dict):
        raise error(f"{source}: expected a JSON object{then}")
    return value
