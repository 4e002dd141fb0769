"""What crosses the network in a round, and nothing else: keys and codecs in one place.

server -> client (train): the global model ("arrays") and the training plan ("config":
the keys in TRAIN_PLAN_KEYS, the class names, the server round, and the hash of the
server's audit entry for the round, which the owner logs).
client -> server (reply): the updated model ("arrays"), aggregate metrics ("metrics":
REPLY_METRIC_KEYS, among them the owner's DP count release as "num-examples") and the
owner's self-chosen label, the privacy definition and the hash of its latest audit entry
("owner"), which the server logs so that truncating the owner's log later shows. No text,
no vocabulary, no per-record value, no exact count, no data fingerprint.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedshield.common.errors import ConfigError
from fedshield.common.plan import MAX_CLASSES, Plan

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
OWNER = "owner"
SERVER_ROUND = "server-round"
CLASSES = "classes"
OWNER_ID = "owner-id"
AUDIT_HEAD = "audit-head"
SERVER_AUDIT_HEAD = "server-audit-head"
PRIVACY_DEFINITION = "privacy-definition"  # the neighbouring relation of the release

TRAIN_PLAN_KEYS = Plan.keys()  # declared once, as Plan's fields
REPLY_METRIC_KEYS = (
    "num-examples",
    "epsilon",
    "epsilon-budget",
    "noise-multiplier",
    "sample-rate",
    "steps",
    "delta",
    "max-grad-norm",
)
# An evaluate answer's range: accuracy in [0, 1], mean loss in [0, EVALUATE_LOSS_CLIP] (each
# record's loss is clipped to it before the DP answer; the server refuses anything else).
EVALUATE_LOSS_CLIP = 10.0
EVALUATE_METRIC_KEYS = (
    "num-examples",
    "accuracy",
    "loss",
    "epsilon",
    "noise-multiplier",
)

# Why each field of a reply may leave a data owner. The privacy definition (docs/PRIVACY.md,
# "Privacy semantics"): sample-level (epsilon, delta)-DP under add/remove-one-record
# adjacency by default, where the record count N is private too: it leaves only as a DP
# release charged to the owner's ledger (client/count.py), and every value computed from
# a count (sample rate, steps, calibrated noise, epsilon, the update's divisor, the
# server's weight) is computed from that release. An owner that declares N public
# releases it as itself, under replace-one adjacency (``privacy-definition`` says which).
PUBLIC_PARAMETER = (
    "public: a function of the plan, the owner's policy and the owner's DP count release only"
)
DP_RECORD_COUNT = (
    "DP release charged to the owner's ledger: the record count plus Gaussian noise, once per "
    "data version (N itself only where the owner declared it public: replace-one)"
)
PUBLIC_LABEL = "public: the label the owner chose for itself (the server names owners by key)"
PUBLIC_POLICY = "public: the neighbouring relation the owner's policy chose"
PUBLIC_COMMITMENT = (
    "public: SHA-256 of the owner's audit entry (chained over secret keys and times)"
)
DP_RELEASE = "DP release charged to the owner's ledger before it leaves"

_COMMON_OWNER_FIELDS = {
    f"{OWNER}.{OWNER_ID}": PUBLIC_LABEL,
    f"{OWNER}.{AUDIT_HEAD}": PUBLIC_COMMITMENT,
}
REPLY_SCHEMA: dict[str, dict[str, str]] = {
    "train": {
        f"{ARRAYS}.*": DP_RELEASE,
        **{f"{METRICS}.{key}": PUBLIC_PARAMETER for key in REPLY_METRIC_KEYS},
        f"{METRICS}.num-examples": DP_RECORD_COUNT,
        **_COMMON_OWNER_FIELDS,
        f"{OWNER}.{PRIVACY_DEFINITION}": PUBLIC_POLICY,
    },
    "evaluate": {
        **{f"{METRICS}.{key}": PUBLIC_PARAMETER for key in EVALUATE_METRIC_KEYS},
        f"{METRICS}.num-examples": DP_RECORD_COUNT,
        f"{METRICS}.accuracy": DP_RELEASE,
        f"{METRICS}.loss": DP_RELEASE,
        **_COMMON_OWNER_FIELDS,
    },
}
# What an owner records about its data and never sends, in the same terms: no reply field
# above carries it, and a reply with any other field does not leave (``check_reply``).
OWNER_ONLY: dict[str, str] = {
    "desensitisation.counts": (
        "private: how many identifiers of each type the owner's texts held, an exact "
        "function of its records; in the owner's audit log only (round-start)"
    ),
    "desensitisation.policy": (
        "the owner's own: the types it removes, how, and with which recognizers; in its "
        "audit log, for its auditor"
    ),
    "class-counts": "private: the owner's exact class counts; in its audit log only",
}
# The fields whose values may differ between an owner on D and on D minus one record,
# given the same count release: the DP releases themselves (each charged). Every other
# field, and every refusal, must be identical (tests/unit/test_adjacency.py).
DP_RELEASE_FIELDS = {
    kind: {field for field, why in schema.items() if why == DP_RELEASE}
    for kind, schema in REPLY_SCHEMA.items()
}

# Error codes a client puts in an error reply (Flower's own codes are below 100), each
# with the only reason text that leaves the owner: what happened, never a value from
# the data or the owner's disk (those go to the owner's console and audit log).
ERROR_BUDGET_EXCEEDED = 1001
ERROR_LEDGER_CORRUPTED = 1002
ERROR_BAD_DATA_OR_CONFIG = 1003
ERROR_POLICY = 1004
ERROR_INTERNAL = 1005
REFUSAL_REASONS = {
    ERROR_BUDGET_EXCEEDED: "the round would pass the owner's privacy budget or its cap per "
    "run; nothing was trained or released",
    ERROR_LEDGER_CORRUPTED: "the owner's privacy ledger failed its integrity check; the owner "
    "must restore it before training",
    ERROR_BAD_DATA_OR_CONFIG: "the owner's data or configuration does not fit this plan; the "
    "owner has the details in its console and audit log",
    ERROR_POLICY: "the owner's policy does not allow this request (non-private rounds, "
    "evaluation or this class list need the owner's consent)",
    ERROR_INTERNAL: "the owner's client failed; the owner has the details in its audit log",
}


def reply_fields(content: RecordDict) -> set[str]:
    """Every field of a reply as ``record.key`` (arrays as ``arrays.*``)."""
    fields = set()
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            fields.add(f"{name}.*")
        else:
            fields.update(f"{name}.{key}" for key in record)
    return fields


def check_reply_fields(kind: str, content: RecordDict) -> None:
    """Fail closed: a reply with any field outside ``REPLY_SCHEMA[kind]`` does not leave."""
    unexpected = reply_fields(content) - set(REPLY_SCHEMA[kind])
    if unexpected:
        raise RuntimeError(f"{kind} reply carries undeclared fields {sorted(unexpected)}")


def encode_train_plan(config: Plan, classes: tuple[str, ...]) -> ConfigRecord:
    """The plan part of ``config`` (a RunConfig holds more, which never leaves)."""
    record = ConfigRecord(config.plan().as_dict())
    record[CLASSES] = ",".join(classes)
    return record


def decode_train_plan(record: ConfigRecord) -> tuple[Plan, tuple[str, ...], int]:
    """The plan, the class names and the round."""
    values = {key: record[key] for key in TRAIN_PLAN_KEYS if key in record}
    classes = tuple(c for c in str(record.get(CLASSES, "")).split(",") if c)
    # The class count sets the model's size at the owner: bounded, like every plan value.
    if not 2 <= len(classes) <= MAX_CLASSES or len(set(classes)) != len(classes):
        raise ConfigError(
            f"the plan's class list has {len(classes)} names ({len(set(classes))} distinct); "
            f"an owner accepts 2 to {MAX_CLASSES} distinct classes"
        )
    return Plan.from_dict(values), classes, int(record.get(SERVER_ROUND, 0))


def arrays_digest(arrays: ArrayRecord) -> tuple[str, int]:
    """SHA-256 and byte size of an update, identical on the sending and receiving side."""
    digest = hashlib.sha256()
    size = 0
    for key in sorted(arrays.keys()):
        values = np.ascontiguousarray(arrays[key].numpy())
        digest.update(
            key.encode() + b"\0" + str(values.dtype).encode() + str(values.shape).encode()
        )
        digest.update(values.tobytes())
        size += values.nbytes
    return digest.hexdigest(), size


def arrays_l2_distance(a: ArrayRecord, b: ArrayRecord) -> float:
    """L2 norm of (a - b) over all arrays: the size of an update against the global model."""
    total = 0.0
    for key in a:
        total += float(np.sum((a[key].numpy().astype(np.float64) - b[key].numpy()) ** 2))
    return float(np.sqrt(total))
