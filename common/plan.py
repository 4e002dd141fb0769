"""The plan: the operator's settings that cross the wire, and the bounds an owner holds
any plan to.

Guarantee: every key of a train message's plan is a field of ``Plan`` (``wire`` derives
its list from here), and a plan exists only inside the bounds below, which an owner
applies whatever the server sends: outside them a hostile plan could hang the owner (a
target epsilon the noise search never reaches), make featurising cost grow with a
record's length before the budget check (huge n-grams), or push the clipping norm into
float32's subnormal range, where rounding breaks the noise. The plan never sets the
owner's policy (budget, delta, consent to non-private rounds): that is ``OwnerConfig``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedshield.common.kebab_config import KebabConfig, require

# The most classes a plan may have: the class count sets the model's size at an owner.
MAX_CLASSES = 1000
# A federation's class name: what an owner's terminal shows and its shell may be told to pass.
CLASS_NAME = re.compile(r"[\w .&+/-]{1,100}")
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


@dataclass(frozen=True)
class Plan(KebabConfig):
    """What each train message asks of an owner; defaults are the measured defaults
    (docs/BENCHMARKS.md).

    ``batch-size = 0`` means one full-batch step per local epoch (Poisson sample rate 1,
    i.e. DP-GD): with label-skewed owners of very different sizes, mini-batch local
    steps let large owners dominate and the model collapsed to one class; full-batch
    steps make each round's average the global clipped gradient whatever the partition.
    """

    num_rounds: int = 40
    run_key: str = ""
    seed: int = 0
    dp: bool = True
    target_epsilon: float = 3.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 0
    local_epochs: int = 1
    learning_rate: float = 0.0  # 0: LEARNING_RATE_PER_CLASS x the number of classes
    momentum: float = 0.0
    model: str = "hashed"
    finetune_layers: int = 1
    max_tokens: int = 128
    physical_batch_size: int = 0
    encoder_learning_rate: float = 0.5
    # False: owners leave the head's bias as the server's model holds it, the log of the
    # federation's published class priors (ServerSettings.class_priors), so every record's
    # clipped norm goes to the weights: +12 points of macro-F1 on R8, +6 on BBC, +4 on
    # TREC at epsilon 3 (docs/BENCHMARKS.md "Every class counts").
    train_bias: bool = False
    feat_n_buckets: int = 2**18
    feat_ngram_max: int = 1  # unigrams: +2.3 points on IMDB, +19 on short titles (BENCHMARKS)
    feat_out_dim: int = 4096
    feat_entries_per_bucket: int = 4
    feat_seed: int = 0

    def learning_rate_for(self, num_classes: int) -> float:
        """The client learning rate: as planned, or per class when the plan leaves it 0."""
        return self.learning_rate or LEARNING_RATE_PER_CLASS * num_classes

    def plan(self) -> Plan:
        """The plan alone: what a train message carries (a RunConfig holds more)."""
        keys = set(Plan.keys())
        return Plan.from_dict({k: v for k, v in self.as_dict().items() if k in keys})

    def validate(self) -> None:
        require(self.num_rounds >= 1, "num-rounds", self.num_rounds, "must be >= 1")
        require(
            0 <= self.target_epsilon <= 100,
            "target-epsilon",
            self.target_epsilon,
            "must be in [0, 100] (0: use noise-multiplier)",
        )
        require(
            self.noise_multiplier == 0 or 1e-3 <= self.noise_multiplier <= 1e6,
            "noise-multiplier",
            self.noise_multiplier,
            "must be 0 (derive it from target-epsilon) or in [0.001, 1e6]",
        )
        require(
            1e-3 <= self.max_grad_norm <= 1e4,
            "max-grad-norm",
            self.max_grad_norm,
            "must be in [0.001, 10000]",
        )
        require(
            re.fullmatch(r"[A-Za-z0-9_-]{0,64}", self.run_key) is not None,
            "run-key",
            self.run_key,
            "must be up to 64 letters, digits, '-' or '_'",
        )
        require(
            1 <= self.local_epochs <= 100,
            "local-epochs",
            self.local_epochs,
            "must be in [1, 100]",
        )
        if self.dp:
            require(
                self.target_epsilon > 0 or self.noise_multiplier > 0,
                "target-epsilon",
                self.target_epsilon,
                "with DP on, set target-epsilon > 0 or noise-multiplier > 0",
            )
        require(
            self.batch_size >= 0,
            "batch-size",
            self.batch_size,
            "must be >= 1, or 0 for full local batches",
        )
        require(
            0 <= self.learning_rate <= MAX_LEARNING_RATE,
            "learning-rate",
            self.learning_rate,
            f"must be in (0, {MAX_LEARNING_RATE:g}], or 0 for {LEARNING_RATE_PER_CLASS:g} x the "
            "number of classes",
        )
        require(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        self._validate_model()

    def _validate_model(self) -> None:
        require(
            1 <= self.feat_out_dim <= 16384,
            "feat-out-dim",
            self.feat_out_dim,
            "must be in [1, 16384]",
        )
        require(
            1 <= self.feat_n_buckets <= 2**22,
            "feat-n-buckets",
            self.feat_n_buckets,
            "must be in [1, 2^22]",
        )
        require(
            1 <= self.feat_ngram_max <= 3,
            "feat-ngram-max",
            self.feat_ngram_max,
            "must be 1, 2 or 3",
        )
        require(
            1 <= self.feat_entries_per_bucket <= 64,
            "feat-entries-per-bucket",
            self.feat_entries_per_bucket,
            "must be in [1, 64]",
        )
        # The projection's table has buckets x entries non-zeros, built at every owner
        # before its text is read: 2^22 x 64 took 13 GB for a near-free plan.
        require(
            self.feat_n_buckets * self.feat_entries_per_bucket <= MAX_PROJECTION_ENTRIES,
            "feat-n-buckets x feat-entries-per-bucket",
            self.feat_n_buckets * self.feat_entries_per_bucket,
            f"must be at most {MAX_PROJECTION_ENTRIES} (2^24; the default is 2^18 x 4)",
        )
        require(
            self.model in ("hashed", "minilm"),
            "model",
            self.model,
            "use 'hashed' (linear head on hashed n-grams) or 'minilm' (pretrained encoder)",
        )
        require(
            0 <= self.finetune_layers <= 6,
            "finetune-layers",
            self.finetune_layers,
            "MiniLM has 6 layers: 0 (frozen encoder, train the head) to 6",
        )
        require(
            8 <= self.max_tokens <= 512,
            "max-tokens",
            self.max_tokens,
            "must be in [8, 512] (MiniLM's position limit; 128-256 is typical)",
        )
        require(
            self.encoder_learning_rate >= 0,
            "encoder-learning-rate",
            self.encoder_learning_rate,
            "must be >= 0 (0 keeps the pretrained layers fixed)",
        )
        require(
            self.physical_batch_size >= 0,
            "physical-batch-size",
            self.physical_batch_size,
            "must be >= 1, or 0 to let the model choose",
        )
