"""The validating wrapper: any Flower strategy, with sender checks, validation and bookkeeping.

``ValidatingStrategy`` wraps an inner strategy the way Flower's DP wrappers do (it takes
the inner strategy in its constructor, validates its own arguments there, and delegates).
Guarantee: the inner strategy aggregates only replies that answer a task this server
sent, from the node the task went to (server/round_record.py), and that pass validation
(server/validate.py), with the norm bound on by default and each weight bounded by what
the operator allows for that owner; the server optimizer (learning rate and momentum, as
FedAvgM does) applies to the inner aggregate, its momentum kept as state that a
checkpoint saves and restores; and every round records who took part, each owner's
reported epsilon (train and evaluate), and every refusal, dropout, rejection and
impersonation, for metrics.json and the audit log. Aggregation is post-processing of DP
updates, so it keeps the owners' guarantees.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedshield.common import wire
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.untrusted import owner_label, printable
from fedshield.server.identity import OwnerDirectory, OwnerIdentity
from fedshield.server.round_record import (
    RoundRecord,
    check_senders,
    record_refusal,
    record_rejection,
)
from fedshield.server.validate import (
    UpdateNormBound,
    UpdateRejected,
    aggregation_weight,
    record_count,
    validate_evaluate_reply,
    validate_update,
)

log = logging.getLogger("fedshield.server")

# Called with (server round, owner, self-declared label or None, global model sent,
# update received) for every accepted update: what the server sees, e.g. for the
# empirical audit's canary scores. ``owner`` is the authenticated name (server/identity.py).
UpdateObserver = Callable[[int, str, str | None, ArrayRecord, ArrayRecord], None]


class ValidatingStrategy(Strategy):
    """Check senders, validate, then let ``strategy`` aggregate; server optimizer; record."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        audit: AuditLog,
        max_update_norm: float | UpdateNormBound = 0.0,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        observer: UpdateObserver | None = None,
        owners: OwnerDirectory | None = None,
    ) -> None:
        if server_learning_rate <= 0:
            raise ValueError(f"server_learning_rate must be > 0, got {server_learning_rate}")
        if not 0 <= server_momentum < 1:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum}")
        if not isinstance(max_update_norm, UpdateNormBound):
            if max_update_norm < 0:
                raise ValueError(f"max_update_norm must be >= 0, got {max_update_norm}")
            max_update_norm = UpdateNormBound(fixed=max_update_norm)
        self.strategy = strategy
        self.audit = audit
        self.norm_bound = max_update_norm
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.observer = observer
        self.owners = owners if owners is not None else OwnerDirectory()
        self.momentum: list[np.ndarray] | None = None
        self.rounds: dict[int, RoundRecord] = {}
        self._global_arrays: ArrayRecord | None = None
        self._sampled: list[int] = []
        # The tasks of the current train and evaluate step: Flower's grid writes each
        # message's id into it when it pushes it, so after sending they map id -> node.
        self._train_tasks: list[Message] = []
        self._evaluate_tasks: list[Message] = []
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
            **{
                Field.SERVER_ROUND: server_round,
                Field.GLOBAL_SHA256: wire.arrays_digest(arrays)[0],
            },
        )
        config[wire.SERVER_AUDIT_HEAD] = configured["hash"]
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._connected = len(list(grid.get_node_ids()))
        self.owners.refresh(grid)
        self._train_tasks = messages
        self._sampled = [m.metadata.dst_node_id for m in messages]
        self.audit.append(
            Event.ROUND_SAMPLED,
            **{
                Field.SERVER_ROUND: server_round,
                Field.NODE_IDS: self._sampled,
                Field.OWNERS: [self.owners.identity(n).name for n in self._sampled],
            },
        )
        return messages

    def _check_senders(
        self, server_round: int, kind: str, replies: list[Message], tasks: list[Message]
    ) -> list[tuple[Message, OwnerIdentity]]:
        """``check_senders`` (server/round_record.py) into this round's record and audit log."""
        return check_senders(
            server_round,
            kind,
            replies,
            tasks,
            record=self._record(server_round),
            owners=self.owners,
            audit=self.audit,
        )

    def _record(self, server_round: int) -> RoundRecord:
        if server_round not in self.rounds:
            self.rounds[server_round] = RoundRecord(server_round, connected=self._connected)
        return self.rounds[server_round]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        self.rounds[server_round] = RoundRecord(server_round, connected=self._connected)
        record = self.rounds[server_round]
        checked = self._check_senders(server_round, "train", list(replies), self._train_tasks)
        accepted: list[Message] = []
        for reply, owner in checked:
            if reply.has_error():
                record_refusal(server_round, "train", reply, owner, record=record, audit=self.audit)
                continue
            label = self._label(reply)
            try:
                count = record_count(self._metric(reply, "num-examples"))
                weight = aggregation_weight(count, owner.max_weight)
                bound = self.norm_bound.for_reply(
                    weight, self._metric(reply, "noise-multiplier"), self._model_size()
                )
                norm = validate_update(reply, self._global_arrays, bound)
            except UpdateRejected as exc:
                record_rejection(server_round, "train", owner, exc, record=record, audit=self.audit)
                continue
            metrics = reply.content[wire.METRICS]
            digest, size = wire.arrays_digest(reply.content[wire.ARRAYS])
            self.audit.append(
                Event.UPDATE_RECEIVED,
                **{
                    Field.SERVER_ROUND: server_round,
                    **owner.describe(),
                    Field.OWNER_LABEL_SELF_DECLARED: label,
                    Field.UPDATE_SHA256: digest,
                    Field.UPDATE_BYTES: size,
                    Field.UPDATE_L2_DISTANCE: norm,
                    Field.UPDATE_NORM_BOUND: bound,
                    Field.AGGREGATION_WEIGHT: weight,
                    Field.METRICS: dict(metrics),
                    Field.OWNER_AUDIT_HEAD: self._owner_field(reply, wire.AUDIT_HEAD, 80),
                },
            )
            if weight < count:
                log.warning(
                    "round %d: %s reported %d records; weighted %d (its cap)",
                    server_round,
                    owner.name,
                    count,
                    weight,
                )
            record.participants.append(owner.name)
            record.epsilon[owner.name] = float(metrics["epsilon"])
            if label:
                record.labels[owner.name] = label
            # The inner strategy weighs by "num-examples": hand it the bounded weight.
            reply.content[wire.METRICS] = MetricRecord({**dict(metrics), "num-examples": weight})
            accepted.append(reply)
            if self.observer is not None:
                self.observer(
                    server_round,
                    owner.name,
                    label,
                    self._global_arrays,
                    reply.content[wire.ARRAYS],
                )
        replied = {owner.node_id for _, owner in checked}
        record.dropped = sorted(n for n in self._sampled if n not in replied)
        record.late = [self.owners.identity(n).name for n in record.dropped]
        if record.dropped:
            # Named on the operator's console: a late owner's update is lost (and, if it
            # was released, charged at the owner), which a bare count of clients hides.
            log.warning(
                "round %d: no reply in time from %d sampled owner(s): %s (round-timeout-s; "
                "a late update is dropped)",
                server_round,
                len(record.late),
                ", ".join(record.late),
            )
            self.audit.append(
                Event.CLIENTS_DROPPED,
                **{
                    Field.SERVER_ROUND: server_round,
                    Field.NODE_IDS: record.dropped,
                    Field.OWNERS: record.late,
                },
            )
        if not accepted:
            log.warning("round %d: no valid update; the global model is unchanged", server_round)
            self.audit.append(Event.ROUND_NOT_AGGREGATED, **{Field.SERVER_ROUND: server_round})
            return None, None
        arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        if arrays is not None:
            arrays = self._server_step(arrays)
            self.audit.append(
                Event.AGGREGATED,
                **{
                    Field.SERVER_ROUND: server_round,
                    "participants": record.participants,
                    Field.GLOBAL_SHA256: wire.arrays_digest(arrays)[0],
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
        messages = list(
            self.strategy.configure_evaluate(server_round + self.round_offset, arrays, config, grid)
        )
        self._evaluate_tasks = messages
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Check senders and metrics; record each owner's newest epsilon (an evaluate
        answer is charged to the owner's ledger) with its audit head, then delegate."""
        server_round += self.round_offset
        record = self._record(server_round)
        checked = self._check_senders(server_round, "evaluate", list(replies), self._evaluate_tasks)
        accepted: list[Message] = []
        for reply, owner in checked:
            if reply.has_error():
                record_refusal(
                    server_round, "evaluate", reply, owner, record=record, audit=self.audit
                )
                continue
            label = self._label(reply)
            try:
                count = validate_evaluate_reply(reply)
            except UpdateRejected as exc:
                record_rejection(
                    server_round, "evaluate", owner, exc, record=record, audit=self.audit
                )
                continue
            weight = aggregation_weight(count, owner.max_weight)
            metrics = reply.content[wire.METRICS]
            self.audit.append(
                Event.EVALUATE_RECEIVED,
                **{
                    Field.SERVER_ROUND: server_round,
                    **owner.describe(),
                    Field.OWNER_LABEL_SELF_DECLARED: label,
                    Field.AGGREGATION_WEIGHT: weight,
                    Field.METRICS: dict(metrics),
                    Field.OWNER_AUDIT_HEAD: self._owner_field(reply, wire.AUDIT_HEAD, 80),
                },
            )
            record.epsilon[owner.name] = float(metrics["epsilon"])
            if label:
                record.labels.setdefault(owner.name, label)
            reply.content[wire.METRICS] = MetricRecord({**dict(metrics), "num-examples": weight})
            accepted.append(reply)
        if not accepted:
            return None
        return self.strategy.aggregate_evaluate(server_round, accepted)

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

    @classmethod
    def _label(cls, reply: Message) -> str | None:
        """The label the owner declared for itself: shown beside its name, never as it."""
        return owner_label(cls._owner_field(reply, wire.OWNER_ID, 64))

    def _model_size(self) -> int:
        """The global model's number of values (the noise term of the norm bound)."""
        return sum(math.prod(array.shape) for array in self._global_arrays.values())

    @staticmethod
    def _metric(reply: Message, key: str) -> object:
        metrics = reply.content.metric_records.get(wire.METRICS)
        if metrics is None or key not in metrics:
            raise UpdateRejected(f"no metrics.{key} in the reply")
        return metrics[key]

    @staticmethod
    def _owner_field(reply: Message, key: str, limit: int = 200) -> str | None:
        """A field the owner sent, shown and logged without control characters."""
        owner = reply.content.config_records.get(wire.OWNER)
        value = owner.get(key) if owner is not None else None
        return printable(value, limit) if value else None
