"""The one-run audit's bound (audit/one_run.py) against hand computations of Theorem 3.1
of Steinke, Nasr and Jagielski (2023), an independent implementation of its formula,
and a simulation of a mechanism whose epsilon is known exactly (randomized response)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedshield.audit.one_run import (
    audit_guesses,
    correct_guesses,
    epsilon_lower_bound,
    guess_sizes,
    max_detectable,
    p_value,
    verdict,
)


def test_two_canaries_by_hand():
    # m = r = v = 2. At epsilon 0, W' ~ Bin(2, 1/2): P[W' >= 2] = 1/4; the delta term's
    # max over i of P[2 > W' >= 2 - i] / i is max(P[W'=1] / 1, P[W'<=1] / 2) =
    # max(1/2, 3/8) = 1/2, times 2 m delta = 4 delta.
    assert p_value(2, 2, 2, 0.0, 0.01) == pytest.approx(0.25 + 4 * 0.01 * 0.5)
    # At epsilon ln 3, q = 3/4: P[W' >= 2] = 9/16; P[W'=1] = 6/16, P[W'<=1] / 2 = 7/32.
    assert p_value(2, 2, 2, math.log(3), 0.01) == pytest.approx(9 / 16 + 4 * 0.01 * 6 / 16)


@pytest.mark.parametrize("r,beta", [(10, 0.05), (100, 0.05), (1000, 0.01)])
def test_all_guesses_right_pure_dp_has_a_closed_form(r, beta):
    # delta = 0 and v = r: P[W' >= r] = q^r <= beta  <=>  q <= beta^(1/r), and
    # q = e^eps / (1 + e^eps), so the bound is eps = ln(q / (1 - q)) at q = beta^(1/r).
    q = beta ** (1 / r)
    assert epsilon_lower_bound(r, r, r, 0.0, beta) == pytest.approx(math.log(q / (1 - q)), rel=1e-9)


def _p_value_by_sums(m, r, v, epsilon, delta):
    """Theorem 3.1's right side with exact binomial sums (math.comb), no SciPy."""
    q = math.exp(epsilon) / (1 + math.exp(epsilon))
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    tail = sum(pmf[v:])
    alpha = max(sum(pmf[max(0, v - i) : v]) / i for i in range(1, v + 1))
    return min(1.0, tail + 2 * m * delta * alpha)


@pytest.mark.parametrize(
    "m,r,v,epsilon,delta",
    [
        (100, 50, 40, 1.0, 1e-3),
        (1000, 200, 150, 0.5, 1e-5),
        (60, 60, 31, 0.0, 0.0),
        (500, 20, 20, 3.0, 1e-4),
    ],
)
def test_p_value_matches_an_independent_sum(m, r, v, epsilon, delta):
    assert p_value(m, r, v, epsilon, delta) == pytest.approx(
        _p_value_by_sums(m, r, v, epsilon, delta), rel=1e-9, abs=1e-15
    )


def test_the_bound_grows_with_evidence_and_is_zero_without_it():
    assert epsilon_lower_bound(1000, 100, 50, 1e-5, 0.05) == 0.0  # chance level
    assert epsilon_lower_bound(1000, 100, 0, 1e-5, 0.05) == 0.0
    bounds = [epsilon_lower_bound(1000, 100, v, 1e-5, 0.05) for v in (60, 70, 80, 90, 100)]
    assert bounds == sorted(bounds) and bounds[0] >= 0 and bounds[-1] > 2
    # A larger delta or a higher confidence can only lower the bound.
    assert epsilon_lower_bound(1000, 100, 90, 1e-3, 0.05) < bounds[3]
    assert epsilon_lower_bound(1000, 100, 90, 1e-5, 0.01) < bounds[3]
    # The bound is where the p-value crosses beta.
    eps = bounds[3]
    assert p_value(1000, 100, 90, eps, 1e-5) < 0.05 <= p_value(1000, 100, 90, eps + 1e-6, 1e-5)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        p_value(10, 20, 5, 1.0, 0.0)
    with pytest.raises(ValueError):
        epsilon_lower_bound(10, 10, 5, 0.0, 1.5)


def test_randomized_response_is_never_over_claimed_and_is_found():
    """A mechanism that is exactly eps-DP per canary (randomized response on the
    membership bit): at 95% confidence the bound exceeds the true eps in at most about
    5% of runs, and it is not vacuous."""
    rng = np.random.default_rng(7)
    true_epsilon, m, runs = 1.0, 1000, 200
    keep = math.exp(true_epsilon) / (1 + math.exp(true_epsilon))
    bounds = []
    for _ in range(runs):
        included = rng.random(m) < 0.5
        reported = np.where(rng.random(m) < keep, included, ~included)
        scores = reported + rng.random(m) * 1e-3  # ties broken at random
        bounds.append(
            audit_guesses({"rr": scores}, included, delta=0.0, fractions=(1.0,)).epsilon_lower_bound
        )
    bounds = np.array(bounds)
    assert (bounds > true_epsilon).mean() <= 0.08
    assert np.median(bounds) > 0.6


def test_guesses_and_union_bound():
    included = np.array([True, False] * 50)
    perfect = included.astype(float)
    result = audit_guesses({"a": perfect, "b": -perfect}, included, delta=1e-5)
    sizes = guess_sizes(100)
    assert result.tests == 2 * len(sizes)
    assert result.score == "a" and result.correct == result.guesses == 100
    assert result.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(100, 100, 100, 1e-5, 0.05 / result.tests)
    )
    # The reversed score guesses everything wrong: its bound is 0.
    assert all(g["bound"] == 0.0 for g in result.grid if g["score"] == "b")
    assert correct_guesses(perfect, included, 10) == 10
    assert correct_guesses(-perfect, included, 10) == 0


def test_scores_must_be_finite_and_complete():
    included = np.array([True, False, True, False])
    with pytest.raises(ValueError, match="finite"):
        audit_guesses({"a": np.array([1.0, np.nan, 0.0, 0.0])}, included, 0.0)
    with pytest.raises(ValueError, match="expected 4"):
        audit_guesses({"a": np.zeros(3)}, included, 0.0)


def test_the_ceiling_is_the_all_correct_bound_and_makes_small_audits_inconclusive():
    beta = 0.05 / 12
    ceiling = max_detectable(200, 1e-5, beta)
    assert ceiling == pytest.approx(epsilon_lower_bound(200, 200, 200, 1e-5, beta))
    assert max_detectable(1000, 1e-5, beta) > ceiling  # more canaries, higher ceiling
    assert 3 < ceiling < 4  # 200 canaries cannot contradict a claim of 4
    assert verdict(0.1, ceiling + 0.5, ceiling, 0.95, 1e-5).startswith("INCONCLUSIVE")
    assert verdict(0.1, ceiling - 0.5, ceiling, 0.95, 1e-5).startswith("consistent")
    assert verdict(2.0, 1.0, ceiling, 0.95, 1e-5).startswith("LEAKS MORE THAN CLAIMED")
    assert verdict(2.0, None, ceiling, 0.95, 1e-5).startswith("no DP claim; the run is not (2,")
    assert "no leak found" in verdict(0.0, None, ceiling, 0.95, 1e-5)
