"""The audit log's schema: every entry type, and the DP event record, declared once.

Guarantee: writers (client, server) and the auditor's report name entry types only
through ``Event``, so a type cannot be written under one spelling and read under
another. DP events in entries are ``common/dp_event.DpEvent`` records (``as_entry``).
"""

from __future__ import annotations


class Event:
    """Audit entry types (``type`` of an entry); the data keys are kebab-case."""

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
    OWNER_REMOVED = "owner-removed"  # `server remove-owner`: node key, node id, reason
    # a data owner
    NODE_START = "node-start"
    NODE_STOP = "node-stop"  # why: signal, superlink-gone, removed (with the notice), failed
    INSECURE_MODE_WARNING = "insecure-mode-warning"
    ROUND_START = "round-start"
    BUDGET_CHANGED = "budget-changed"
    DP_CHARGED = "dp-charged"
    NON_PRIVATE_ROUND = "non-private-round"
    UPDATE_RELEASED = "update-released"
    UPDATE_RE_RELEASED = "update-re-released"
    EVALUATE_RELEASED = "evaluate-released"
    ROUND_REFUSED = "round-refused"
    EVALUATE_REFUSED = "evaluate-refused"
    ROUND_ERROR = "round-error"
    FOREIGN_APP_REFUSED = "foreign-app-refused"
    # the server (appended): an owner's evaluate answer, anchored by its audit head; a
    # reply refused because it answers no task sent, or not from the node it went to
    EVALUATE_RECEIVED = "evaluate-received"
    REPLY_IMPERSONATED = "reply-impersonated"
