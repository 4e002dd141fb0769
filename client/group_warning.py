"""The warning a record-level owner gets when its data says whose each record is.

Guarantee: after every record-level charge on data with a privacy-unit column
(``record-level``), the owner's console and its own audit log say what the ledger's
epsilon per record means for the unit with the most records (group privacy,
``common/group_privacy.py``). The figure uses that unit's exact size, so it stays with
the owner: no reply field carries it.
"""

from __future__ import annotations

import logging

from fedshield.client.owner import RECORD, Owner
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.group_privacy import group_epsilon

log = logging.getLogger("fedshield.client")


def warn_group_privacy(owner: Owner, audit: AuditLog, server_round: int) -> None:
    """Log the group-privacy figure of a record-level ledger on data with units."""
    if owner.dataset.units is None or owner.protected_unit != RECORD:
        return
    events = [entry.event for entry in owner.ledger.entries()]
    largest = owner.dataset.largest_unit
    per_record = owner.ledger.epsilon(owner.delta)
    per_unit = group_epsilon(events, owner.delta, largest)
    name = owner.dataset.unit_name
    warning = (
        f"record-level DP on data with units '{name}': epsilon {per_record:.2f} protects one "
        f"record; the '{name}' with {largest} records is protected only at epsilon "
        f"{per_unit:.2f} (group privacy, delta {owner.delta:g}). To protect each '{name}' "
        f"at the budget, drop record-level (privacy-unit={name})."
    )
    log.warning("%s: %s", owner.owner_id, warning)
    audit.append(
        Event.GROUP_PRIVACY_WARNING,
        **{
            Field.SERVER_ROUND: server_round,
            Field.PRIVACY_UNIT: name,
            "largest-unit-records": largest,
            "epsilon-per-record": per_record,
            "epsilon-for-largest-unit": per_unit,
            Field.DELTA: owner.delta,
            Field.WARNING: warning,
        },
    )
