"""What a data owner accepts from the server: every trust decision about server input.

Guarantee: a message reaches the owner's log, decoder or training only if it holds
exactly the records a fedshield server sends (``arrays`` and ``config``), its plan holds
only the keys the server puts there, each of the declared type and size, and its model
has exactly the keys, shapes and dtypes of the model the plan names, every value finite.
Sizes are checked on Flower's metadata before anything is converted, so a huge or
mislabelled input costs the owner a comparison, not its memory. Pure functions, no I/O
(like TUF's ``trusted_metadata_set``): the ClientApp calls them, tests drive them alone.

A refusal raises ``ConfigError`` whose text names the key, the size and what the owner
expects; it goes to the owner's console and audit log only (the reply carries a code),
and never echoes more than ``ECHO_CHARS`` of anything the server chose.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import get_type_hints

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedshield.common import wire
from fedshield.common.errors import ConfigError
from fedshield.common.plan import MAX_CLASSES, Plan
from fedshield.common.untrusted import printable

# Enough of a server-chosen key or value to recognise it, never enough to flood a log.
ECHO_CHARS = 80
# The longest honest string in a plan is 64 characters (run-key, server-audit-head).
MAX_PLAN_STRING_CHARS = 128
# A class name an operator may declare has 1-100 characters (plan.CLASS_NAME).
MAX_CLASS_NAME_CHARS = 100
# MAX_CLASSES names and their commas: the largest class list an owner accepts.
MAX_CLASS_LIST_CHARS = MAX_CLASSES * (MAX_CLASS_NAME_CHARS + 1)
# The whole plan: the class list plus every other key at its longest, with room to spare;
# it stays well inside the audit log's tail window, where the plan is logged whole.
MAX_PLAN_BYTES = MAX_CLASS_LIST_CHARS + 16 * 1024
# What Flower's wire carries for an integer (protobuf sint64).
INT64_LIMIT = 2**63
# np.save's header is 128 bytes for these shapes; 1 KiB leaves room for numpy versions.
NPY_HEADER_MAX_BYTES = 1024

# The records a fedshield server sends in a train or evaluate message.
MESSAGE_RECORDS = {wire.ARRAYS: ArrayRecord, wire.CONFIG: ConfigRecord}

_PLAN_TYPES = {f.name.replace("_", "-"): get_type_hints(Plan)[f.name] for f in fields(Plan)}
# Every key the server puts in a train or evaluate config record (server/app.py
# encode_train_plan; Flower's FedAvg adds server-round; server/validating_strategy.py adds the
# server's audit head to train configs), and the type each value must have.
PLAN_KEY_TYPES: dict[str, type] = {
    **{key: _PLAN_TYPES[key] for key in wire.TRAIN_PLAN_KEYS},
    wire.CLASSES: str,
    wire.SERVER_ROUND: int,
    wire.SERVER_AUDIT_HEAD: str,
}


def _shown(value: object) -> str:
    return repr(printable(value, ECHO_CHARS))


def _shown_keys(keys: set[str]) -> str:
    names = sorted(keys)
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(_shown(name) for name in names[:5]) + more


def check_message_records(content: RecordDict) -> None:
    """Exactly the records a fedshield server sends: ``arrays`` and ``config``."""
    names = set(content.keys())
    if names != set(MESSAGE_RECORDS):
        raise ConfigError(
            f"the server's message holds records {_shown_keys(names)}; an owner accepts "
            f"exactly {_shown_keys(set(MESSAGE_RECORDS))}"
        )
    for name, record_type in MESSAGE_RECORDS.items():
        if not isinstance(content[name], record_type):
            raise ConfigError(
                f"the server's record {name!r} is a {type(content[name]).__name__}; an owner "
                f"accepts a {record_type.__name__}"
            )


def _value_size(value: object) -> int:
    return len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) else 8


def _check_plan_value(key: str, value: object) -> None:
    expected = PLAN_KEY_TYPES[key]
    # bool is an int in Python; a plan's flag and its numbers must not stand in for each other.
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[expected]
    if not ok:
        raise ConfigError(
            f"the plan's key {key!r} is of type {type(value).__name__}; an owner accepts "
            f"type {expected.__name__}"
        )
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT64_LIMIT:
        raise ConfigError(f"the plan's key {key!r} is outside the 64-bit integer range")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"the plan's key {key!r} is {value}; an owner accepts finite numbers")
    if not isinstance(value, str):
        return
    limit = MAX_CLASS_LIST_CHARS if key == wire.CLASSES else MAX_PLAN_STRING_CHARS
    if len(value) > limit:
        raise ConfigError(
            f"the plan's key {key!r} is {len(value):,} characters (starts {_shown(value)}); "
            f"an owner accepts at most {limit:,}"
        )
    if key == wire.CLASSES:
        longest = max(value.split(","), key=len)
        if len(longest) > MAX_CLASS_NAME_CHARS:
            raise ConfigError(
                f"the plan's key {key!r} has a class name of {len(longest):,} characters (starts "
                f"{_shown(longest)}); an owner accepts names of 1 to {MAX_CLASS_NAME_CHARS}"
            )
    if key == wire.SERVER_AUDIT_HEAD and not (
        len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    ):
        raise ConfigError(
            f"the plan's {key!r} is {_shown(value)}; an owner accepts the SHA-256 (64 "
            "lowercase hex digits) of the server's audit entry"
        )


def check_plan_record(record: ConfigRecord) -> None:
    """The plan holds only known keys, each of its type and size; unknown keys refused."""
    unknown = set(record.keys()) - set(PLAN_KEY_TYPES)
    if unknown:
        # Refused, not ignored: a key this owner does not know is one it cannot judge.
        raise ConfigError(
            f"the plan holds {len(unknown)} key(s) this owner does not know: "
            f"{_shown_keys(unknown)}; the server and owner may run different fedshield "
            "versions"
        )
    for key, value in record.items():
        _check_plan_value(key, value)
    total = sum(len(key) + _value_size(value) for key, value in record.items())
    if total > MAX_PLAN_BYTES:
        raise ConfigError(
            f"the plan is {total:,} bytes; an owner accepts at most {MAX_PLAN_BYTES:,}"
        )


def _numpy_dtype_name(tensor: torch.Tensor) -> str:
    return str(torch.empty(0, dtype=tensor.dtype).numpy().dtype)


def check_model_arrays(arrays: ArrayRecord, expected: dict[str, torch.Tensor]) -> None:
    """Exactly the expected keys, shapes and dtypes (no casts), bounded bytes, finite values.

    ``expected`` is the state_dict of the model the plan names. Keys, shapes, dtypes and
    byte sizes are read from Flower's metadata before any array is converted, so the
    model's total size is bounded by the expected model's (plus one npy header per
    array); values are converted, and their decoded shape and dtype checked again, only
    once every array has passed.
    """
    missing = set(expected) - set(arrays.keys())
    unexpected = set(arrays.keys()) - set(expected)
    if missing or unexpected:
        raise ConfigError(
            f"the server's model does not fit the plan's model: missing "
            f"{_shown_keys(missing) or 'none'}, unexpected {_shown_keys(unexpected) or 'none'}"
        )
    for key, tensor in expected.items():
        array = arrays[key]
        want_dtype, want_shape = _numpy_dtype_name(tensor), tuple(tensor.shape)
        if array.stype != "numpy.ndarray" or array.dtype != want_dtype:
            # No silent casts: a float64 or float16 model is not this model, whatever its values.
            raise ConfigError(
                f"the server's array {key!r} is {_shown(array.dtype)} ({_shown(array.stype)}); "
                f"the plan's model has {want_dtype} (numpy.ndarray)"
            )
        if tuple(array.shape) != want_shape:
            raise ConfigError(
                f"the server's array {key!r} has shape {_shown(tuple(array.shape))}; the "
                f"plan's model has {want_shape}"
            )
        # Each array within its size plus a header: the whole model within the plan's.
        payload = tensor.numel() * tensor.element_size()
        if not payload <= len(array.data) <= payload + NPY_HEADER_MAX_BYTES:
            raise ConfigError(
                f"the server's array {key!r} is {len(array.data):,} bytes; its shape and "
                f"dtype take {payload:,} plus a header of at most {NPY_HEADER_MAX_BYTES}"
            )
    for key, tensor in expected.items():
        try:
            values = arrays[key].numpy()
        except (ValueError, EOFError, OSError) as exc:
            raise ConfigError(
                f"the server's array {key!r} does not decode as a numpy array "
                f"({printable(exc, ECHO_CHARS)})"
            ) from None
        # The serialised header, not only Flower's metadata, must say the same.
        if str(values.dtype) != _numpy_dtype_name(tensor) or values.shape != tuple(tensor.shape):
            raise ConfigError(
                f"the server's array {key!r} decodes as {values.dtype} {values.shape}, not the "
                "dtype and shape its metadata declares"
            )
        finite = np.isfinite(values)
        if not finite.all():
            # NaN or inf weights make every gradient non-finite: a round trained and
            # charged on them would spend budget on nothing.
            raise ConfigError(
                f"the server's array {key!r} holds {int(finite.size - finite.sum()):,} "
                "non-finite values (NaN or inf); an owner trains only finite models"
            )
