"""The owner's record count as it may leave: a DP release, charged once per data version.

Guarantee: under add/remove-one-record adjacency (the default) the exact record count N
tells D from D minus one record, and so does anything computed from it: a weight, a
sample rate B/N, a step count, a noise multiplier calibrated for N, an update divided
by N, a delta check against 1/N. None of them uses N. They use ``RecordCount.value``:
N plus Gaussian noise of std ``count-noise`` (sensitivity 1), rounded and floored at 0,
one Gaussian mechanism charged to the ledger (``DpEvent(count-noise, 1, 1)``, composed
with the training events by the same accountant) before any function of it leaves.
The value is stored with the charge, keyed by the data version's fingerprint, and
every later round and run on that version reuses it: one version, one charge.

An owner that declares its count public (``public-record-count``) releases N itself;
its training is then accounted under replace-one adjacency (sensitivity 2C,
``privacy.accounted_event``) and its ledger says so. A non-private round (the owner
opted in to ``dp=false``) claims nothing and uses N.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context

from fedshield.client.charge import charge_and_audit
from fedshield.client.ledger_entries import KIND_COUNT
from fedshield.client.owner import Owner
from fedshield.client.secure_random import SecureRandom
from fedshield.common.audit_log import AuditLog
from fedshield.common.dp_event import DpEvent
from fedshield.common.privacy import ADD_REMOVE


@dataclass(frozen=True)
class RecordCount:
    """The count every released setting derives from, and the relation it rests on."""

    value: int
    relation: str

    @property
    def at_least_one(self) -> int:
        """For divisions (a mean, a delta check): a released 0 counts as 1."""
        return max(self.value, 1)


def count_event(owner: Owner) -> DpEvent:
    """The count release as the accountant composes it: one Gaussian, sensitivity 1."""
    return DpEvent(noise_multiplier=owner.count_noise, sample_rate=1.0, steps=1)


def noisy_count(exact: int, std: float) -> int:
    """``exact`` plus Gaussian noise of ``std`` from the CSPRNG (a server must not predict
    it), rounded and floored at 0 (post-processing)."""
    return max(0, round(exact + float(SecureRandom().standard_normal(1)[0]) * std))


def released_record_count(
    owner: Owner, audit: AuditLog, context: Context, server_round: int, dp: bool
) -> RecordCount:
    """This data version's count as it may leave, releasing (and charging) it if new:
    of records, or with a privacy unit, of units (``Owner.protected_count``)."""
    # A non-private round trains on records whatever the unit (client/train.py).
    exact = owner.protected_count if dp else len(owner.dataset)
    relation = owner.relation(dp)
    if dp:
        owner.ledger.check_relation(relation, owner.protected_unit)
    if relation != ADD_REMOVE:
        return RecordCount(exact, relation)
    stored = owner.ledger.released_count(owner.dataset.fingerprint)
    if stored is not None:
        return RecordCount(stored, ADD_REMOVE)
    event = count_event(owner)
    owner.ledger.check_budget(event, context.run_id)
    value = noisy_count(exact, owner.count_noise)
    # Charge before release: the value is stored with the charge, before any round uses it.
    charge_and_audit(owner, audit, event, context, server_round, KIND_COUNT, 1.0, released=value)
    return RecordCount(value, ADD_REMOVE)
