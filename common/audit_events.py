"""The audit log's schema: every entry type, its fields, and the DP event record, declared once.

Guarantee: writers (client, server, common/audit_log.py) and readers (the auditor's
report, ``server status``) name entry types only through ``Event`` and shared data keys
through ``Field``, so neither can be written under one spelling and read under another;
``FIELDS`` lists every data key an entry of each type may carry, and ``AuditLog.append``
refuses any other before anything is written. DP events in entries are
``common/dp_event.DpEvent`` records (``as_entry``).
"""

from __future__ import annotations


class Event:
    """Audit entry types (``type`` of an entry); what each records: ``FIELDS``."""

    # both sides (common/audit_log.py)
    LOG_START = "log-start"
    CHECKPOINT = "checkpoint"
    # the server
    RUN_START = "run-start"
    RUN_RESUMED = "run-resumed"
    ROUND_CONFIGURED = "round-configured"
    ROUND_SAMPLED = "round-sampled"
    CLIENT_REFUSED = "client-refused"
    UPDATE_REJECTED = "update-rejected"
    UPDATE_RECEIVED = "update-received"
    CLIENTS_DROPPED = "clients-dropped"
    ROUND_NOT_AGGREGATED = "round-not-aggregated"
    AGGREGATED = "aggregated"
    ROUND_EVALUATED = "round-evaluated"
    RUN_END = "run-end"
    OWNER_REMOVED = "owner-removed"
    # a data owner
    NODE_START = "node-start"
    NODE_STOP = "node-stop"
    INSECURE_MODE_WARNING = "insecure-mode-warning"
    ROUND_START = "round-start"
    BUDGET_CHANGED = "budget-changed"
    DP_CHARGED = "dp-charged"
    NON_PRIVATE_ROUND = "non-private-round"
    GROUP_PRIVACY_WARNING = "group-privacy-warning"
    UPDATE_RELEASED = "update-released"
    UPDATE_RE_RELEASED = "update-re-released"
    EVALUATE_RELEASED = "evaluate-released"
    ROUND_REFUSED = "round-refused"
    EVALUATE_REFUSED = "evaluate-refused"
    ROUND_ERROR = "round-error"
    TEXT_DESENSITISED = "text-desensitised"
    SEALED_FILE_REJECTED = "sealed-file-rejected"
    FOREIGN_APP_REFUSED = "foreign-app-refused"
    # the server (appended)
    EVALUATE_RECEIVED = "evaluate-received"
    REPLY_IMPERSONATED = "reply-impersonated"


