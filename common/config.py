"""Run configuration: every key, its type, default and range, in one place.

Guarantee: a configuration that reaches the apps has only known keys, each of the
declared type and inside its range; anything else is refused with the key, the value
and the fix. Keys are kebab-case, as in Flower's run config.

Two groups: ``RunConfig`` is the federation's plan (the operator's; sent to clients in
each train message), ``OwnerConfig`` is a data owner's own settings (node config of a
deployed SuperNode, never taken from the server).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from fedshield.common.errors import ConfigError
from fedshield.common.untrusted import OWNER_LABEL

# The most classes a plan may have: the class count sets the model's size at an owner.
MAX_CLASSES = 1000
# The client learning rate when the plan leaves it 0: this much per class. A softmax
# head's gradient spreads over its classes, so the step that learns in a few rounds
# grows with their number (measured on IMDB, BBC News and StackOverflow titles, validation
# splits: docs/BENCHMARKS.md "Defaults that generalise").
LEARNING_RATE_PER_CLASS = 2.5
# Plan bounds an owner applies whatever the noise (a near-free plan must not cost it hours
# or gigabytes): the projection table's size, and a learning rate that keeps any update
# finite in float32 (the default is at most 2.5 x 1,000 classes).
MAX_PROJECTION_ENTRIES = 2**24
MAX_LEARNING_RATE = 1e4
# A federation's class name: what an owner's terminal shows and its shell may be told to pass.
CLASS_NAME = re.compile(r"[\w .&+/-]{1,100}")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _KebabConfig:
    """Build from / export to a dict of kebab-case keys, validating types and ranges."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, allow_unknown: bool = False):
        hints = get_type_hints(cls)
        known = {_kebab(f.name): f for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                if allow_unknown:
                    continue
                raise ConfigError(
                    f"unknown configuration key '{key}'; known keys: {', '.join(sorted(known))}"
                )
            target = hints[known[key].name]
            kwargs[known[key].name] = _coerce(key, value, target)
        config = cls(**kwargs)
        config.validate()
        return config

    def as_dict(self) -> dict[str, Any]:
        return {_kebab(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes):
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:  # pragma: no cover - overridden
        pass


def _coerce(key: str, value: Any, target: type) -> Any:
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif target is str and isinstance(value, str):
        return value
    raise ConfigError(
        f"configuration key '{key}': expected {target.__name__}, got {value!r} "
        f"({type(value).__name__})"
    )


def _require(condition: bool, key: str, value: Any, rule: str) -> None:
    if not condition:
        raise ConfigError(f"configuration key '{key}' = {value!r}: {rule}")


@dataclass(frozen=True)
class RunConfig(_KebabConfig):
    """The federation's plan; defaults are the measured defaults (docs/BENCHMARKS.md).

    ``batch-size = 0`` means one full-batch step per local epoch (Poisson sample rate 1,
    i.e. DP-GD): with label-skewed owners of very different sizes, mini-batch local
    steps let large owners dominate and the model collapsed to one class; full-batch
    steps make each round's average the global clipped gradient whatever the partition.
    """

    num_rounds: int = 40
    data: str = "imdb"
    # The server's evaluation file, used whole (deployment: required; simulation: "" =
    # a held-out test-fraction of ``data``). Its labels must be among ``classes``.
    eval_data: str = ""
    text_column: str = "text"
    label_column: str = "label"
    classes: str = ""
    partition: str = "dirichlet"
    alpha: float = 0.5
    test_fraction: float = 0.2
    max_records: int = 0
    seed: int = 0
    dp: bool = True
    target_epsilon: float = 3.0
    epsilon_budget: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    batch_size: int = 0
    local_epochs: int = 1
    learning_rate: float = 0.0  # 0: LEARNING_RATE_PER_CLASS x the number of classes
    momentum: float = 0.0
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9
    aggregation: str = "fedavg"
    trim_fraction: float = 0.2
    max_update_norm: float = 0.0  # 0: the default bound (server/validate.py)
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    fraction_evaluate: float = 0.0
    round_timeout_s: float = 0.0  # 0: learnt from the replies (server/round_timeout.py)
    out_dir: str = ""
    ledger_dir: str = ""
    audit_dir: str = ""
    transport: str = ""
    run_key: str = ""
    resume: bool = False
    # A finished run's folder (model.pt + model.json) whose global model this run starts
    # from: public, so no privacy cost; "" = an untrained model.
    continue_from: str = ""
    # Simulation only: the empirical audit's included canaries (audit/canaries.py), added
    # to the simulated owners' data. A deployed owner reads its data from its own node
    # config and never looks at this key.
    audit_canaries: str = ""
    # Simulation only: the simulated owners' count policy (OwnerConfig's keys of the
    # same names); a deployed owner sets its own, never from the plan.
    count_noise: float = 20.0
    public_record_count: bool = False
    num_clients: int = 0
    device: str = "auto"
    model: str = "hashed"
    finetune_layers: int = 1
    max_tokens: int = 128
    physical_batch_size: int = 0
    encoder_learning_rate: float = 0.5
    feat_n_buckets: int = 2**18
    feat_ngram_max: int = 1  # unigrams: +2.3 points on IMDB, +19 on short titles (BENCHMARKS)
    feat_out_dim: int = 4096
    feat_entries_per_bucket: int = 4
    feat_seed: int = 0

    def learning_rate_for(self, num_classes: int) -> float:
        """The client learning rate: as planned, or per class when the plan leaves it 0."""
        return self.learning_rate or LEARNING_RATE_PER_CLASS * num_classes

    def validate(self) -> None:
        _require(self.num_rounds >= 1, "num-rounds", self.num_rounds, "must be >= 1")
        _require(
            self.partition in ("iid", "dirichlet"),
            "partition",
            self.partition,
            "use 'iid' or 'dirichlet'",
        )
        _require(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        _require(
            0 < self.test_fraction < 1, "test-fraction", self.test_fraction, "must be in (0, 1)"
        )
        _require(self.max_records >= 0, "max-records", self.max_records, "must be >= 0 (0 = all)")
        _require(0 < self.delta < 1, "delta", self.delta, "must be in (0, 1), well below 1/N")
        validate_count_noise(self.count_noise)
        # Bounds an owner applies to any plan: outside them a hostile plan could hang the
        # owner (a target epsilon the noise search never reaches), make featurising cost
        # grow with a record's length before the budget check (huge n-grams), or push the
        # clipping norm into float32's subnormal range, where rounding breaks the noise.
        _require(
            0 <= self.target_epsilon <= 100,
            "target-epsilon",
            self.target_epsilon,
            "must be in [0, 100] (0: use noise-multiplier)",
        )
        _require(
            self.noise_multiplier == 0 or 1e-3 <= self.noise_multiplier <= 1e6,
            "noise-multiplier",
            self.noise_multiplier,
            "must be 0 (derive it from target-epsilon) or in [0.001, 1e6]",
        )
        _require(
            1e-3 <= self.max_grad_norm <= 1e4,
            "max-grad-norm",
            self.max_grad_norm,
            "must be in [0.001, 10000]",
        )
        _require(
            re.fullmatch(r"[A-Za-z0-9_-]{0,64}", self.run_key) is not None,
            "run-key",
            self.run_key,
            "must be up to 64 letters, digits, '-' or '_'",
        )
        _require(
            1 <= self.local_epochs <= 100,
            "local-epochs",
            self.local_epochs,
            "must be in [1, 100]",
        )
        if self.dp:
            _require(
                self.target_epsilon > 0 or self.noise_multiplier > 0,
                "target-epsilon",
                self.target_epsilon,
                "with DP on, set target-epsilon > 0 or noise-multiplier > 0",
            )
            _require(
                self.noise_multiplier >= 0,
                "noise-multiplier",
                self.noise_multiplier,
                "must be >= 0",
            )
            _require(self.max_grad_norm > 0, "max-grad-norm", self.max_grad_norm, "must be > 0")
        _require(
            self.batch_size >= 0,
            "batch-size",
            self.batch_size,
            "must be >= 1, or 0 for full local batches",
        )
        _require(
            0 <= self.learning_rate <= MAX_LEARNING_RATE,
            "learning-rate",
            self.learning_rate,
            f"must be in (0, {MAX_LEARNING_RATE:g}], or 0 for {LEARNING_RATE_PER_CLASS:g} x the "
            "number of classes",
        )
        _require(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        _require(
            self.server_learning_rate > 0,
            "server-learning-rate",
            self.server_learning_rate,
            "must be > 0",
        )
        _require(
            0 <= self.server_momentum < 1,
            "server-momentum",
            self.server_momentum,
            "must be in [0, 1)",
        )
        _require(
            0 < self.fraction_train <= 1, "fraction-train", self.fraction_train, "must be in (0, 1]"
        )
        _require(self.min_train_nodes >= 1, "min-train-nodes", self.min_train_nodes, "must be >= 1")
        _require(
            0 <= self.fraction_evaluate <= 1,
            "fraction-evaluate",
            self.fraction_evaluate,
            "must be in [0, 1]",
        )
        _require(
            self.round_timeout_s >= 0,
            "round-timeout-s",
            self.round_timeout_s,
            "must be > 0 seconds, or 0 to fit the wait to the owners' replies",
        )
        _require(
            1 <= self.feat_out_dim <= 16384,
            "feat-out-dim",
            self.feat_out_dim,
            "must be in [1, 16384]",
        )
        _require(
            1 <= self.feat_n_buckets <= 2**22,
            "feat-n-buckets",
            self.feat_n_buckets,
            "must be in [1, 2^22]",
        )
        _require(
            1 <= self.feat_ngram_max <= 3,
            "feat-ngram-max",
            self.feat_ngram_max,
            "must be 1, 2 or 3",
        )
        _require(
            1 <= self.feat_entries_per_bucket <= 64,
            "feat-entries-per-bucket",
            self.feat_entries_per_bucket,
            "must be in [1, 64]",
        )
        # The projection's table has buckets x entries non-zeros, built at every owner
        # before its text is read: 2^22 x 64 took 13 GB for a near-free plan.
        _require(
            self.feat_n_buckets * self.feat_entries_per_bucket <= MAX_PROJECTION_ENTRIES,
            "feat-n-buckets x feat-entries-per-bucket",
            self.feat_n_buckets * self.feat_entries_per_bucket,
            f"must be at most {MAX_PROJECTION_ENTRIES} (2^24; the default is 2^18 x 4)",
        )
        validate_device(self.device, "device")
        _require(
            self.model in ("hashed", "minilm"),
            "model",
            self.model,
            "use 'hashed' (linear head on hashed n-grams) or 'minilm' (pretrained encoder)",
        )
        _require(
            0 <= self.finetune_layers <= 6,
            "finetune-layers",
            self.finetune_layers,
            "MiniLM has 6 layers: 0 (frozen encoder, train the head) to 6",
        )
        _require(
            8 <= self.max_tokens <= 512,
            "max-tokens",
            self.max_tokens,
            "must be in [8, 512] (MiniLM's position limit; 128-256 is typical)",
        )
        _require(
            self.encoder_learning_rate >= 0,
            "encoder-learning-rate",
            self.encoder_learning_rate,
            "must be >= 0 (0 keeps the pretrained layers fixed)",
        )
        _require(
            not (self.resume and self.continue_from),
            "continue-from",
            self.continue_from,
            "a resumed run continues its own checkpoint; drop continue-from or --resume",
        )
        _require(
            self.physical_batch_size >= 0,
            "physical-batch-size",
            self.physical_batch_size,
            "must be >= 1, or 0 to let the model choose",
        )

    def class_names(self) -> tuple[str, ...] | None:
        return split_class_names(self.classes)


def split_class_names(text: str) -> tuple[str, ...] | None:
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    return names or None


@dataclass(frozen=True)
class OwnerConfig(_KebabConfig):
    """A data owner's own settings (a deployed SuperNode's ``--node-config``)."""

    data_path: str = ""
    text_column: str = "text"
    label_column: str = "label"
    epsilon_budget: float = 0.0
    delta: float = 1e-5
    ledger_dir: str = "~/.fedshield/ledgers"
    audit_dir: str = "~/.fedshield/audit"
    cache_dir: str = "~/.fedshield/cache"  # encoded records (minilm); "" = keep none on disk
    owner_id: str = ""
    device: str = "auto"
    transport: str = ""
    # The owner's policy: what a plan may ask of this owner (never taken from the server).
    allow_no_dp: bool = False  # accept non-private rounds (plan dp=false); off: refused
    allow_evaluate: bool = False  # answer evaluate requests, with a DP answer charged
    evaluate_noise_multiplier: float = 10.0  # noise / sensitivity of a DP evaluate answer
    run_epsilon_cap: float = 0.0  # most epsilon one run may spend; 0: the whole budget
    classes: str = ""  # the class list this owner accepts (comma-separated); "" = any
    # The record count leaves only as a DP release with noise of this std (records),
    # charged once per data version (client/count.py); or, declared public, as itself,
    # with training accounted under replace-one adjacency.
    count_noise: float = 20.0
    public_record_count: bool = False

    def validate(self) -> None:
        _require(
            not self.owner_id or OWNER_LABEL.fullmatch(self.owner_id) is not None,
            "owner-id",
            self.owner_id,
            "use 1-64 letters, digits, spaces and ._@:+/- (it is shown to the operator)",
        )
        _require(bool(self.data_path), "data-path", self.data_path, "set the owner's data file")
        _require(
            self.evaluate_noise_multiplier >= 0.5,
            "evaluate-noise-multiplier",
            self.evaluate_noise_multiplier,
            "must be >= 0.5 (a DP evaluate answer needs real noise; 10 is the default)",
        )
        _require(
            self.run_epsilon_cap >= 0,
            "run-epsilon-cap",
            self.run_epsilon_cap,
            "must be >= 0 (0: one run may spend the whole budget)",
        )
        _require(
            self.epsilon_budget > 0,
            "epsilon-budget",
            self.epsilon_budget,
            "set the owner's privacy budget, e.g. epsilon-budget=3",
        )
        _require(0 < self.delta < 1, "delta", self.delta, "must be in (0, 1), well below 1/N")
        validate_count_noise(self.count_noise)
        validate_device(self.device, "device")


def validate_count_noise(count_noise: float) -> None:
    _require(
        1.0 <= count_noise <= 1e6,
        "count-noise",
        count_noise,
        "must be in [1, 1e6] records (the record count's DP noise; 20 is the default)",
    )


def validate_device(device: str, key: str) -> None:
    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    _require(ok, key, device, "use auto, cpu, cuda or cuda:N")
