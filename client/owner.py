"""Who this client is: its data, its ledger, its budget and its device.

A deployed SuperNode is configured by its data owner (``--node-config``: data-path,
epsilon-budget, delta, ledger-dir, ...); those settings are never taken from the
server. A simulated SuperNode (node config with ``partition-id``) is one partition of
the run's data set, with the run's budget and ledger directory: in simulation the
operator plays every owner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fedshield.client.integrity import rejection_recorder
from fedshield.client.ledger import OwnerLimits, PrivacyLedger
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import OwnerConfig, RunConfig, split_class_names
from fedshield.common.data import TextDataset, load_dataset
from fedshield.common.desensitise import Desensitiser, desensitiser_for
from fedshield.common.desensitised_data import desensitised
from fedshield.common.errors import ConfigError, PolicyRefusal
from fedshield.common.model import resolve_device
from fedshield.common.owner_keys import OwnerKeys, open_owner_keys
from fedshield.common.privacy import ADD_REMOVE, PER_RECORD, REPLACE_ONE
from fedshield.common.sealed import (
    DESENSITISED_TEXT,
)
from fedshield.common.simulation_split import simulated_owner_data

NO_DP = "none"
RECORD = PER_RECORD  # the privacy unit of an owner without a privacy-unit column  # a non-private round the owner opted in to: no definition holds

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


@dataclass(frozen=True)
class Owner:
    """One data owner as its ClientApp sees it: data, ledger and the owner's own policy.

    The policy fields come from the owner (node config, or ``fedshield simulate`` playing
    its simulated owners); nothing in a server's plan can set them.
    """

    owner_id: str
    dataset: TextDataset
    ledger: PrivacyLedger  # opened with the owner's limits: budget, delta, cap per run
    device: torch.device
    audit_dir: Path
    cache_dir: Path | None = None
    keys: OwnerKeys | None = None  # the owner's at-rest key seals its caches and releases
    # The owner's desensitisation policy, ready to run (None: the owner turned it off).
    desensitiser: Desensitiser | None = None
    allow_no_dp: bool = False
    allow_evaluate: bool = False
    evaluate_noise_multiplier: float = 10.0
    count_noise: float = 20.0  # std of the record count's DP release (client/count.py)
    public_record_count: bool = False
    # The privacy unit (common/config.py OwnerPrivacy): the records each unit trains on at
    # most per round, and whether DP stays per record on data with a unit column.
    max_records_per_unit: int = 64
    record_level: bool = False

    @property
    def protected_unit(self) -> str:
        """What one DP contribution is: "record", or the privacy-unit column's name."""
        if self.dataset.units is None or self.record_level:
            return RECORD
        return self.dataset.unit_name

    @property
    def training_units(self):
        """Each record's unit code for unit-level DP-SGD; None: DP per record."""
        return None if self.protected_unit == RECORD else self.dataset.units

    @property
    def protected_count(self) -> int:
        """The exact number of protected units (records, or units): never leaves."""
        return len(self.dataset) if self.protected_unit == RECORD else self.dataset.unit_count

    @property
    def epsilon_budget(self) -> float:
        return self.ledger.limits.epsilon_budget

    @property
    def delta(self) -> float:
        return self.ledger.limits.delta

    def relation(self, dp: bool) -> str:
        """The neighbouring relation this owner's releases satisfy ("none" without DP)."""
        if not dp:
            return NO_DP
        return REPLACE_ONE if self.public_record_count else ADD_REMOVE


# Set by ``fedshield simulate`` (and inherited by its Ray actors): only in such a process
# is a node config without ``data-path`` a simulated owner whose policy is the operator's
# run config. Flower's docs also show ``partition-id`` node configs for deployed
# SuperNodes; there the server's run config must never become the owner's policy.
SIMULATED_OWNERS_ENV = "FEDSHIELD_SIMULATED_OWNERS"


def mark_simulated_owners() -> None:
    """This process (and what it starts) plays simulated owners: ``fedshield simulate``."""
    os.environ[SIMULATED_OWNERS_ENV] = "1"


def is_simulated(node_config: dict) -> bool:
    """A simulated owner (a partition of the operator's data), not a deployed one."""
    return (
        PARTITION_ID in node_config
        and "data-path" not in node_config
        and os.environ.get(SIMULATED_OWNERS_ENV) == "1"
    )


def owner_label(node_config: dict) -> str:
    """The owner's public label and audit folder, read without touching its data."""
    if is_simulated(node_config):
        return f"client-{int(node_config[PARTITION_ID])}"
    return str(node_config.get("owner-id") or "owner")


def owner_allows_evaluate(node_config: dict, run_config: RunConfig) -> bool:
    """The owner's consent to evaluate requests, read from its settings alone."""
    if is_simulated(node_config):
        return run_config.fraction_evaluate > 0
    return OwnerConfig.from_dict(dict(node_config)).allow_evaluate


def accepted_classes(config: OwnerConfig, classes: tuple[str, ...] | None) -> tuple[str, ...]:
    """The class list this owner trains on, settled on its settings, never on its data.

    An owner's declared list (``client start`` fills in the federation's published list
    when the owner gave none) must equal the plan's, else the round is refused: decided
    on config alone, so the answer tells the server nothing about the records. An owner
    with no list at all (a hand-configured SuperNode) takes the plan's; rows with other
    labels are left out, never refused (``load_dataset(usable_rows_only=True)``).
    """
    accepted = split_class_names(config.classes)
    if accepted is not None and classes is not None and tuple(classes) != accepted:
        raise PolicyRefusal(
            f"the plan's classes {list(classes)} differ from the classes this owner accepts "
            f"{list(accepted)} (--classes, or the federation's list at client start)"
        )
    chosen = accepted or classes
    if chosen is None:
        raise PolicyRefusal("neither the owner nor the plan names the class list")
    return tuple(chosen)


