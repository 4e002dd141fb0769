"""What each federated run was, read from the server's audit log (and the owners' logs
where no server log was given): its ids, its period, its settings and its outcome.

Guarantees:
- a run is one ``run-start`` in a server log up to its ``run-end``; a resumed run
  (``resume`` in its config, then ``run-resumed``) continues the run before it;
- its ids are those the logs hold: the run key and Flower run id come from the owners'
  ``round-start`` entries whose plan carries the hash of one of the run's
  ``round-configured`` entries (``run-start``'s own ``run-key`` and ``flower-run-id`` win);
- "rounds with an accepted update" counts rounds in which the server accepted at least
  one owner's update (an ``update-received`` entry), not rounds run: a run whose every
  round was refused has 0 of them;
- owners are named as the server logged them (their node key's fingerprint; a label they
  declared for themselves is shown beside it, marked so); every reply the server
  rejected (``update-rejected``) and every reply it refused as sent for a task that was
  not the sender's (``reply-impersonated``) is listed with its reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fedshield.audit.verify import Verification
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field

# Run-start config keys a reader signs off on, in the order they are shown.
SETTINGS = (
    "dp",
    "target-epsilon",
    "num-rounds",
    "noise-multiplier",
    "max-grad-norm",
    "delta",
    "aggregation",
    "model",
    "data",
    "min-train-nodes",
    "fraction-train",
    "local-epochs",
    "batch-size",
    "max-update-norm",
)
OWNERS_ONLY = "owners' logs only (no server log given)"


@dataclass
class ServerRefusal:
    time: str
    server_round: int | None
    node_id: int | None
    code: int | None
    meaning: str
    reason: str


@dataclass
class RunSummary:
    source: str  # the server log, or "owners' logs only"
    run_keys: list[str] = field(default_factory=list)
    flower_run_ids: list[int] = field(default_factory=list)
    first_event: str = ""
    last_event: str = ""
    settings: dict = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    transport: str = ""
    model: str = ""
    initial_model: str = ""
    eval_data: str = ""
    rounds_planned: int | None = None
    rounds_run: int = 0
    rounds_with_accepted_update: list[int] = field(default_factory=list)
    resumed_from_round: list[int] = field(default_factory=list)
    ended: bool = False
    outcome: str = ""
    model_sha256: str | None = None
    final_accuracy: float | None = None
    final_macro_f1: float | None = None
    final_worst_class_recall: float | None = None
    never_predicted: list[str] = field(default_factory=list)
    updates_received: int = 0
    updates_rejected: list[str] = field(default_factory=list)
    replies_impersonated: list[str] = field(default_factory=list)
    refusals: list[ServerRefusal] = field(default_factory=list)
    dropped_node_ids: int = 0
    owners_with_updates: list[str] = field(default_factory=list)
    noise_multipliers_used: list[float] = field(default_factory=list)
    _configured_hashes: set[str] = field(default_factory=set, repr=False)

    @property
    def from_server(self) -> bool:
        return self.source != OWNERS_ONLY

    @property
    def id_text(self) -> str:
        parts = [f"run key {k}" for k in self.run_keys] + [
            f"Flower run {i}" for i in self.flower_run_ids
        ]
        return ", ".join(parts) or "no run id recorded"

    def availability(self) -> str:
        planned = "?" if self.rounds_planned is None else self.rounds_planned
        return (
            f"{len(self.rounds_with_accepted_update)}/{planned} rounds with an accepted update "
            f"({self.rounds_run} run)"
        )

    @property
    def available(self) -> bool:
        return (
            self.ended
            and self.rounds_planned is not None
            and len(self.rounds_with_accepted_update) >= self.rounds_planned
        )

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("_configured_hashes")
        return {**data, "id": self.id_text, "availability": self.availability()}


def _owner_text(data: dict) -> str:
    """The owner as the server named it, with the label it declared, marked as such."""
    owner = str(data.get(Field.OWNER))
    label = data.get(Field.OWNER_LABEL_SELF_DECLARED)
    return f"{owner} (self-declared: {label})" if label and label != owner else owner


def _model_name(description: dict | str | None) -> str:
    if isinstance(description, dict):
        return str(description.get("model") or description.get("encoder") or description)
    return str(description or "")


def _initial_model(value: object) -> str:
    if isinstance(value, dict):
        parts = [f"{k} {v}" for k, v in value.items() if isinstance(v, str | int | float)]
        return "; ".join(parts)
    return str(value or "")


def _start(run: RunSummary, entry: dict) -> None:
    data = entry["data"]
    config = data.get(Field.CONFIG, {})
    run.settings = {k: config[k] for k in SETTINGS if k in config}
    run.rounds_planned = int(config["num-rounds"]) if "num-rounds" in config else None
    run.classes = list(data.get(Field.CLASSES, []))
    run.transport = str(data.get(Field.TRANSPORT, ""))
    run.model = _model_name(data.get(Field.MODEL)) or str(config.get("model", ""))
    run.initial_model = _initial_model(data.get(Field.INITIAL_MODEL, "untrained"))
    run.eval_data = str(data.get(Field.EVAL_DATA) or config.get("eval-data") or "")
    run_key = data.get(Field.RUN_KEY) or config.get("run-key")
    if run_key and run_key not in run.run_keys:
        run.run_keys.append(str(run_key))
    flower_run_id = data.get(Field.FLOWER_RUN_ID)
    if flower_run_id is not None and flower_run_id not in run.flower_run_ids:
        run.flower_run_ids.append(flower_run_id)


def _server_runs(log: Verification) -> list[RunSummary]:
    runs: list[RunSummary] = []
    current: RunSummary | None = None
    for entry in log.entries:
        data, kind = entry["data"], entry["type"]
        if kind == Event.RUN_START:
            resumed = bool(data.get(Field.CONFIG, {}).get("resume")) and current is not None
            if not resumed:
                current = RunSummary(str(log.path), first_event=entry["ts"])
                runs.append(current)
                _start(current, entry)
            current.ended = False
        if current is None:
            continue
        current.last_event = entry["ts"]
        server_round = data.get(Field.SERVER_ROUND)
        if kind == Event.RUN_RESUMED:
            current.resumed_from_round.append(int(data.get(Field.FROM_ROUND, 0)))
        elif kind == Event.ROUND_CONFIGURED:
            current._configured_hashes.add(entry["hash"])
        elif kind == Event.ROUND_EVALUATED and server_round and server_round > 0:
            current.rounds_run = max(current.rounds_run, int(server_round))
        elif kind == Event.UPDATE_RECEIVED:
            current.updates_received += 1
            if server_round not in current.rounds_with_accepted_update:
                current.rounds_with_accepted_update.append(server_round)
            owner = _owner_text(data)
            if owner not in current.owners_with_updates:
                current.owners_with_updates.append(owner)
            sigma = data.get(Field.METRICS, {}).get("noise-multiplier")
            if sigma is not None and sigma not in current.noise_multipliers_used:
                current.noise_multipliers_used.append(sigma)
        elif kind == Event.UPDATE_REJECTED:
            current.updates_rejected.append(
                f"round {server_round} {data.get(Field.MESSAGE_TYPE, 'train')}: "
                f"{_owner_text(data)}: {data.get(Field.REASON)}"
            )
        elif kind == Event.REPLY_IMPERSONATED:
            victim = data.get(Field.TASK_OWNER) or f"node {data.get(Field.TASK_NODE_ID)}"
            current.replies_impersonated.append(
                f"round {server_round} {data.get(Field.MESSAGE_TYPE, 'train')}: node "
                f"{data.get(Field.SENDER_NODE_ID)} replied to {victim}'s task "
                f"{str(data.get(Field.REPLY_TO_MESSAGE_ID, ''))[:16]}: {data.get(Field.REASON)}"
            )
        elif kind == Event.CLIENT_REFUSED:
            code = data.get(Field.CODE)
            current.refusals.append(
                ServerRefusal(
                    entry["ts"],
                    server_round,
                    data.get(Field.NODE_ID),
                    code,
                    wire.REFUSAL_REASONS.get(code, "not a fedshield refusal code"),
                    str(data.get(Field.REASON, "")),
                )
            )
        elif kind == Event.CLIENTS_DROPPED:
            current.dropped_node_ids += len(data.get(Field.NODE_IDS, []))
        elif kind == Event.RUN_END:
            final = data.get(Field.FINAL, {})
            current.ended = True
            current.model_sha256 = data.get(Field.MODEL_SHA256)
            current.final_accuracy = final.get("accuracy")
            current.final_macro_f1 = final.get("macro_f1")
            current.final_worst_class_recall = final.get("worst_class_recall")
            current.never_predicted = list(final.get("never_predicted") or [])
            current.outcome = str(final.get("outcome", ""))
    return runs


def _link_owner_rounds(runs: list[RunSummary], clients: list[Verification]) -> None:
    """Run keys and Flower run ids from the owners' round-start entries (see module doc);
    owners' runs that no server log covers become runs of their own."""
    by_head = {h: run for run in runs for h in run._configured_hashes}
    orphans: dict[str, RunSummary] = {}
    for log in clients:
        for entry in log.entries:
            if entry["type"] != Event.ROUND_START:
                continue
            data = entry["data"]
            plan = data.get(Field.PLAN, {})
            run = by_head.get(plan.get(wire.SERVER_AUDIT_HEAD))
            if run is None:
                key = str(plan.get("run-key") or data.get(Field.RUN_ID))
                run = orphans.setdefault(key, RunSummary(OWNERS_ONLY))
                run.first_event = min(run.first_event or entry["ts"], entry["ts"])
                run.last_event = max(run.last_event, entry["ts"])
                run.settings = {k: plan[k] for k in SETTINGS if k in plan}
                if "num-rounds" in plan:
                    run.rounds_planned = int(plan["num-rounds"])
                run.model = str(plan.get("model", ""))
                run.transport = str(data.get(Field.TRANSPORT, ""))
            if plan.get("run-key") and plan["run-key"] not in run.run_keys:
                run.run_keys.append(str(plan["run-key"]))
            run_id = data.get(Field.RUN_ID)
            if run_id is not None and run_id not in run.flower_run_ids:
                run.flower_run_ids.append(run_id)
    runs.extend(orphans.values())


def run_summaries(servers: list[Verification], clients: list[Verification]) -> list[RunSummary]:
    runs = [run for log in servers for run in _server_runs(log)]
    _link_owner_rounds(runs, clients)
    return sorted(runs, key=lambda r: r.first_event)