class Field:
    """Data keys that more than one writer or reader uses (kebab-case, as written)."""

    # the chain itself (log-start, checkpoint)
    FORMAT = "format"
    PUBLIC_KEY = "public-key"
    SIGNED_HASH = "signed-hash"
    SIGNED_SEQ = "signed-seq"
    SIGNATURE = "signature"
    # a run, a round
    SERVER_ROUND = "server-round"
    RUN_ID = "run-id"  # Flower's run id, as an owner's context holds it
    RUN_KEY = "run-key"
    FLOWER_RUN_ID = "flower-run-id"  # the same id, as the server's context holds it
    CONFIG = "config"
    CLASSES = "classes"
    DESENSITISATION = "desensitisation"
    POLICY_DIGEST = "policy-digest"
    IDENTIFIERS_REPLACED = "identifiers-replaced"
    MODEL = "model"
    EVAL_DATA = "eval-data"
    INITIAL_MODEL = "initial-model"
    TRANSPORT = "transport"
    PLAN = "plan"
    FROM_ROUND = "from-round"
    FINAL = "final"
    MODEL_SHA256 = "model-sha256"
    GLOBAL_SHA256 = "global-sha256"
    NODE_IDS = "node-ids"
    OWNERS = "owners"
    # an owner as the server names it (server/identity.py ``OwnerIdentity.describe``)
    OWNER = "owner"
    NODE_ID = "node-id"
    NODE_KEY_FINGERPRINT = "node-key-fingerprint"
    REGISTERED_AS = "registered-as"
    OWNER_LABEL_SELF_DECLARED = "owner-label-self-declared"
    # a reply, an update
    MESSAGE_TYPE = "message-type"
    METRICS = "metrics"
    OWNER_AUDIT_HEAD = "owner-audit-head"
    UPDATE_SHA256 = "update-sha256"
    UPDATE_BYTES = "update-bytes"
    UPDATE_L2_DISTANCE = "update-l2-distance"
    UPDATE_NORM_BOUND = "update-norm-bound"
    AGGREGATION_WEIGHT = "aggregation-weight"
    TASK_OWNER = "task-owner"
    TASK_NODE_ID = "task-node-id"
    SENDER_NODE_ID = "sender-node-id"
    REPLY_TO_MESSAGE_ID = "reply-to-message-id"
    # an owner's data, ledger and charges
    DATA_FINGERPRINT = "data-fingerprint"
    RECORDS = "records"
    CLASS_COUNTS = "class-counts"
    LEDGER_ID = "ledger-id"
    OLD_BUDGET = "old-budget"
    NEW_BUDGET = "new-budget"
    KIND = "kind"
    RELATION = "relation"
    PRIVACY_UNIT = "privacy-unit"
    NOISE_MULTIPLIER = "noise-multiplier"
    SAMPLE_RATE = "sample-rate"
    STEPS = "steps"
    DELTA = "delta"
    ACCOUNTANT = "accountant"
    EPSILON_AFTER = "epsilon-after"
    EPSILON_BUDGET = "epsilon-budget"
    LEDGER_EVENTS = "ledger-events"
    # why
    REASON = "reason"
    REUSES_CHARGE_OF = "reuses-charge-of"
    # a training charge's attempt ("<run>-<round>/<nonce>", client/releases.py): in the
    # dp-charged entry that pays it and the update-released entry released under it
    PAID_BY = "paid-by"
    CODE = "code"
    ERROR = "error"
    WARNING = "warning"


_OWNER_IDENTITY = frozenset(
    {Field.OWNER, Field.NODE_ID, Field.NODE_KEY_FINGERPRINT, Field.REGISTERED_AS}
)
_REFUSAL = frozenset({Field.SERVER_ROUND, Field.CODE, Field.REASON})

