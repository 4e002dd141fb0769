"""The server's aggregation strategies: Flower's own, plus validation and bookkeeping.

``fedavg`` is Flower's FedAvgM (with server learning rate 1 and momentum 0 it is plain
FedAvg weighted by example counts); ``median`` and ``trimmed-mean`` are Flower's robust
FedMedian and FedTrimmedAvg. The mixin adds what Flower's strategies do not do: it
validates every update before aggregation (server/validate.py), and it records, per
round, who took part, each owner's reported epsilon, and every refusal, dropout and
rejection, for metrics.json and the audit log. Aggregation is post-processing of DP
updates, so every choice keeps the owners' guarantees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM, FedMedian, FedTrimmedAvg

from fedshield.common import wire
from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.server.validate import UpdateRejected, validate_update

log = logging.getLogger("fedshield.server")


@dataclass
class RoundRecord:
    server_round: int
    participants: list[str] = field(default_factory=list)
    epsilon: dict[str, float] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


class ValidatingStrategy:
    """Mixin over a Flower Message-API strategy: validate, then aggregate; record rounds."""

    def __init__(self, *, audit: AuditLog, max_update_norm: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.audit = audit
        self.max_update_norm = max_update_norm
        self.rounds: dict[int, RoundRecord] = {}
        self._global_arrays: ArrayRecord | None = None
        self._sampled: list[int] = []
        # Rounds already done before a resume: Flower's loop counts from 1 again, the
        # owners and the logs must see the true round number.
        self.round_offset = 0

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
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sampled = [m.metadata.dst_node_id for m in messages]
        self.audit.append(
            Event.ROUND_SAMPLED, **{"server-round": server_round, "node-ids": self._sampled}
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        record = RoundRecord(server_round)
        self.rounds[server_round] = record
        replies = list(replies)
        accepted: list[Message] = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                reason = reply.error.reason or f"node {node_id}: error {reply.error.code}"
                record.refusals.append(reason)
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
            owner = self._owner_field(reply, wire.OWNER_ID) or f"node {node_id}"
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
                    "owner-audit-head": self._owner_field(reply, wire.AUDIT_HEAD),
                },
            )
            record.participants.append(owner)
            record.epsilon[owner] = float(reply.content[wire.METRICS]["epsilon"])
            accepted.append(reply)
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
        arrays, metrics = super().aggregate_train(server_round, accepted)
        if arrays is not None:
            self.audit.append(
                Event.AGGREGATED,
                **{
                    "server-round": server_round,
                    "participants": record.participants,
                    "global-sha256": wire.arrays_digest(arrays)[0],
                },
            )
        return arrays, metrics

    @staticmethod
    def _owner_field(reply: Message, key: str) -> str | None:
        owner = reply.content.config_records.get(wire.OWNER)
        value = owner.get(key) if owner is not None else None
        return str(value) if value else None


class ValidatingFedAvgM(ValidatingStrategy, FedAvgM):
    """FedAvg / FedAvgM with validation and round records."""


class ValidatingFedMedian(ValidatingStrategy, FedMedian):
    """Coordinate-wise median with validation and round records."""


class ValidatingFedTrimmedAvg(ValidatingStrategy, FedTrimmedAvg):
    """Trimmed mean (``beta`` cut from each end) with validation and round records."""


AGGREGATIONS = ("fedavg", "median", "trimmed-mean")


def build_strategy(
    aggregation: str,
    *,
    audit: AuditLog,
    max_update_norm: float,
    server_learning_rate: float,
    server_momentum: float,
    trim_fraction: float,
    **sampling,
) -> ValidatingStrategy:
    """The strategy named by ``aggregation`` (one of AGGREGATIONS)."""
    common = {"audit": audit, "max_update_norm": max_update_norm, **sampling}
    if aggregation == "fedavg":
        return ValidatingFedAvgM(
            server_learning_rate=server_learning_rate, server_momentum=server_momentum, **common
        )
    if aggregation == "median":
        return ValidatingFedMedian(**common)
    if aggregation == "trimmed-mean":
        return ValidatingFedTrimmedAvg(beta=trim_fraction, **common)
    raise ValueError(f"unknown aggregation {aggregation!r}; use one of {AGGREGATIONS}")