def resolve_owner(
    node_config: dict, run_config: RunConfig, classes: tuple[str, ...] | None
) -> Owner:
    if is_simulated(node_config):
        pid, num = int(node_config[PARTITION_ID]), int(node_config[NUM_PARTITIONS])
        dataset = simulated_owner_data(run_config, pid, num)  # units: run config's column
        budget = run_config.epsilon_budget or run_config.target_epsilon
        if budget <= 0:
            raise ConfigError(
                "simulated owners need a budget: set epsilon-budget (or target-epsilon) > 0"
            )
        base = Path(run_config.out_dir or "~/.fedshield/simulation").expanduser()
        ledger_root = (
            Path(run_config.ledger_dir).expanduser() if run_config.ledger_dir else base / "ledgers"
        )
        audit_root = (
            Path(run_config.audit_dir).expanduser() if run_config.audit_dir else base / "audit"
        )
        # In simulation the operator plays every owner: its own settings are the owners'
        # policy (--no-dp opts them in to non-private rounds; fraction-evaluate > 0 to
        # evaluation). The run config here is the local process's, not the plan message.
        owner = Owner(
            owner_id=f"client-{pid}",
            dataset=dataset,
            ledger=PrivacyLedger(
                ledger_root / f"client-{pid}", OwnerLimits(budget, run_config.delta)
            ),
            device=resolve_device(run_config.device),
            audit_dir=audit_root / f"client-{pid}",
            cache_dir=base / "cache",
            keys=open_owner_keys(base / "keys"),
            allow_no_dp=not run_config.dp,
            allow_evaluate=run_config.fraction_evaluate > 0,
            count_noise=run_config.count_noise,
            public_record_count=run_config.public_record_count,
            max_records_per_unit=run_config.max_records_per_unit,
            record_level=run_config.record_level,
        )
    else:
        config = OwnerConfig.from_dict(dict(node_config))
        dataset = load_dataset(
            config.data_path,
            config.text_column,
            config.label_column,
            accepted_classes(config, classes),
            usable_rows_only=True,
            unit_column=config.privacy_unit,
        )
        owner = Owner(
            owner_id=config.owner_id or "owner",
            dataset=dataset,
            ledger=PrivacyLedger(
                config.ledger_dir,
                OwnerLimits(config.epsilon_budget, config.delta, config.run_epsilon_cap),
            ),
            device=resolve_device(config.device),
            audit_dir=Path(config.audit_dir).expanduser(),
            cache_dir=Path(config.cache_dir).expanduser() if config.cache_dir else None,
            keys=open_owner_keys(Path(config.key_dir).expanduser()),
            allow_no_dp=config.allow_no_dp,
            allow_evaluate=config.allow_evaluate,
            evaluate_noise_multiplier=config.evaluate_noise_multiplier,
            count_noise=config.count_noise,
            public_record_count=config.public_record_count,
            max_records_per_unit=config.max_records_per_unit,
            record_level=config.record_level,
        )
    # No check of delta against N here: it would refuse on the exact count. The round
    # checks it against the released count (client/app.py), the owner's start against N.
    settings = run_config if is_simulated(node_config) else config
    keys = owner.keys
    desensitiser = desensitiser_for(
        settings.desensitise, settings.desensitise_policy, keys.pseudonym if keys else None
    )
    return replace(owner, desensitiser=desensitiser)


def with_desensitised_text(owner: Owner) -> tuple[Owner, dict[str, int]]:
    """The owner with its texts through its desensitisation policy, and the counts per
    entity type of what was replaced: computed once per data version and policy, kept
    sealed in the owner's cache folder. Called after a round's pre-flight, so that a
    refused round costs the same whatever the text holds, and before anything reads the
    text (``owner_inputs`` refuses text that skipped it)."""
    if owner.desensitiser is None or owner.dataset.desensitised:
        return owner, {}
    dataset, counts = desensitised(
        owner.dataset,
        owner.desensitiser,
        owner.keys,
        owner.cache_dir,
        rejection_recorder(owner.audit_dir, owner.owner_id, DESENSITISED_TEXT),
    )
    return replace(owner, dataset=dataset), dict(sorted(counts.items()))


def desensitised_for_round(owner: Owner, audit: AuditLog, server_round: int) -> Owner:
    """``with_desensitised_text`` in a round, its counts in the owner's own audit log."""
    if owner.desensitiser is None:
        return owner
    owner, counts = with_desensitised_text(owner)
    audit.append(
        Event.TEXT_DESENSITISED,
        **{
            Field.SERVER_ROUND: server_round,
            Field.POLICY_DIGEST: owner.desensitiser.digest,
            Field.IDENTIFIERS_REPLACED: counts,
        },
    )
    return owner


def desensitisation_policy(owner: Owner) -> dict | None:
    """The policy in force, as the owner's audit log records it (None: turned off).
    Builds the recognizers (a fixed cost), never reads the text."""
    return {"policy": owner.desensitiser.describe()} if owner.desensitiser else None


def owner_audit_dir(node_config: dict, run_config: RunConfig) -> Path | None:
    """Where this owner's audit log lives, known without loading its data (None: unknown)."""
    if is_simulated(node_config):
        base = Path(run_config.out_dir or "~/.fedshield/simulation").expanduser()
        root = Path(run_config.audit_dir).expanduser() if run_config.audit_dir else base / "audit"
        return root / owner_label(node_config)
    audit_dir = node_config.get("audit-dir")
    return Path(str(audit_dir)).expanduser() if audit_dir else None
