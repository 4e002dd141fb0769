"""What the server-side strategy tests hand the strategy: small model arrays, the global
model of round 1 and a stub of Flower's grid."""

from __future__ import annotations

import uuid

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.proto.node_pb2 import NodeInfo

DIM = 8


def arrays(weight: np.ndarray, bias: np.ndarray | None = None) -> ArrayRecord:
    state = {
        "weight": torch.from_numpy(weight.astype(np.float32)),
        "bias": torch.from_numpy((bias if bias is not None else np.zeros(2)).astype(np.float32)),
    }
    return ArrayRecord(state)


GLOBAL = arrays(np.zeros((2, DIM)))


class StubGrid:
    """What the strategy asks of Flower's grid: node ids and, deployed, their public keys;
    ``push`` gives each task an id as Flower's grids do when they send it."""

    def __init__(self, node_ids, keys: dict[int, bytes] | None = None) -> None:
        self.node_ids = list(node_ids)
        self.keys = keys or {}

    def get_node_ids(self):
        return list(self.node_ids)

    def get_nodes(self):
        return [NodeInfo(node_id=n, public_key=self.keys.get(n, b"")) for n in self.node_ids]

    def push(self, messages):
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        return {m.metadata.dst_node_id: m for m in messages}
