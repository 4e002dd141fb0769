"""The server's aggregation strategy: Flower's FedAvgM, plus validation and bookkeeping.

FedAvgM with server learning rate 1 and momentum 0 is plain FedAvg weighted by example
counts. The subclass adds two things Flower's strategy does not do: it validates every
update before aggregation (server/validate.py), and it records, per round, who took part,
each owner's reported epsilon, and every refusal, failure and rejection, for
metrics.json and the audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedshield.common import wire
from fedshield.server.validate import UpdateRejected, validate_update
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM

log = logging.getLogger("fedshield.server")


@dataclass
class RoundRecord:
    server_round: int
    participants: list[str] = field(default_factory=list)
    epsilon: dict[str, float] = field(default_factory=dict)
    update_norms: dict[str, float] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    aggregated: bool = False


class ValidatingFedAvgM(FedAvgM):
    """FedAvgM that validates each update and records each round (see module doc)."""

    def __init__(self, *, max_update_norm: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_update_norm = max_update_norm
        self.rounds: dict[int, RoundRecord] = {}
        self._global_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = RoundRecord(server_round)
        self.rounds[server_round] = record
        accepted: list[Message] = []
        for reply in replies:
            node = f"node {reply.metadata.src_node_id}"
            if reply.has_error():
                record.refusals.append(reply.error.reason or f"{node}: error {reply.error.code}")
                log.warning("round %d: %s", server_round, record.refusals[-1])
                continue
            owner = self._owner_id(reply) or node
            try:
                norm = validate_update(reply, self._global_arrays, self.max_update_norm)
            except UpdateRejected as exc:
                record.rejected.append(f"{owner}: {exc}")
                log.warning("round %d: rejected update from %s: %s", server_round, owner, exc)
                continue
            record.participants.append(owner)
            record.update_norms[owner] = norm
            record.epsilon[owner] = float(reply.content[wire.METRICS]["epsilon"])
            accepted.append(reply)
        if not accepted:
            log.warning("round %d: no valid update; the global model is unchanged", server_round)
            return None, None
        arrays, metrics = super().aggregate_train(server_round, accepted)
        record.aggregated = arrays is not None
        return arrays, metrics

    @staticmethod
    def _owner_id(reply: Message) -> str | None:
        owner = reply.content.config_records.get(wire.OWNER)
        value = owner.get(wire.OWNER_ID) if owner is not None else None
        return str(value) if value else None
