"""Who this client is: its data, its ledger, its budget and its device.

A deployed SuperNode is configured by its data owner (``--node-config``: data-path,
epsilon-budget, delta, ledger-dir, ...); those settings are never taken from the
server. A simulated SuperNode (node config with ``partition-id``) is one partition of
the run's data set, with the run's budget and ledger directory: in simulation the
operator plays every owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from fedshield.client.ledger import PrivacyLedger
from fedshield.common.config import OwnerConfig, RunConfig
from fedshield.common.data import TextDataset, load_dataset
from fedshield.common.errors import ConfigError
from fedshield.common.federation import simulated_owner_data
from fedshield.common.model import ModelInputs, ModelSpec, resolve_device
from fedshield.common.privacy import check_delta

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


@dataclass(frozen=True)
class Owner:
    owner_id: str
    dataset: TextDataset
    ledger: PrivacyLedger
    epsilon_budget: float
    delta: float
    device: torch.device
    audit_dir: Path


def resolve_owner(
    node_config: dict, run_config: RunConfig, classes: tuple[str, ...] | None
) -> Owner:
    if PARTITION_ID in node_config and "data-path" not in node_config:
        pid, num = int(node_config[PARTITION_ID]), int(node_config[NUM_PARTITIONS])
        dataset = simulated_owner_data(run_config, pid, num)
        budget = run_config.epsilon_budget or run_config.target_epsilon
        if budget <= 0:
            raise ConfigError(
                "simulated owners need a budget: set epsilon-budget (or target-epsilon) > 0"
            )
        base = Path(run_config.out_dir or "~/.fedshield/simulation").expanduser()
        ledger_dir = (
            Path(run_config.ledger_dir).expanduser() if run_config.ledger_dir else base / "ledgers"
        )
        audit_root = (
            Path(run_config.audit_dir).expanduser() if run_config.audit_dir else base / "audit"
        )
        owner = Owner(
            owner_id=f"client-{pid}",
            dataset=dataset,
            ledger=PrivacyLedger(ledger_dir, dataset.fingerprint, len(dataset)),
            epsilon_budget=budget,
            delta=run_config.delta,
            device=resolve_device(run_config.device),
            audit_dir=audit_root / f"client-{pid}",
        )
    else:
        config = OwnerConfig.from_dict(dict(node_config))
        dataset = load_dataset(config.data_path, config.text_column, config.label_column, classes)
        owner = Owner(
            owner_id=config.owner_id or f"owner-{dataset.fingerprint[:8]}",
            dataset=dataset,
            ledger=PrivacyLedger(config.ledger_dir, dataset.fingerprint, len(dataset)),
            epsilon_budget=config.epsilon_budget,
            delta=config.delta,
            device=resolve_device(config.device),
            audit_dir=Path(config.audit_dir).expanduser(),
        )
    check_delta(owner.delta, len(owner.dataset))
    return owner


_INPUT_CACHE: dict[tuple[str, ModelSpec], ModelInputs] = {}


def owner_inputs(owner: Owner, spec: ModelSpec) -> ModelInputs:
    """The owner's records through the model's frozen encoding, cached per process.

    A simulation actor and a warm executor live on across rounds, so the encoding (for
    MiniLM, the costly part) runs once per owner and model, on the owner's device.
    """
    key = (owner.dataset.fingerprint, spec)
    if key not in _INPUT_CACHE:
        if len(_INPUT_CACHE) >= 16:
            _INPUT_CACHE.pop(next(iter(_INPUT_CACHE)))
        _INPUT_CACHE[key] = spec.encode(owner.dataset.texts, owner.device)
    return _INPUT_CACHE[key]