# event type -> the data keys its entries may carry (a writer may leave any out).
FIELDS: dict[str, frozenset[str]] = {
    # the first entry: the log's format and the party's Ed25519 public key
    Event.LOG_START: frozenset({Field.FORMAT, Field.PUBLIC_KEY}),
    # the party's signature over the hash of the entry before it, and why it signed then
    Event.CHECKPOINT: frozenset(
        {Field.SIGNED_HASH, Field.SIGNED_SEQ, Field.SIGNATURE, Field.REASON}
    ),
    # a run's ids, its whole config, model, evaluation data, bounds and registered owners
    Event.RUN_START: frozenset(
        {
            Field.RUN_KEY,
            Field.FLOWER_RUN_ID,
            Field.CONFIG,
            Field.CLASSES,
            Field.MODEL,
            "class-priors",
            "class-descriptions",
            "test-records",
            Field.EVAL_DATA,
            Field.TRANSPORT,
            Field.INITIAL_MODEL,
            Field.UPDATE_NORM_BOUND,
            "round-timeout",
            "owners-named-by",
            "registered-owners",
        }
    ),
    # a run continued from its checkpoint: the round it resumes after, the model it holds
    Event.RUN_RESUMED: frozenset({Field.FROM_ROUND, Field.MODEL_SHA256}),
    # the global model a round sends (owners record this entry's hash with the plan)
    Event.ROUND_CONFIGURED: frozenset({Field.SERVER_ROUND, Field.GLOBAL_SHA256}),
    # the nodes a round sampled, and their owners
    Event.ROUND_SAMPLED: frozenset({Field.SERVER_ROUND, Field.NODE_IDS, Field.OWNERS}),
    # an owner's coded refusal of a train or evaluate request, as sent and as read
    Event.CLIENT_REFUSED: _OWNER_IDENTITY
    | _REFUSAL
    | frozenset({Field.MESSAGE_TYPE, "reason-as-sent"}),
    # a reply that failed the server's validation (server/validate.py)
    Event.UPDATE_REJECTED: _OWNER_IDENTITY
    | frozenset({Field.SERVER_ROUND, Field.MESSAGE_TYPE, Field.REASON}),
    # an accepted update: its digest, size, norm and bound, weight, metrics, owner's head
    Event.UPDATE_RECEIVED: _OWNER_IDENTITY
    | frozenset(
        {
            Field.SERVER_ROUND,
            Field.OWNER_LABEL_SELF_DECLARED,
            Field.UPDATE_SHA256,
            Field.UPDATE_BYTES,
            Field.UPDATE_L2_DISTANCE,
            Field.UPDATE_NORM_BOUND,
            Field.AGGREGATION_WEIGHT,
            Field.METRICS,
            Field.OWNER_AUDIT_HEAD,
        }
    ),
    # sampled nodes that sent no reply in time
    Event.CLIENTS_DROPPED: frozenset({Field.SERVER_ROUND, Field.NODE_IDS, Field.OWNERS}),
    # a round with no valid update: the global model is unchanged
    Event.ROUND_NOT_AGGREGATED: frozenset({Field.SERVER_ROUND}),
    # the new global model and the owners whose updates made it
    Event.AGGREGATED: frozenset({Field.SERVER_ROUND, "participants", Field.GLOBAL_SHA256}),
    # the server's evaluation of the global model after a round
    Event.ROUND_EVALUATED: frozenset(
        {
            Field.SERVER_ROUND,
            "accuracy",
            "loss",
            "macro-f1",
            "recall-per-class",
            "never-predicted",
            "epsilon-reported",
            "dropped-node-ids",
        }
    ),
    # the run's outcome and the saved model's digest (None: nothing saved)
    Event.RUN_END: frozenset({Field.FINAL, Field.MODEL_SHA256}),
    # `server remove-owner`: node key, node id, name, reason
    Event.OWNER_REMOVED: frozenset(
        {Field.NODE_ID, Field.NODE_KEY_FINGERPRINT, "name", Field.REASON}
    ),
    # an owner's node started: SuperLink, key, transport, data, class counts, budget
    Event.NODE_START: frozenset(
        {
            "superlink",
            Field.NODE_KEY_FINGERPRINT,
            Field.TRANSPORT,
            "superlink-wait",
            "retry-policy",
            "federation-classes",
            Field.DATA_FINGERPRINT,
            Field.RECORDS,
            Field.CLASS_COUNTS,
            Field.EPSILON_BUDGET,
            "epsilon-spent",
            Field.DELTA,
        }
    ),
    # why the node stopped (signal, superlink-gone, removed with the notice, failed)
    Event.NODE_STOP: frozenset(
        {
            Field.REASON,
            "exit-code",
            "message",
            "operator-notice",
            "signal",
            "supernode-status",
            "executor-status",
        }
    ),
    # the node runs without TLS and node authentication
    Event.INSECURE_MODE_WARNING: frozenset({Field.WARNING}),
    # a train request accepted for work: run, node, data, the plan as received, device
    Event.ROUND_START: frozenset(
        {
            Field.RUN_ID,
            Field.NODE_ID,
            Field.SERVER_ROUND,
            Field.DATA_FINGERPRINT,
            Field.RECORDS,
            "records-left-out",
            Field.PRIVACY_UNIT,
            "units",
            Field.CLASS_COUNTS,
            Field.PLAN,
            "device",
            Field.TRANSPORT,
            Field.DESENSITISATION,
        }
    ),
    # the owner changed its epsilon budget (from its ledger)
    Event.BUDGET_CHANGED: frozenset(
        {Field.OLD_BUDGET, Field.NEW_BUDGET, "changed-at", Field.LEDGER_ID}
    ),
    # one durable ledger charge with the whole ledger history composed (one event per
    # mechanism, steps summed), to recompute epsilon
    Event.DP_CHARGED: frozenset(
        {
            Field.SERVER_ROUND,
            Field.KIND,
            Field.LEDGER_ID,
            Field.DATA_FINGERPRINT,
            Field.NOISE_MULTIPLIER,
            "max-grad-norm",
            Field.SAMPLE_RATE,
            Field.STEPS,
            Field.DELTA,
            Field.RELATION,
            Field.PRIVACY_UNIT,
            "released-count",
            "trained-noise-multiplier",
            "trained-sample-rate",
            Field.ACCOUNTANT,
            "epsilon-before",
            Field.EPSILON_AFTER,
            Field.EPSILON_BUDGET,
            "budget-remaining",
            Field.LEDGER_EVENTS,
            # a retried round released under the charge its first attempt paid and never
            # sent (client/releases.py): that charge's time; the history adds nothing
            Field.REUSES_CHARGE_OF,
            Field.PAID_BY,
        }
    ),
    # a record-level charge on data with a privacy-unit column (the owner's own record):
    # what the ledger's epsilon per record means for the unit with the most records
    Event.GROUP_PRIVACY_WARNING: frozenset(
        {
            Field.SERVER_ROUND,
            Field.PRIVACY_UNIT,
            "largest-unit-records",
            "epsilon-per-record",
            "epsilon-for-largest-unit",
            Field.DELTA,
            Field.WARNING,
        }
    ),
    # a round trained without DP: the plan asked and the owner opted in
    Event.NON_PRIVATE_ROUND: frozenset({Field.SERVER_ROUND, Field.WARNING}),
    # the owner's text through its desensitisation policy, after the round's pre-flight:
    # the policy's digest and how many identifiers of each type were replaced (the
    # owner's own record: wire.OWNER_ONLY)
    Event.TEXT_DESENSITISED: frozenset(
        {Field.SERVER_ROUND, Field.POLICY_DIGEST, Field.IDENTIFIERS_REPLACED}
    ),
    # a file the owner sealed at rest (common/sealed.py) failed authentication: edited,
    # truncated, another owner's or under a rotated key; never used (what happened
    # instead: "action"). Its name (a hash) and the reason only, no content.
    Event.SEALED_FILE_REJECTED: frozenset({"file", "purpose", "reason", "action"}),
    # an update leaving the owner: digest, size, distance from the global model, metrics
    Event.UPDATE_RELEASED: frozenset(
        {
            Field.SERVER_ROUND,
            Field.UPDATE_SHA256,
            Field.UPDATE_BYTES,
            Field.UPDATE_L2_DISTANCE,
            Field.METRICS,
            Field.PAID_BY,
        }
    ),
    # a round answered again with the update already released (no new charge)
    Event.UPDATE_RE_RELEASED: frozenset({Field.SERVER_ROUND, Field.UPDATE_SHA256, Field.REASON}),
    # an evaluate answer leaving the owner (noisy metrics)
    Event.EVALUATE_RELEASED: frozenset({Field.SERVER_ROUND, Field.METRICS}),
    # the owner refused a train request: its code and reason
    Event.ROUND_REFUSED: _REFUSAL,
    # the owner refused an evaluate request: its code and reason
    Event.EVALUATE_REFUSED: _REFUSAL,
    # the owner's client failed; the reply said only that
    Event.ROUND_ERROR: frozenset({Field.SERVER_ROUND, Field.ERROR}),
    # the owner's executor refused an app that is not fedshield's (its FAB's identity)
    Event.FOREIGN_APP_REFUSED: frozenset(
        {Field.RUN_ID, "fab-hash", "fab-name", "clientapp", Field.REASON}
    ),
    # an owner's accepted evaluate answer, anchored by its audit head
    Event.EVALUATE_RECEIVED: _OWNER_IDENTITY
    | frozenset(
        {
            Field.SERVER_ROUND,
            Field.OWNER_LABEL_SELF_DECLARED,
            Field.AGGREGATION_WEIGHT,
            Field.METRICS,
            Field.OWNER_AUDIT_HEAD,
        }
    ),
    # a reply refused: it answers no task sent, or came not from the node it went to
    Event.REPLY_IMPERSONATED: frozenset(
        {
            Field.SERVER_ROUND,
            Field.MESSAGE_TYPE,
            Field.SENDER_NODE_ID,
            Field.REPLY_TO_MESSAGE_ID,
            Field.TASK_NODE_ID,
            Field.TASK_OWNER,
            Field.REASON,
        }
    ),
}
