"""Settings by whose they are: the plan, the server's own, the simulation's, an owner's.

Guarantee: a configuration that reaches the apps has only known keys, each of the
declared type and inside its range; anything else is refused with the key, the value
and the fix (``common/kebab_config.py``). Each key is declared once, in the group that
owns it:

- ``Plan`` (``common/plan.py``): what crosses the wire to every owner in a train message;
- ``ServerSettings``: the operator's own settings, never sent (evaluation data,
  aggregation, sampling, waits, output folders);
- ``SimulationSettings``: what only ``fedshield simulate`` uses (the data it splits into
  simulated owners, and those owners' privacy settings, since the operator plays them);
- ``OwnerConfig``: a deployed owner's node config, never taken from the server.

``OwnerPrivacy`` (budget, delta, the count's noise, public count, privacy unit) is declared once and
shared by ``OwnerConfig`` and ``SimulationSettings``. ``RunConfig`` is the operator's
whole run config, flat as Flower's ``--run-config`` is: the plan, the server's settings
and the simulation's; ``RunConfig.plan()`` is the part that leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedshield.common.kebab_config import KebabConfig, require
from fedshield.common.plan import Plan
from fedshield.common.untrusted import OWNER_LABEL


@dataclass(frozen=True)
class OwnerPrivacy(KebabConfig):
    """An owner's privacy settings: a deployed owner's own, or a simulated owner's as the
    operator sets them."""

    epsilon_budget: float = 0.0
    delta: float = 1e-5
    # The record count leaves only as a DP release with noise of this std (records),
    # charged once per data version (client/count.py); or, declared public, as itself,
    # with training accounted under replace-one adjacency.
    count_noise: float = 20.0
    public_record_count: bool = False
    # Desensitisation before anything reads the text (common/desensitise.py): on unless
    # the owner turns it off; the policy file names entity types and an operator per
    # type ("" = the default policy: every pattern type replaced by its type tag).
    desensitise: bool = True
    desensitise_policy: str = ""
    # The privacy unit (issue 25, docs/design/privacy-unit.md): the column naming whose
    # each record is (a patient, a customer); units are sampled, each unit's records'
    # gradients summed and clipped as one, and the count, the ledger and epsilon are per
    # unit. "" = every record is its own unit. ``record-level`` keeps record-level DP on
    # such data (the column then only sizes the group-privacy warning).
    privacy_unit: str = ""
    max_records_per_unit: int = 64
    record_level: bool = False

    def validate(self) -> None:
        require(0 < self.delta < 1, "delta", self.delta, "must be in (0, 1), well below 1/N")
        require(
            1 <= self.max_records_per_unit <= 10_000,
            "max-records-per-unit",
            self.max_records_per_unit,
            "must be in [1, 10000] (the most records of one unit a round trains on; 64 is "
            "the default)",
        )
        require(
            not (self.public_record_count and self.privacy_unit and not self.record_level),
            "public-record-count",
            self.public_record_count,
            "with privacy-unit the count that would leave as is is the number of units "
            "(people), not of records; drop public-record-count (the count of units then "
            "leaves as a DP release) or privacy-unit",
        )
        require(
            not self.record_level or bool(self.privacy_unit),
            "record-level",
            self.record_level,
            "needs privacy-unit (the column whose group-privacy figure it warns about)",
        )
        require(
            1.0 <= self.count_noise <= 1e6,
            "count-noise",
            self.count_noise,
            "must be in [1, 1e6] records (the record count's DP noise; 20 is the default)",
        )


@dataclass(frozen=True)
class ServerSettings(KebabConfig):
    """The operator's own settings: read by the ServerApp, never sent to an owner."""

    # The server's evaluation file, used whole (deployment: required; simulation: "" =
    # a held-out test-fraction of ``data``). Its labels must be among ``classes``.
    eval_data: str = ""
    text_column: str = "text"
    label_column: str = "label"
    classes: str = ""
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
    audit_dir: str = ""
    transport: str = ""
    resume: bool = False
    # A finished run's folder (model.pt + model.json) whose global model this run starts
    # from: public, so no privacy cost; "" = an untrained model.
    continue_from: str = ""
    device: str = "auto"  # the server's evaluation; in simulation, the owners' too
    # The head's starting bias is the log of these priors (server/class_priors.py):
    # "eval" = the evaluation data's class shares, "uniform", or shares in class order.
    class_priors: str = "eval"
    # The head's starting weights (server/class_descriptions.py): "" = zero; "names" =
    # each class described by its name; or the operator's JSON file {class: phrase}.
    # Each class's row is class-description-scale x its description's unit-norm
    # features: a zero-shot head that owners refine under DP.
    class_descriptions: str = ""
    class_description_scale: float = 30.0

    def class_names(self) -> tuple[str, ...] | None:
        return split_class_names(self.classes)

    def validate(self) -> None:
        require(
            self.server_learning_rate > 0,
            "server-learning-rate",
            self.server_learning_rate,
            "must be > 0",
        )
        require(
            0 <= self.server_momentum < 1,
            "server-momentum",
            self.server_momentum,
            "must be in [0, 1)",
        )
        require(
            0 < self.fraction_train <= 1, "fraction-train", self.fraction_train, "must be in (0, 1]"
        )
        require(self.min_train_nodes >= 1, "min-train-nodes", self.min_train_nodes, "must be >= 1")
        require(
            0 <= self.fraction_evaluate <= 1,
            "fraction-evaluate",
            self.fraction_evaluate,
            "must be in [0, 1]",
        )
        require(
            self.round_timeout_s >= 0,
            "round-timeout-s",
            self.round_timeout_s,
            "must be > 0 seconds, or 0 to fit the wait to the owners' replies",
        )
        require(
            not (self.resume and self.continue_from),
            "continue-from",
            self.continue_from,
            "a resumed run continues its own checkpoint; drop continue-from or --resume",
        )
        validate_device(self.device, "device")
        class_prior_shares(self.class_priors, self.class_names())
        require(
            0 < self.class_description_scale <= 1000,
            "class-description-scale",
            self.class_description_scale,
            "must be in (0, 1000] (the zero-shot head's logit per unit of cosine; 30 is "
            "the default)",
        )
        require(
            not (self.continue_from and self.class_descriptions),
            "class-descriptions",
            self.class_descriptions,
            "a continued run starts from its parent model's head; drop class-descriptions "
            "or continue-from",
        )


