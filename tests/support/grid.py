"""The environment of a ServerApp without Flower's processes: a Grid whose owners answer
after set delays, and the train messages a round sends them."""

from __future__ import annotations

import time


class OwnersAnsweringAfter:
    """A Grid whose owner i (the i-th message pushed) answers after delays[i] s: pulled
    before that, its reply is not there yet."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.pushed: list = []
        self.pushed_at = 0.0

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        self.pushed = list(messages)
        return [m.metadata.message_id for m in self.pushed]

    def pull_messages(self, message_ids):
        from flwr.app import Message, RecordDict

        waited = time.monotonic() - self.pushed_at
        return [
            Message(RecordDict(), reply_to=m)
            for m, delay in zip(self.pushed, self.delays, strict=True)
            if m.metadata.message_id in set(message_ids) and waited >= delay
        ]


def train_messages(count: int, id_prefix: str = "t"):
    """``count`` train messages to nodes 1..count, with message ids id_prefix + 0, 1, ..."""
    from flwr.app import Message, RecordDict

    out = []
    for i in range(count):
        message = Message(RecordDict(), dst_node_id=i + 1, message_type="train")
        message.metadata.__dict__["_message_id"] = f"{id_prefix}{i}"
        out.append(message)
    return out
