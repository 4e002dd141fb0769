"""Server-side validation of every client reply before it is aggregated.

Guarantee: an update reaches aggregation only if it has exactly the global model's keys,
shapes and dtypes, only finite values, a record count that is a finite non-negative
integer, and an L2 distance from the global model within its bound (``UpdateNormBound``:
on by default). Anything else is rejected with a reason and leaves the global model
untouched. An evaluate reply passes only with every declared metric present and finite
and the same record-count check. The weight a reply gets in an average is its owner's
count bounded to ``[1, max_weight]`` (``aggregation_weight``), never the count as sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

from fedshield.common import wire

# The default bound, in steps of (learning rate x clipping norm). One DP-SGD step moves a
# model by lr x (clipped mean, <= C, plus noise sigma*C*sqrt(d)/N); the demo's largest
# honest update was 1.47 lr*C (7.33 at 669 records, sigma 8.82, d 8194; 400 updates, 40
# rounds x 10 owners), so 50 leaves 34x, and the noise term fits it down to ~17 records.
DEFAULT_NORM_STEPS = 50.0
# The noise term of the default bound: twice an honest step's noise norm (a Gaussian
# vector's norm concentrates within a few percent of sigma sqrt(d) at these sizes), for
# noise multipliers up to 1,000 (epsilon 0.1 over 40 full-batch rounds needs about 210).
NOISE_NORMS = 2.0
MAX_BOUND_NOISE_MULTIPLIER = 1000.0


class UpdateRejected(Exception):
    """A client's reply cannot be aggregated; the message says why."""


@dataclass(frozen=True)
class UpdateNormBound:
    """The most an update may move the global model (L2).

    ``fixed`` > 0: that bound (run config ``max-update-norm``). Otherwise, with a
    ``step_norm`` (learning rate x clipping norm) from the plan: ``DEFAULT_NORM_STEPS``
    step norms per local step, the local steps counted from the owner's bounded record
    count. ``UpdateNormBound()`` bounds nothing (tests of the robust aggregates only).
    """

    fixed: float = 0.0
    step_norm: float = 0.0
    local_epochs: int = 1
    batch_size: int = 0  # 0: full batch, one step per epoch

    @classmethod
    def from_plan(cls, plan, num_classes: int) -> UpdateNormBound:
        """The run's bound: ``max-update-norm`` if set, else derived from the plan."""
        if plan.max_update_norm > 0:
            return cls(fixed=plan.max_update_norm)
        learning_rate = plan.learning_rate_for(num_classes)
        if plan.model == "minilm":
            learning_rate = max(learning_rate, plan.encoder_learning_rate)
        return cls(
            step_norm=learning_rate * plan.max_grad_norm,
            local_epochs=plan.local_epochs,
            batch_size=plan.batch_size,
        )

    def for_reply(self, records: int, noise_multiplier: object, parameters: int) -> float:
        """The bound for an update released on ``records`` (the owner's DP count) with
        ``noise_multiplier`` over a model of ``parameters`` values (0: no bound).

        Per local step: ``DEFAULT_NORM_STEPS`` step norms for the clipped mean, plus
        ``NOISE_NORMS`` times the norm an honest step's noise has, sigma C sqrt(d) over
        the expected batch (q x count). An owner divides its noisy sum by its DP count,
        which may be near 0 for a small owner: without the noise term its honest update
        would be refused (and FedAvg's weight, the same count, cancels it in the
        average). The noise multiplier counts up to ``MAX_BOUND_NOISE_MULTIPLIER``, so a
        poisoner claiming huge noise gains a bounded room; its weight is capped anyway.
        """
        if self.fixed > 0:
            return self.fixed
        if self.step_norm <= 0:
            return 0.0
        records = max(records, 1)
        steps = 1 if self.batch_size == 0 else math.ceil(records / self.batch_size)
        expected_batch = max(round(records / steps), 1)
        claimed = noise_multiplier if isinstance(noise_multiplier, int | float) else 0.0
        sigma = min(max(float(claimed), 0.0), MAX_BOUND_NOISE_MULTIPLIER)
        if not math.isfinite(sigma):
            sigma = 0.0
        per_step = DEFAULT_NORM_STEPS + NOISE_NORMS * sigma * math.sqrt(parameters) / expected_batch
        return per_step * self.step_norm * self.local_epochs * steps

    def describe(self) -> str:
        if self.fixed > 0:
            return f"{self.fixed:g} (max-update-norm)"
        if self.step_norm <= 0:
            return "none"
        return (
            f"({DEFAULT_NORM_STEPS:g} + {NOISE_NORMS:g} x noise multiplier x sqrt(parameters) / "
            f"expected batch) x learning rate x max-grad-norm ({self.step_norm:g}) per local step"
        )


def record_count(value: object) -> int:
    """An owner's reported record count (its DP release): a finite integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UpdateRejected(f"num-examples must be an integer >= 0, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise UpdateRejected(f"num-examples must be an integer >= 0, got {value!r}")
    if value < 0:
        raise UpdateRejected(f"num-examples must be an integer >= 0, got {value!r}")
    return int(value)


def aggregation_weight(count: int, max_weight: int) -> int:
    """An average's weight: the count (0 counts as 1, a DP count may be 0), at most
    ``max_weight``: a self-reported count never buys more than the operator allows."""
    return min(max(count, 1), max_weight)


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
    _check_finite(content[wire.METRICS], wire.REPLY_METRIC_KEYS)
    record_count(content[wire.METRICS]["num-examples"])
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


def validate_evaluate_reply(reply: Message) -> int:
    """Check an evaluate reply's metrics; returns its record count."""
    content = reply.content
    if wire.METRICS not in content.metric_records:
        raise UpdateRejected(f"no '{wire.METRICS}' MetricRecord in the reply")
    metrics = content[wire.METRICS]
    missing = [k for k in wire.EVALUATE_METRIC_KEYS if k not in metrics]
    if missing:
        raise UpdateRejected(f"metrics lack {missing}")
    _check_finite(metrics, wire.EVALUATE_METRIC_KEYS)
    # One owner's answer must not set the federation's figures: only the range an honest
    # answer can take (the owner clips before it releases).
    for key, high in (("accuracy", 1.0), ("loss", wire.EVALUATE_LOSS_CLIP)):
        if not 0.0 <= metrics[key] <= high:
            raise UpdateRejected(f"{key} must be in [0, {high:g}], got {metrics[key]!r}")
    return record_count(metrics["num-examples"])


def _check_finite(metrics, keys) -> None:
    """Every declared metric a finite number: a NaN epsilon must not reach metrics.json."""
    for key in keys:
        value = metrics[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise UpdateRejected(f"{key} must be a finite number, got {value!r}")