@dataclass(frozen=True)
class SimulationSettings(OwnerPrivacy):
    """What only ``fedshield simulate`` reads: the data it splits among simulated owners
    and their privacy settings (``OwnerPrivacy``: the operator plays every owner). A
    deployed owner reads none of these; its own are its node config."""

    data: str = "imdb"
    partition: str = "dirichlet"
    alpha: float = 0.5
    test_fraction: float = 0.2
    max_records: int = 0
    num_clients: int = 0
    ledger_dir: str = ""
    # The empirical audit's included canaries (audit/canaries.py), added to the simulated
    # owners' data.
    audit_canaries: str = ""
    # An existing Ray cluster to run the simulated owners on (its GCS address, host:port,
    # or "auto"); "" = Ray's RAY_ADDRESS when set, else a Ray started for this run alone.
    ray_address: str = ""

    def validate(self) -> None:
        OwnerPrivacy.validate(self)
        require(
            self.partition in ("iid", "dirichlet"),
            "partition",
            self.partition,
            "use 'iid' or 'dirichlet'",
        )
        require(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        require(
            0 < self.test_fraction < 1, "test-fraction", self.test_fraction, "must be in (0, 1)"
        )
        require(self.max_records >= 0, "max-records", self.max_records, "must be >= 0 (0 = all)")


@dataclass(frozen=True)
class RunConfig(SimulationSettings, ServerSettings, Plan):
    """The operator's run config, flat as Flower's: the plan, the server's settings and
    the simulation's. Only ``plan()`` crosses the wire."""

    def validate(self) -> None:
        Plan.validate(self)
        ServerSettings.validate(self)
        SimulationSettings.validate(self)


# The most skewed published prior: a share below this would put a class's bias so low
# that no amount of training could bring it back (log(1e-6) = -13.8).
MIN_PRIOR_SHARE = 1e-6


def class_prior_shares(text: str, classes: tuple[str, ...] | None) -> tuple[float, ...] | None:
    """``class-priors`` read: None for ``eval`` or ``uniform``; else its shares, normalised,
    one per class of ``classes`` (when known), none below ``MIN_PRIOR_SHARE``."""
    if text in ("eval", "uniform"):
        return None
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError:
        shares = ()
    total = sum(shares) if shares and all(math.isfinite(s) for s in shares) else 0.0
    require(
        total > 0 and all(s / total >= MIN_PRIOR_SHARE for s in shares),
        "class-priors",
        text,
        "use 'eval' (the evaluation data's class shares), 'uniform', or one positive "
        f"share per class, comma-separated in the class order (each at least "
        f"{MIN_PRIOR_SHARE:g} of the total)",
    )
    require(
        classes is None or len(shares) == len(classes),
        "class-priors",
        text,
        f"give {len(classes or ())} shares, one per class ({', '.join(classes or ())}), in that order",
    )
    return tuple(s / total for s in shares)


def split_class_names(text: str) -> tuple[str, ...] | None:
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    return names or None


@dataclass(frozen=True)
class OwnerConfig(OwnerPrivacy):
    """A data owner's own settings (a deployed SuperNode's ``--node-config``)."""

    data_path: str = ""
    text_column: str = "text"
    label_column: str = "label"
    ledger_dir: str = "~/.fedshield/ledgers"
    audit_dir: str = "~/.fedshield/audit"
    cache_dir: str = "~/.fedshield/cache"  # encoded records (minilm); "" = keep none on disk
    # The owner's keys (common/owner_keys.py): encryption at rest of everything derived
    # from its text, and the pseudonym key of the desensitisation policy. Created on
    # first start, 0600 in a 0700 folder.
    key_dir: str = "~/.fedshield/keys"
    owner_id: str = ""
    device: str = "auto"
    transport: str = ""
    # The owner's policy: what a plan may ask of this owner (never taken from the server).
    allow_no_dp: bool = False  # accept non-private rounds (plan dp=false); off: refused
    allow_evaluate: bool = False  # answer evaluate requests, with a DP answer charged
    evaluate_noise_multiplier: float = 10.0  # noise / sensitivity of a DP evaluate answer
    run_epsilon_cap: float = 0.0  # most epsilon one run may spend; 0: the whole budget
    classes: str = ""  # the class list this owner accepts (comma-separated); "" = any

    def validate(self) -> None:
        OwnerPrivacy.validate(self)
        require(
            not self.owner_id or OWNER_LABEL.fullmatch(self.owner_id) is not None,
            "owner-id",
            self.owner_id,
            "use 1-64 letters, digits, spaces and ._@:+/- (it is shown to the operator)",
        )
        require(bool(self.data_path), "data-path", self.data_path, "set the owner's data file")
        require(
            self.evaluate_noise_multiplier >= 0.5,
            "evaluate-noise-multiplier",
            self.evaluate_noise_multiplier,
            "must be >= 0.5 (a DP evaluate answer needs real noise; 10 is the default)",
        )
        require(
            self.run_epsilon_cap >= 0,
            "run-epsilon-cap",
            self.run_epsilon_cap,
            "must be >= 0 (0: one run may spend the whole budget)",
        )
        require(
            self.epsilon_budget > 0,
            "epsilon-budget",
            self.epsilon_budget,
            "set the owner's privacy budget, e.g. epsilon-budget=3",
        )
        validate_device(self.device, "device")


def validate_device(device: str, key: str) -> None:
    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    require(ok, key, device, "use auto, cpu, cuda or cuda:N")
