"""Epsilon from Opacus's RDP accountant, checked against Google's dp-accounting."""

from __future__ import annotations

import pytest

# The auditor's second accountant (dp-accounting), imported for the checks here.
from fedshield.audit.report import independent_epsilon
from fedshield.common.errors import ConfigError
from fedshield.common.privacy import DpEvent, check_delta, epsilon_spent, noise_for_target_epsilon


@pytest.mark.parametrize(
    "events",
    [
        [DpEvent(1.0, 0.05, 200)],
        [DpEvent(2.66, 0.25, 40)],
        [DpEvent(1.2, 0.064, 16)] * 10,
        [DpEvent(0.9, 0.1, 10), DpEvent(1.5, 0.05, 40), DpEvent(3.0, 0.2, 5)],
    ],
)
def test_epsilon_matches_an_independent_accountant(events):
    ours = epsilon_spent(events, 1e-5)
    theirs = independent_epsilon(events, 1e-5)
    assert ours == pytest.approx(theirs, rel=0.01)


def test_composition_is_over_all_events_not_a_sum_of_epsilons():
    one = DpEvent(1.2, 0.05, 20)
    assert epsilon_spent([one] * 4, 1e-5) < 4 * epsilon_spent([one], 1e-5)
    assert epsilon_spent([one] * 4, 1e-5) == pytest.approx(
        epsilon_spent([DpEvent(1.2, 0.05, 80)], 1e-5)
    )


def test_derived_noise_meets_the_target_without_exceeding_it():
    sigma = noise_for_target_epsilon(3.0, 1e-5, sample_rate=0.064, steps=160)
    eps = epsilon_spent([DpEvent(sigma, 0.064, 160)], 1e-5)
    assert 2.9 <= eps <= 3.0


def test_delta_at_or_above_one_over_n_is_refused():
    check_delta(1e-5, 2000)
    with pytest.raises(ConfigError, match=r"delta=0.001 must be > 0 and < 1/N = 0.0005 for N=2000"):
        check_delta(1e-3, 2000)
    with pytest.raises(ConfigError):
        check_delta(0.0, 2000)
