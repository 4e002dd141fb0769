"""A Grid that waits for the owners' replies in short steps.

Flower 1.42's deployed ServerApp talks to the SuperLink through ``HttpGrid``, whose
``send_and_receive`` (the call every strategy round makes, train and evaluate) sleeps a
hard-coded 3 s between pulls of the replies (``flwr/superlink/grid/http_grid.py``); the
in-process grid of the simulation pulls every 0.1 s (``InMemoryGrid.pull_interval``).
``PromptGrid`` wraps whichever grid Flower hands the ServerApp and reimplements
``send_and_receive`` on the Grid's public ``push_messages``/``pull_messages``, pulling
every ``interval_s``; everything else goes to the wrapped grid unchanged. No flwr
internals are touched.

The pulls go to the SuperLink's Runtime API on loopback from the one ServerApp process:
0.1 s (the simulation's own interval) is ten small requests a second during a round,
whatever the number of owners. Setting: ``FEDSHIELD_GRID_POLL_S`` (seconds, 0.01-10),
read in the ServerApp's process, which inherits the environment of
``fedshield server start``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import TYPE_CHECKING

from flwr.app import Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedshield.common.errors import ConfigError, DependencyMismatch
from fedshield.common.flower_compat import describe_object_pulls, shorten_object_pull_retries
from fedshield.server.round_timeout import RoundTimeouts

if TYPE_CHECKING:
    from fedshield.common.flower_compat import Run

DEFAULT_GRID_POLL_S = 0.1
GRID_POLL_ENV = "FEDSHIELD_GRID_POLL_S"


def grid_poll_interval() -> float:
    """``FEDSHIELD_GRID_POLL_S`` if set (checked), else the default."""
    text = os.environ.get(GRID_POLL_ENV, "").strip()
    if not text:
        return DEFAULT_GRID_POLL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.01 <= value <= 10:
        raise ConfigError(
            f"{GRID_POLL_ENV}={text}: give the seconds between reply pulls, 0.01 to 10 "
            f"(default {DEFAULT_GRID_POLL_S}), or unset it"
        )
    return value


class PromptGrid(Grid):
    """``grid`` with ``send_and_receive`` pulling replies every ``interval_s``."""

    def __init__(
        self,
        grid: Grid,
        interval_s: float | None = None,
        timeouts: RoundTimeouts | None = None,
    ) -> None:
        self.inner = grid
        self.timeouts = timeouts
        self.interval_s = grid_poll_interval() if interval_s is None else interval_s
        if not self.interval_s > 0:
            raise ConfigError(f"reply poll interval {self.interval_s} s: must be > 0")
        log(INFO, "fedshield: replies pulled every %g s (%s)", self.interval_s, GRID_POLL_ENV)
        try:  # a reply pulled while its objects are still being pushed waited 1 s+ a round
            shorten_object_pull_retries()
            log(INFO, "fedshield: object pull retries %s", describe_object_pulls())
        except DependencyMismatch as exc:
            log(WARNING, "fedshield: %s", exc)

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """As Flower's: push, then pull until every reply is in or the wait passes (the
        strategy's ``timeout``, or the one ``timeouts`` learns from earlier rounds)."""
        messages = list(messages)
        if not messages:  # nothing asked (evaluation off): no wait used, nothing learnt
            return []
        # Only training teaches the wait: an evaluate answer takes far less than a round.
        learns = messages[0].metadata.message_type.startswith("train")
        if self.timeouts is not None:
            timeout = self.timeouts.next_timeout_s()
        started = time.monotonic()
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else started + timeout
        replies: list[Message] = []
        last_reply = started
        while pending:
            received = list(self.pull_messages(pending))
            if received:
                last_reply = time.monotonic()
            replies.extend(received)
            pending.difference_update(m.metadata.reply_to_message_id for m in received)
            if not pending:
                break
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(self.interval_s, left))
            else:
                time.sleep(self.interval_s)
        if self.timeouts is not None and learns:
            self.timeouts.observe(last_reply - started, replied=bool(replies))
        return replies

    def __getattr__(self, name: str):
        # Anything else a grid offers (close(), node, ...) is the wrapped grid's.
        return getattr(self.inner, name)


def prompt_grid(grid: Grid, timeouts: RoundTimeouts | None = None) -> PromptGrid:
    """The grid to hand the strategy (``grid`` itself if it already is a PromptGrid),
    waiting for replies as ``timeouts`` says when given."""
    if not isinstance(grid, PromptGrid):
        return PromptGrid(grid, timeouts=timeouts)
    if timeouts is not None:
        grid.timeouts = timeouts
    return grid
