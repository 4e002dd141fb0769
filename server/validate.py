"""Server-side validation of every client update before it is aggregated.

Guarantee: an update reaches aggregation only if it has exactly the global model's keys,
shapes and dtypes, only finite values, a positive example count, and (when a bound is
set) an L2 distance from the global model within ``max_update_norm``. Anything else is
rejected with a reason and leaves the global model untouched.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from fedshield.common import wire


class UpdateRejected(Exception):
    """A client's reply cannot be aggregated; the message says why."""


def validate_update(
    reply: Message, global_arrays: ArrayRecord, max_update_norm: float = 0.0
) -> float:
    """Check ``reply`` against the global model; returns the update's L2 norm."""
    content = reply.content
    if wire.ARRAYS not in content.array_records:
        raise UpdateRejected(f"no '{wire.ARRAYS}' ArrayRecord in the reply")
    if wire.METRICS not in content.metric_records:
        raise UpdateRejected(f"no '{wire.METRICS}' MetricRecord in the reply")
    missing = [k for k in wire.REPLY_METRIC_KEYS if k not in content[wire.METRICS]]
    if missing:
        raise UpdateRejected(f"metrics lack {missing}")
    num_examples = content[wire.METRICS]["num-examples"]
    if not isinstance(num_examples, int) or num_examples <= 0:
        raise UpdateRejected(f"num-examples must be a positive integer, got {num_examples!r}")
    update = content[wire.ARRAYS]
    if set(update.keys()) != set(global_arrays.keys()):
        raise UpdateRejected(
            f"keys {sorted(update.keys())} differ from the model's {sorted(global_arrays.keys())}"
        )
    squared = 0.0
    for key, expected in global_arrays.items():
        got = update[key]
        if tuple(got.shape) != tuple(expected.shape) or got.dtype != expected.dtype:
            raise UpdateRejected(
                f"'{key}' is {got.dtype}{list(got.shape)}, expected {expected.dtype}{list(expected.shape)}"
            )
        values = got.numpy()
        if not np.all(np.isfinite(values)):
            raise UpdateRejected(f"'{key}' contains NaN or infinite values")
        squared += float(np.sum((values.astype(np.float64) - expected.numpy()) ** 2))
    norm = float(np.sqrt(squared))
    if max_update_norm > 0 and norm > max_update_norm:
        raise UpdateRejected(f"update norm {norm:.4g} exceeds the bound {max_update_norm:g}")
    return norm
