"""The server's aggregation: a Flower strategy, wrapped with validation and bookkeeping.

``fedavg`` is Flower's FedAvg (weighted by example counts), ``median`` and
``trimmed-mean`` are Flower's robust FedMedian and FedTrimmedAvg. ``ValidatingStrategy``
wraps any of them the way Flower's DP wrappers do (it takes the inner strategy in its
constructor, validates its own arguments there, and delegates): it checks that every
reply answers a task this server sent, from the node the task went to; names the owner
by that node's authenticated key (server/identity.py), never by a field of the reply;
validates every update before the inner strategy aggregates it (server/validate.py),
with the norm bound on by default and each weight bounded by what the operator allows;
applies the server optimizer (learning rate and momentum, as FedAvgM does) to the inner
aggregate, keeping the momentum as its own state so that a checkpoint can save and
restore it; and records, per round, who took part, each owner's reported epsilon (train
and evaluate), and every refusal, dropout, rejection and impersonation, for
metrics.json and the audit log. Aggregation is post-processing of DP updates, so every
choice keeps the owners' guarantees.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Strategy

from fedshield.common import wire
from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.common.untrusted import owner_label, printable
from fedshield.server.identity import OwnerDirectory, OwnerIdentity
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


@dataclass
class RoundRecord:
    server_round: int
    participants: list[str] = field(default_factory=list)  # owners' authenticated names
    epsilon: dict[str, float] = field(default_factory=dict)  # name -> newest reported total
    labels: dict[str, str] = field(default_factory=dict)  # name -> self-declared label
    refusals: list[str] = field(default_factory=list)
    refusal_codes: list[int] = field(default_factory=list)
    connected: int = 0  # owners connected when the round was configured
    rejected: list[str] = field(default_factory=list)
    impersonated: list[str] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    late: list[str] = field(default_factory=list)  # names of sampled owners with no reply


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
            **{"server-round": server_round, "global-sha256": wire.arrays_digest(arrays)[0]},
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
                "server-round": server_round,
                "node-ids": self._sampled,
                "owners": [self.owners.identity(n).name for n in self._sampled],
            },
        )
        return messages

    def _check_senders(
        self, server_round: int, kind: str, replies: list[Message], tasks: list[Message]
    ) -> list[tuple[Message, OwnerIdentity]]:
        """The replies that answer a task of ``tasks`` from the node it was sent to, once,
        each with its owner; every other reply is refused, logged and audited."""
        record = self._record(server_round)
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in tasks}
        sent.pop("", None)  # a task the grid did not push has no id and no valid reply
        if tasks and not sent:
            log.error(
                "round %d: none of the %d %s tasks has a message id after sending; flwr 1.42's "
                "grids set it when they push (server/strategy.py relies on it): every reply "
                "is refused until this is fixed",
                server_round,
                len(tasks),
                kind,
            )
        answered: set[str] = set()
        checked = []
        for reply in replies:
            task_id = reply.metadata.reply_to_message_id
            sender = reply.metadata.src_node_id
            task_node = sent.get(task_id)
            if task_node is None:
                reason = "replies to a task this server did not send in this step"
            elif sender != task_node:
                reason = f"node {sender} sent the reply to the task sent to node {task_node}"
            elif task_id in answered:
                reason = "a second reply to the same task"
            else:
                answered.add(task_id)
                checked.append((reply, self.owners.identity(task_node)))
                continue
            victim = self.owners.identity(task_node).name if task_node is not None else None
            record.impersonated.append(
                f"{kind} reply from node {sender}"
                + (f" for {victim}'s task" if victim else "")
                + f": {reason}"
            )
            log.warning(
                "round %d: refused a %s reply from node %s: %s", server_round, kind, sender, reason
            )
            self.audit.append(
                Event.REPLY_IMPERSONATED,
                **{
                    "server-round": server_round,
                    "message-type": kind,
                    "sender-node-id": sender,
                    "reply-to-message-id": printable(task_id, 80),
                    "task-node-id": task_node,
                    "task-owner": victim,
                    "reason": reason,
                },
            )
        return checked

    def _record(self, server_round: int) -> RoundRecord:
        if server_round not in self.rounds:
            self.rounds[server_round] = RoundRecord(server_round, connected=self._connected)
        return self.rounds[server_round]

    def _refused(self, server_round: int, kind: str, reply: Message, owner: OwnerIdentity) -> None:
        """An owner's coded refusal: the server's own words for known codes."""
        code = int(reply.error.code)
        said = wire.REFUSAL_REASONS.get(code)
        if said is None:
            said = f"error {code}: " + printable(reply.error.reason or "no reason", 200)
        reason = f"{owner.name}: {said}"
        record = self._record(server_round)
        if kind == "train":
            record.refusals.append(reason)
            record.refusal_codes.append(code)
        log.warning("round %d: %s refused the %s request: %s", server_round, owner.name, kind, said)
        self.audit.append(
            Event.CLIENT_REFUSED,
            **{
                "server-round": server_round,
                "message-type": kind,
                **owner.describe(),
                "reason-as-sent": printable(reply.error.reason or "", 300),
                "code": code,
                "reason": reason,
            },
        )

    def _rejected(
        self, server_round: int, kind: str, owner: OwnerIdentity, exc: UpdateRejected
    ) -> None:
        self._record(server_round).rejected.append(f"{owner.name}: {exc}")
        log.warning(
            "round %d: rejected a %s reply from %s: %s", server_round, kind, owner.name, exc
        )
        self.audit.append(
            Event.UPDATE_REJECTED,
            **{
                "server-round": server_round,
                "message-type": kind,
                **owner.describe(),
                "reason": str(exc),
            },
        )

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
                self._refused(server_round, "train", reply, owner)
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
                self._rejected(server_round, "train", owner, exc)
                continue
            metrics = reply.content[wire.METRICS]
            digest, size = wire.arrays_digest(reply.content[wire.ARRAYS])
            self.audit.append(
                Event.UPDATE_RECEIVED,
                **{
                    "server-round": server_round,
                    **owner.describe(),
                    "owner-label-self-declared": label,
                    "update-sha256": digest,
                    "update-bytes": size,
                    "update-l2-distance": norm,
                    "update-norm-bound": bound,
                    "aggregation-weight": weight,
                    "metrics": dict(metrics),
                    "owner-audit-head": self._owner_field(reply, wire.AUDIT_HEAD, 80),
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
                **{"server-round": server_round, "node-ids": record.dropped, "owners": record.late},
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
                self._refused(server_round, "evaluate", reply, owner)
                continue
            label = self._label(reply)
            try:
                count = validate_evaluate_reply(reply)
            except UpdateRejected as exc:
                self._rejected(server_round, "evaluate", owner, exc)
                continue
            weight = aggregation_weight(count, owner.max_weight)
            metrics = reply.content[wire.METRICS]
            self.audit.append(
                Event.EVALUATE_RECEIVED,
                **{
                    "server-round": server_round,
                    **owner.describe(),
                    "owner-label-self-declared": label,
                    "aggregation-weight": weight,
                    "metrics": dict(metrics),
                    "owner-audit-head": self._owner_field(reply, wire.AUDIT_HEAD, 80),
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
