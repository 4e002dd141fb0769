"""What crosses the network in a round, and nothing else: keys and codecs in one place.

server -> client (train): the global model ("arrays") and the training plan ("config":
the keys in TRAIN_PLAN_KEYS, the class names, the server round).
client -> server (reply): the updated model ("arrays"), aggregate metrics ("metrics":
REPLY_METRIC_KEYS) and the owner's public label ("owner"). No text, no vocabulary, no
per-record value, no data fingerprint.
"""

from __future__ import annotations

from fedshield.common.config import RunConfig
from flwr.app import ConfigRecord

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
OWNER = "owner"
SERVER_ROUND = "server-round"
CLASSES = "classes"
OWNER_ID = "owner-id"

TRAIN_PLAN_KEYS = (
    "num-rounds",
    "dp",
    "target-epsilon",
    "noise-multiplier",
    "max-grad-norm",
    "batch-size",
    "local-epochs",
    "learning-rate",
    "momentum",
    "seed",
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
