"""Epsilon by the accountant of record (PLD), checked against independent computations:
the exact closed form for full-batch rounds, Opacus's PRV interval otherwise, and RDP
as the looser cross-check."""

from __future__ import annotations

import math
import time

import pytest

# The auditor's computations (closed form, Opacus PRV, dp-accounting RDP).
from fedshield.audit.epsilon import epsilon_interval, rdp_epsilon
from fedshield.common.dp_event import DpEvent
from fedshield.common.errors import ConfigError
from fedshield.common.privacy import (
    check_delta,
    epsilon_gaussian_exact,
    epsilon_rdp,
    epsilon_spent,
    noise_for_target_epsilon,
)

DELTA = 1e-5


def test_the_closed_form_matches_a_hand_computation():
    """One Gaussian round at sigma 1 is 1-GDP; at eps 1 its delta is, by hand,
    Phi(-1/2) - e * Phi(-3/2) = 0.308538 - 2.718282 * 0.066807 = 0.126936."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    by_hand = phi(-0.5) - math.e * phi(-1.5)
    assert by_hand == pytest.approx(0.126936, abs=1e-6)
    assert epsilon_gaussian_exact([DpEvent(1.0, 1.0, 1)], by_hand) == pytest.approx(1.0, abs=1e-7)
    # k rounds at sigma compose to one round at sigma / sqrt(k)
    assert epsilon_gaussian_exact([DpEvent(9.453, 1.0, 1)] * 40, DELTA) == pytest.approx(
        epsilon_gaussian_exact([DpEvent(9.453 / math.sqrt(40), 1.0, 1)], DELTA), rel=1e-9
    )


@pytest.mark.parametrize(
    "sigma,rounds", [(9.453, 40), (8.8, 40), (1.2, 4), (1.6, 10), (30.0, 400), (0.7, 1)]
)
def test_full_batch_epsilon_is_within_1_percent_of_the_exact_figure_and_never_below(sigma, rounds):
    events = [DpEvent(sigma, 1.0, 1)] * rounds
    exact = epsilon_gaussian_exact(events, DELTA)
    ours = epsilon_spent(events, DELTA)
    assert exact <= ours <= exact * 1.01
    assert epsilon_interval(events, DELTA) == (exact, exact)


def test_the_demo_rounds_cost_2_764_not_rdps_2_997():
    """The issue's figures: 40 full-batch rounds at sigma 9.453 are exactly 2.764 at 1e-5;
    RDP says 2.997."""
    events = [DpEvent(9.453, 1.0, 1)] * 40
    assert epsilon_gaussian_exact(events, DELTA) == pytest.approx(2.7645, abs=5e-4)
    assert epsilon_rdp(events, DELTA) == pytest.approx(2.9968, abs=5e-4)


@pytest.mark.parametrize(
    "events",
    [
        [DpEvent(1.0, 0.05, 200)],
        [DpEvent(2.66, 0.25, 40)],
        [DpEvent(1.2, 0.064, 16)] * 10,
        [DpEvent(0.9, 0.1, 10), DpEvent(1.5, 0.05, 40), DpEvent(3.0, 1.0, 5)],
    ],
)
def test_subsampled_epsilon_lies_in_the_independent_prv_interval_and_below_rdp(events):
    ours = epsilon_spent(events, DELTA)
    low, high = epsilon_interval(events, DELTA)
    assert low * 0.998 <= ours <= high * 1.01
    rdp = rdp_epsilon(events, DELTA)
    assert ours <= rdp and ours <= epsilon_rdp(events, DELTA)


def test_composition_is_over_all_events_not_a_sum_of_epsilons():
    one = DpEvent(1.2, 0.05, 20)
    assert epsilon_spent([one] * 4, DELTA) < 4 * epsilon_spent([one], DELTA)
    assert epsilon_spent([one] * 4, DELTA) == pytest.approx(
        epsilon_spent([DpEvent(1.2, 0.05, 80)], DELTA)
    )
    mixed = [DpEvent(1.2, 0.05, 20), DpEvent(2.0, 1.0, 3)]
    assert epsilon_spent(mixed, DELTA) == epsilon_spent(mixed[::-1], DELTA)


@pytest.mark.parametrize("rate,steps", [(1.0, 40), (0.064, 160), (1.0, 4)])
def test_derived_noise_meets_the_target_and_no_less_noise_would(rate, steps):
    sigma = noise_for_target_epsilon(3.0, DELTA, sample_rate=rate, steps=steps)
    assert epsilon_spent([DpEvent(sigma, rate, steps)], DELTA) <= 3.0
    assert epsilon_spent([DpEvent(sigma * 0.998, rate, steps)], DELTA) > 3.0


def test_exact_accounting_buys_7_percent_less_noise_for_the_demo():
    pld = noise_for_target_epsilon(3.0, DELTA, sample_rate=1.0, steps=40)
    exact_sigma = math.sqrt(40) / 0.7189  # mu at which the closed form gives eps 3
    assert epsilon_gaussian_exact([DpEvent(exact_sigma, 1.0, 40)], DELTA) == pytest.approx(
        3.0, abs=0.01
    )
    assert pld == pytest.approx(8.80, abs=0.02)


def test_a_hostile_tiny_noise_is_answered_at_once_by_rdp_not_a_huge_grid():
    started = time.monotonic()
    epsilon = epsilon_spent([DpEvent(1e-3, 1.0, 1)], DELTA)
    assert epsilon > 1e5 and time.monotonic() - started < 1.0


def test_a_hostile_billion_steps_is_answered_at_once_by_rdp():
    """PLD over 1e8 steps takes minutes; a plan cannot make the owner wait for it."""
    huge = [DpEvent(5.0, 1e-4, 10**9)]
    started = time.monotonic()
    assert epsilon_spent(huge, DELTA) == epsilon_rdp(huge, DELTA)
    sigma = noise_for_target_epsilon(50.0, DELTA, sample_rate=1e-4, steps=10**9)
    assert time.monotonic() - started < 10.0 and sigma > 0


def test_delta_at_or_above_one_over_n_is_refused():
    check_delta(1e-5, 2000)
    with pytest.raises(ConfigError, match=r"delta=0.001 must be > 0 and < 1/N = 0.0005 for N=2000"):
        check_delta(1e-3, 2000)
    with pytest.raises(ConfigError):
        check_delta(0.0, 2000)


def test_a_task_hands_its_accounting_results_to_the_process_it_was_forked_from():
    """The warm executor's tasks are forks: what one computes (a calibration: 0.5-2 s)
    goes back to the zygote (client/executor.py), so the next task does not recompute."""
    from fedshield.common import privacy

    # A fresh task: empty caches (earlier tests in this process filled them) and no
    # results yet to hand back, so it computes, and hands back, everything it needs.
    for cache in privacy._memos.values():
        cache.clear()
    privacy.learned_lines()
    count = (DpEvent(20.0, 1.0, 1),)
    sigma = noise_for_target_epsilon(2.5, DELTA, 1.0, 7, with_events=count)
    lines = privacy.learned_lines()
    assert lines and all(line.endswith(b"\n") for line in lines)
    assert privacy.learned_lines() == []  # each result is handed back once
    key = (2.5, DELTA, 1.0, 7, count, privacy.ADD_REMOVE)
    privacy._memos["_calibrate"].clear()
    privacy._memos["_epsilon_pld"].clear()
    assert all(privacy.learn(line) for line in lines)
    assert privacy._memos["_calibrate"][key] == sigma
    started = time.monotonic()
    assert noise_for_target_epsilon(2.5, DELTA, 1.0, 7, with_events=count) == sigma
    assert time.monotonic() - started < 0.05 and privacy.learned_lines() == []


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b'["os.system", [1.0], 1.0]\n',  # not a memoised function
        b'["_epsilon_pld", [[[1.0, 1.0, 1]], 1e-05], -1.0]\n',  # not an epsilon
        b'["_epsilon_pld", [[[1.0, 1.0, 1]], 1e-05], NaN]\n',
        b'["_epsilon_pld", [[[1.0, 1.0, 1]], 1e-05], "2.0"]\n',
        b'["_calibrate", [{"x": 1}], 2.0]\n',
        b'["_epsilon_pld", [[[1.0, 1.0, true]], 1e-05], 2.0]\n',
    ],
)
def test_a_malformed_handed_back_result_is_ignored(line):
    from fedshield.common import privacy

    sizes = {name: len(cache) for name, cache in privacy._memos.items()}
    assert privacy.learn(line) is False
    assert {name: len(cache) for name, cache in privacy._memos.items()} == sizes
