"""Server checkpoints: what a crashed run needs to continue where it stopped.

Written atomically (temp file, fsync, rename) after every round, once the round is
evaluated and recorded: the global model, the round number, the strategy's momentum,
the per-owner epsilon reported so far, the round history, the run key the owners use to
recognise a re-sent round, the configuration, and Python's random state (Flower samples
nodes with it). ``--resume`` continues from it to the same number of rounds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedshield.common.durable import write_atomic
from fedshield.common.errors import FedshieldError

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class ServerCheckpoint:
    server_round: int
    arrays: ArrayRecord
    momentum: list[np.ndarray] | None
    epsilon_so_far: dict[str, float]
    history: list[dict]
    run_key: str
    config: dict
    random_state: tuple

    def save(self, out_dir: Path) -> None:
        state = {
            "server_round": self.server_round,
            "arrays": self.arrays.to_torch_state_dict(),
            "momentum": [torch.from_numpy(np.asarray(m)) for m in self.momentum]
            if self.momentum
            else None,
            "epsilon_so_far": self.epsilon_so_far,
            "history": self.history,
            "run_key": self.run_key,
            "config": self.config,
            "random_state": self.random_state,
        }
        path = out_dir / CHECKPOINT_FILE
        write_atomic(path, lambda handle: torch.save(state, handle))

    @classmethod
    def load(cls, out_dir: Path) -> ServerCheckpoint:
        path = out_dir / CHECKPOINT_FILE
        if not path.is_file():
            raise FedshieldError(
                f"{path}: no checkpoint to resume from; start the run without --resume"
            )
        state = torch.load(path, weights_only=True)
        return cls(
            server_round=int(state["server_round"]),
            arrays=ArrayRecord(state["arrays"]),
            momentum=[m.numpy() for m in state["momentum"]]
            if state["momentum"] is not None
            else None,
            epsilon_so_far=dict(state["epsilon_so_far"]),
            history=list(state["history"]),
            run_key=str(state["run_key"]),
            config=dict(state["config"]),
            random_state=state["random_state"],
        )

    def restore_random_state(self) -> None:
        random.setstate(self.random_state)
