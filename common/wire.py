"""What crosses the network in a round, and nothing else: keys and codecs in one place.

server -> client (train): the global model ("arrays") and the training plan ("config":
the keys in TRAIN_PLAN_KEYS, the class names, the server round, and the hash of the
server's audit entry for the round, which the owner logs).
client -> server (reply): the updated model ("arrays"), aggregate metrics ("metrics":
REPLY_METRIC_KEYS) and the owner's public label and the hash of its latest signed audit
checkpoint ("owner"), which the server logs so that truncating the owner's log later shows. No text, no vocabulary, no
per-record value, no data fingerprint.
"""

from __future__ import annotations

import hashlib

import numpy as np
from fedshield.common.config import RunConfig
from flwr.app import ArrayRecord, ConfigRecord

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
OWNER = "owner"
SERVER_ROUND = "server-round"
CLASSES = "classes"
OWNER_ID = "owner-id"
AUDIT_HEAD = "audit-head"
SERVER_AUDIT_HEAD = "server-audit-head"

TRAIN_PLAN_KEYS = (
    "num-rounds",
    "run-key",
    "dp",
    "target-epsilon",
    "noise-multiplier",
    "max-grad-norm",
    "batch-size",
    "local-epochs",
    "learning-rate",
    "momentum",
    "seed",
    "model",
    "finetune-layers",
    "max-tokens",
    "physical-batch-size",
    "encoder-learning-rate",
    "feat-n-buckets",
    "feat-ngram-max",
    "feat-out-dim",
    "feat-entries-per-bucket",
    "feat-seed",
)
REPLY_METRIC_KEYS = (
    "num-examples",
    "train-loss",
    "epsilon",
    "epsilon-budget",
    "noise-multiplier",
    "sample-rate",
    "steps",
    "delta",
    "max-grad-norm",
)

# Error codes a client puts in an error reply (Flower's own codes are below 100).
ERROR_BUDGET_EXCEEDED = 1001
ERROR_LEDGER_CORRUPTED = 1002
ERROR_BAD_DATA_OR_CONFIG = 1003


def encode_train_plan(config: RunConfig, classes: tuple[str, ...]) -> ConfigRecord:
    values = config.as_dict()
    record = ConfigRecord({key: values[key] for key in TRAIN_PLAN_KEYS})
    record[CLASSES] = ",".join(classes)
    return record


def decode_train_plan(record: ConfigRecord) -> tuple[RunConfig, tuple[str, ...], int]:
    """The plan as a RunConfig (other keys at defaults), the class names and the round."""
    values = {key: record[key] for key in TRAIN_PLAN_KEYS if key in record}
    classes = tuple(c for c in str(record.get(CLASSES, "")).split(",") if c)
    return RunConfig.from_dict(values), classes, int(record.get(SERVER_ROUND, 0))


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
