"""Which strategy the server runs: Flower's aggregation, named in the run config, wrapped.

``fedavg`` is Flower's FedAvg (weighted by example counts), ``median`` and
``trimmed-mean`` are Flower's robust FedMedian and FedTrimmedAvg. Guarantee:
``build_strategy`` returns every one of them inside ``ValidatingStrategy``
(server/validating_strategy.py), so no aggregation runs on unchecked replies; the
server optimizer applies to ``fedavg`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from fedshield.common.audit_log import AuditLog
from fedshield.server.identity import OwnerDirectory
from fedshield.server.validate import UpdateNormBound
from fedshield.server.validating_strategy import UpdateObserver, ValidatingStrategy

AGGREGATIONS = ("fedavg", "median", "trimmed-mean")
# What Flower's FedAvg.__init__ logs for fraction_evaluate 0 (flwr/serverapp/strategy/fedavg.py).
FLOWER_NO_EVALUATE_WARNING = "Federated evaluation will be skipped"


@contextmanager
def _without_flower_record(text: str) -> Iterator[None]:
    """Drop the records of Flower's logger that contain ``text`` while the block runs."""

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    flower = logging.getLogger("flwr")
    flower.addFilter(keep)
    try:
        yield
    finally:
        flower.removeFilter(keep)


def build_strategy(
    aggregation: str,
    *,
    audit: AuditLog,
    max_update_norm: float | UpdateNormBound,
    server_learning_rate: float,
    server_momentum: float,
    trim_fraction: float,
    observer: UpdateObserver | None = None,
    owners: OwnerDirectory | None = None,
    **sampling,
) -> ValidatingStrategy:
    """Flower's strategy named by ``aggregation`` (one of AGGREGATIONS), wrapped.

    The server optimizer applies to ``fedavg`` only (FedAvgM); the robust aggregates are
    taken as they are.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; use one of {AGGREGATIONS}")
    # Owners' evaluation is off unless asked (fraction_evaluate 0), but the server evaluates
    # every round itself (evaluate_fn): Flower's warning that evaluation is skipped misleads.
    with _without_flower_record(FLOWER_NO_EVALUATE_WARNING):
        if aggregation == "fedavg":
            inner = FedAvg(**sampling)
        elif aggregation == "median":
            inner = FedMedian(**sampling)
            server_learning_rate, server_momentum = 1.0, 0.0
        else:
            inner = FedTrimmedAvg(beta=trim_fraction, **sampling)
            server_learning_rate, server_momentum = 1.0, 0.0
    return ValidatingStrategy(
        inner,
        audit=audit,
        max_update_norm=max_update_norm,
        server_learning_rate=server_learning_rate,
        server_momentum=server_momentum,
        observer=observer,
        owners=owners,
    )
