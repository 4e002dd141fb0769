"""The round timeout fits the owners by default: a start-up allowance for the first round,
then a multiple of the slowest round seen; a plan's fixed value is used as is."""

from __future__ import annotations

import time

import pytest

from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError
from fedshield.server.round_timeout import (
    FACTOR,
    FLOOR_S,
    HASHED_START_S,
    MINILM_START_S,
    RoundTimeouts,
)
from tests.support.grid import OwnersAnsweringAfter, train_messages


def test_the_default_plan_learns_the_wait():
    assert RunConfig().round_timeout_s == 0
    with pytest.raises(ConfigError, match="round-timeout-s"):
        RunConfig.from_dict({"round-timeout-s": -1})


def test_first_round_gets_the_models_start_up_allowance_then_the_slowest_round_counts():
    hashed = RoundTimeouts.for_plan(0, "hashed")
    assert hashed.next_timeout_s() == HASHED_START_S
    hashed.observe(200.0, replied=True)  # round 1: encoding included
    assert hashed.next_timeout_s() == min(HASHED_START_S, FACTOR * 200.0)
    hashed.observe(3.0, replied=True)  # round 2: the steady state
    assert hashed.next_timeout_s() == FLOOR_S  # 5 x 3 s, but never below the floor
    hashed.observe(40.0, replied=True)
    assert hashed.next_timeout_s() == FACTOR * 40.0
    # A wait with no reply teaches nothing; the slowest reply seen counts, so a fast
    # reply cannot shrink the wait for slower owners.
    hashed.observe(99.0, replied=False)
    hashed.observe(1.0, replied=True)
    assert hashed.next_timeout_s() == FACTOR * 40.0
    assert RoundTimeouts.for_plan(0, "minilm").next_timeout_s() == MINILM_START_S


def test_a_fixed_timeout_is_used_as_is():
    fixed = RoundTimeouts.for_plan(90, "minilm")
    fixed.observe(1.0, replied=True)
    assert fixed.next_timeout_s() == 90
    assert "90 s" in fixed.describe()


def test_the_grid_waits_what_the_timeouts_say_and_learns_from_its_slowest_reply(
    flower_task_identity,
):
    from fedshield.server.poll import prompt_grid

    timeouts = RoundTimeouts(fixed_s=0, start_s=5.0)
    owners = OwnersAnsweringAfter([0.1, 0.3])
    grid = prompt_grid(owners, timeouts)  # type: ignore[arg-type]
    replies = list(grid.send_and_receive(train_messages(2), timeout=0))
    assert len(replies) == 2
    assert timeouts.used == [5.0]
    assert 0.3 <= timeouts.first_round_s < 1.0  # the slowest owner's reply, not the deadline
    # The next wait follows the first round; an owner slower than it is dropped.
    timeouts.start_s, owners.delays = 1.0, [0.1, 30.0]
    started = time.monotonic()
    replies = list(grid.send_and_receive(train_messages(2), timeout=0))
    assert len(replies) == 1 and time.monotonic() - started < 3
    assert timeouts.used[-1] == 1.0  # capped by the allowance (5 x 0.3 s floored at 120 s)
    assert timeouts.slowest_later_s < 1.0  # its slowest reply received: the fast owner
