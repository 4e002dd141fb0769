"""The server's aggregation: a Flower strategy, wrapped with validation and bookkeeping.

``fedavg`` is Flower's FedAvg (weighted by example counts), ``median`` and
``trimmed-mean`` are Flower's robust FedMedian and FedTrimmedAvg. ``ValidatingStrategy``
wraps any of them the way Flower's DP wrappers do (it takes the inner strategy in its
constructor, validates its own arguments there, and delegates): it validates every
update before the inner strategy aggregates it (server/validate.py); applies the server
optimizer (learning rate and momentum, as FedAvgM does) to the inner aggregate, keeping
the momentum as its own state so that a checkpoint can save and restore it; and
records, per round, who took part, each owner's reported epsilon, and every refusal,
dropout and rejection, for metrics.json and the audit log. Aggregation is
post-processing of DP updates, so every choice keeps the owners' guarantees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Strategy

from fedshield.common import wire
from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.common.untrusted import owner_label, printable
from fedshield.server.validate import UpdateRejected, validate_update

log = logging.getLogger("fedshield.server")

# Called with (server round, owner, global model sent, update received) for every
# accepted update: what the server sees, e.g. for the empirical audit's canary scores.
UpdateObserver = Callable[[int, str, ArrayRecord, ArrayRecord], None]


@dataclass
class RoundRecord:
    server_round: int
    participants: list[str] = field(default_factory=list)
    epsilon: dict[str, float] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    refusal_codes: list[int] = field(default_factory=list)
    connected: int = 0  # owners connected when the round was configured
    rejected: list[str] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


class ValidatingStrategy(Strategy):
    """Validate, then let ``strategy`` aggregate; server optimizer; record the rounds."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        audit: AuditLog,
        max_update_norm: float = 0.0,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        observer: UpdateObserver | None = None,
    ) -> None:
        if server_learning_rate <= 0:
            raise ValueError(f"server_learning_rate must be > 0, got {server_learning_rate}")
        if not 0 <= server_momentum < 1:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum}")
        if max_update_norm < 0:
            raise ValueError(f"max_update_norm must be >= 0, got {max_update_norm}")
        self.strategy = strategy
        self.audit = audit
        self.max_update_norm = max_update_norm
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.observer = observer
        self.momentum: list[np.ndarray] | None = None
        self.rounds: dict[int, RoundRecord] = {}
        self._global_arrays: ArrayRecord | None = None
        self._sampled: list[int] = []
        self._connected = 0
        # Rounds already done before a resume: Flower's loop counts from 1 again, the
        # owners and the logs must see the true round number.
        self.round_offset = 0

    def resume(self, rounds_done: int, momentum: list[np.ndarray] | None) -> None:
        """Continue after ``rounds_done`` rounds with the server optimizer's saved state."""
        self.round_offset = rounds_done
        self.momentum = momentum

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self._global_arrays = arrays
        # The owners log this hash with the plan: cutting or rewriting the server's log
        # later then shows against the owners' logs, as theirs do against this one.
        configured = self.audit.append(
            Event.ROUND_CONFIGURED,
            **{"server-round": server_round, "global-sha256": wire.arrays_digest(arrays)[0]},
        )
        config[wire.SERVER_AUDIT_HEAD] = configured["hash"]
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._connected = len(list(grid.get_node_ids()))
        self._sampled = [m.metadata.dst_node_id for m in messages]
        self.audit.append(
            Event.ROUND_SAMPLED, **{"server-round": server_round, "node-ids": self._sampled}
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        record = RoundRecord(server_round, connected=self._connected)
        self.rounds[server_round] = record
        replies = list(replies)
        accepted: list[Message] = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                reason = printable(
                    reply.error.reason or f"node {node_id}: error {reply.error.code}", 300
                )
                record.refusals.append(reason)
                record.refusal_codes.append(int(reply.error.code))
                log.warning("round %d: %s", server_round, reason)
                self.audit.append(
                    Event.CLIENT_REFUSED,
                    **{
                        "server-round": server_round,
                        "node-id": node_id,
                        "code": reply.error.code,
                        "reason": reason,
                    },
                )
                continue
            owner = owner_label(self._owner_field(reply, wire.OWNER_ID)) or f"node {node_id}"
            try:
                norm = validate_update(reply, self._global_arrays, self.max_update_norm)
            except UpdateRejected as exc:
                record.rejected.append(f"{owner}: {exc}")
                log.warning("round %d: rejected update from %s: %s", server_round, owner, exc)
                self.audit.append(
                    Event.UPDATE_REJECTED,
                    **{
                        "server-round": server_round,
                        "node-id": node_id,
                        "owner": owner,
                        "reason": str(exc),
                    },
                )
                continue
            digest, size = wire.arrays_digest(reply.content[wire.ARRAYS])
            self.audit.append(
                Event.UPDATE_RECEIVED,
                **{
                    "server-round": server_round,
                    "node-id": node_id,
                    "owner": owner,
                    "update-sha256": digest,
                    "update-bytes": size,
                    "update-l2-distance": norm,
                    "metrics": dict(reply.content[wire.METRICS]),
                    "owner-audit-head": self._owner_field(reply, wire.AUDIT_HEAD, 80),
                },
            )
            record.participants.append(owner)
            record.epsilon[owner] = float(reply.content[wire.METRICS]["epsilon"])
            accepted.append(reply)
            if self.observer is not None:
                self.observer(server_round, owner, self._global_arrays, reply.content[wire.ARRAYS])
        replied = {r.metadata.src_node_id for r in replies}
        record.dropped = [n for n in self._sampled if n not in replied]
        if record.dropped:
            self.audit.append(
                Event.CLIENTS_DROPPED, **{"server-round": server_round, "node-ids": record.dropped}
            )
        if not accepted:
            log.warning("round %d: no valid update; the global model is unchanged", server_round)
            self.audit.append(Event.ROUND_NOT_AGGREGATED, **{"server-round": server_round})
            return None, None
        arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        if arrays is not None:
            arrays = self._server_step(arrays)
            self.audit.append(
                Event.AGGREGATED,
                **{
                    "server-round": server_round,
                    "participants": record.participants,
                    "global-sha256": wire.arrays_digest(arrays)[0],
                },
            )
        return arrays, metrics

    def _server_step(self, aggregated: ArrayRecord) -> ArrayRecord:
        """SGD with momentum on the pseudo-gradient (global - aggregate), as FedAvgM."""
        if self.server_learning_rate == 1.0 and self.server_momentum == 0.0:
            return aggregated
        old = self._global_arrays.to_numpy_ndarrays()
        keys = list(aggregated.keys())
        step = [g - a for a, g in zip(aggregated.to_numpy_ndarrays(), old, strict=True)]
        if self.server_momentum > 0.0:
            self.momentum = (
                step
                if self.momentum is None
                else [
                    self.server_momentum * m + s for m, s in zip(self.momentum, step, strict=True)
                ]
            )
            step = self.momentum
        updated = [
            np.asarray(g - self.server_learning_rate * d) for g, d in zip(old, step, strict=True)
        ]
        return ArrayRecord({k: Array(v) for k, v in zip(keys, updated, strict=True)})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(
            server_round + self.round_offset, arrays, config, grid
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.round_offset, replies)

    def every_owner_refused_for_budget(self, server_round: int) -> bool:
        """No update in ``server_round`` and every connected owner refused for its budget:
        later rounds cannot do better (budgets only grow when an owner raises its own)."""
        record = self.rounds.get(server_round)
        return (
            record is not None
            and not record.participants
            and len(record.refusal_codes) >= max(record.connected, 1)
            and all(code == wire.ERROR_BUDGET_EXCEEDED for code in record.refusal_codes)
        )

    @staticmethod
    def _owner_field(reply: Message, key: str, limit: int = 200) -> str | None:
        """A field the owner sent, shown and logged without control characters."""
        owner = reply.content.config_records.get(wire.OWNER)
        value = owner.get(key) if owner is not None else None
        return printable(value, limit) if value else None


AGGREGATIONS = ("fedavg", "median", "trimmed-mean")


def build_strategy(
    aggregation: str,
    *,
    audit: AuditLog,
    max_update_norm: float,
    server_learning_rate: float,
    server_momentum: float,
    trim_fraction: float,
    observer: UpdateObserver | None = None,
    **sampling,
) -> ValidatingStrategy:
    """Flower's strategy named by ``aggregation`` (one of AGGREGATIONS), wrapped.

    The server optimizer applies to ``fedavg`` only (FedAvgM); the robust aggregates are
    taken as they are.
    """
    if aggregation == "fedavg":
        inner = FedAvg(**sampling)
    elif aggregation == "median":
        inner = FedMedian(**sampling)
        server_learning_rate, server_momentum = 1.0, 0.0
    elif aggregation == "trimmed-mean":
        inner = FedTrimmedAvg(beta=trim_fraction, **sampling)
        server_learning_rate, server_momentum = 1.0, 0.0
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}; use one of {AGGREGATIONS}")
    return ValidatingStrategy(
        inner,
        audit=audit,
        max_update_norm=max_update_norm,
        server_learning_rate=server_learning_rate,
        server_momentum=server_momentum,
        observer=observer,
    )
