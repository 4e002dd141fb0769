"""The one-run privacy audit's statistics: canary guesses -> a lower bound on epsilon.

Source: T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023 (arXiv:2305.08846). The set-up (their Algorithm 1): m canaries, each put
in the training data independently with probability 1/2 (S_i = +1 in, -1 out); after
one training run the auditor scores every canary and guesses T_i = +1 for the ``r/2``
highest scores, -1 for the ``r/2`` lowest, and abstains (T_i = 0) on the rest. The
guesses depend on the output alone, never on S.

The bound (their Theorem 3.1, the main result): if the training is (epsilon, delta)-DP
with respect to each canary, then for every v the number of correct guesses
W = #{i : T_i = S_i != 0} satisfies

    P[W >= v] <= P[W' >= v] + 2 m delta * max_{i = 1..v} P[v > W' >= v - i] / i,   (*)

where W' ~ Binomial(r, e^epsilon / (1 + e^epsilon)); with delta = 0 this is the pure-DP
statement that W is stochastically dominated by W' (Definition (1) of the paper gives
the (epsilon, delta) semantics; e^eps / (1 + e^eps) is the accuracy of eps-DP randomized
response). ``p_value`` computes the right side of (*). The lower bound is the largest
epsilon whose (*) stays below the failure probability beta = 1 - confidence, found by
bisection as in the paper's accompanying procedure: with probability at least
``confidence``, a mechanism that really were (epsilon, delta)-DP with epsilon at or
below the bound would not have produced this many correct guesses.

Choosing r after looking at the scores is not covered by (*); ``audit_guesses`` tries a
fixed grid of r and splits beta evenly among them (a union bound), so the best of the
grid is still a valid bound at the stated confidence.

Hand-written (about 60 lines) because no package on the registries ships this bound;
the binomial tail itself is SciPy's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom

# Fractions of the canaries guessed on (half "in" at the top, half "out" at the bottom).
GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_BISECTION_STEPS = 60
_EPSILON_CEILING = 100.0


def _check_counts(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Right side of Theorem 3.1 (*): the most probability an (epsilon, delta)-DP training
    run can give to ``v`` or more correct guesses out of ``r`` on ``m`` canaries."""
    _check_counts(m, r, v)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))  # P[W' >= v]
    # P[v > W' >= v - i] for i = 1..v, as differences of the CDF.
    below = binom.cdf(v - 1, r, q) - binom.cdf(v - 1 - np.arange(1, v + 1), r, q)
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """The largest epsilon that ``v`` correct of ``r`` guesses rule out at level ``beta``.

    0.0 when even epsilon = 0 explains the guesses (p-value >= beta).
    """
    _check_counts(m, r, v)
    if not 0 < beta < 1:
        raise ValueError(f"beta (1 - confidence) must be in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:  # p_value grows with epsilon
        low, high = high, 2.0 * high
        if high > _EPSILON_CEILING:
            return _EPSILON_CEILING
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < beta:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class AuditResult:
    """The best bound over every (score, guess count) tried, and what it rests on."""

    epsilon_lower_bound: float
    confidence: float
    delta: float
    canaries: int
    included: int
    score: str  # the score that gave the bound
    guesses: int  # r there
    correct: int  # v there
    tests: int  # (score, r) pairs tried; each ran at (1 - confidence) / tests
    grid: list[dict]  # every pair: score, guesses, correct, bound

    def as_dict(self) -> dict:
        return asdict(self)


def guess_sizes(m: int, fractions: tuple[float, ...] = GUESS_FRACTIONS) -> list[int]:
    """The numbers of guesses tried on ``m`` canaries: even, at least 2, at most m."""
    return sorted({r for f in fractions if (r := max(2, 2 * round(f * m / 2))) <= m})


def correct_guesses(scores: np.ndarray, included: np.ndarray, r: int) -> int:
    """Guess "in" for the r/2 highest scores and "out" for the r/2 lowest; count hits."""
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[: r // 2], order[len(scores) - r // 2 :]
    return int(included[top].sum() + (~included[bottom]).sum())


def audit_guesses(
    scores: dict[str, np.ndarray],
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    fractions: tuple[float, ...] = GUESS_FRACTIONS,
) -> AuditResult:
    """Guess from each named score (higher = more likely trained on), count correct
    guesses against ``included``, and bound epsilon at ``confidence``.

    Every (score, r) pair is a separate test at (1 - confidence) / (number of pairs), so
    the best of them is a valid bound at ``confidence`` (union bound). The guesses are a
    function of the scores alone; ``included`` is only used to count.
    """
    included = np.asarray(included, dtype=bool)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not scores:
        raise ValueError("no canary scores given")
    m = len(included)
    for name, values in scores.items():
        values = np.asarray(values, dtype=float)
        if values.shape != (m,):
            raise ValueError(f"score {name!r}: expected {m} values, got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"score {name!r}: canary scores must be finite")
    sizes = guess_sizes(m, fractions)
    tests = len(scores) * len(sizes)
    beta = (1.0 - confidence) / max(1, tests)
    grid = []
    for name, values in scores.items():
        for r in sizes:
            v = correct_guesses(np.asarray(values, dtype=float), included, r)
            bound = epsilon_lower_bound(m, r, v, delta, beta)
            grid.append({"score": name, "guesses": r, "correct": v, "bound": bound})
    best = max(grid, key=lambda g: g["bound"], default=None) or {
        "score": "",
        "guesses": 0,
        "correct": 0,
        "bound": 0.0,
    }
    return AuditResult(
        epsilon_lower_bound=best["bound"],
        confidence=confidence,
        delta=delta,
        canaries=m,
        included=int(included.sum()),
        score=best["score"],
        guesses=best["guesses"],
        correct=best["correct"],
        tests=tests,
        grid=grid,
    )


EMPIRICAL_FORMAT = "fedshield-empirical-audit/1"


def load_empirical(path) -> dict:
    """Read ``fedshield audit empirical``'s ``empirical.json`` for the report; a file that
    is not that format is refused with the path and the fix."""
    from fedshield.audit.evaluation import read_json_object
    from fedshield.common.errors import FedshieldError

    hint = "pass the empirical.json that `fedshield audit empirical` wrote"
    data = read_json_object(path, hint)
    if data.get("format") != EMPIRICAL_FORMAT:
        raise FedshieldError(f"{path}: not a {EMPIRICAL_FORMAT} file; {hint}")
    bound = data.get("lower-bound")
    if not isinstance(bound, dict) or not isinstance(bound.get("epsilon_lower_bound"), int | float):
        raise FedshieldError(f"{path}: 'lower-bound.epsilon_lower_bound' missing; {hint}")
    claimed = data.get("claimed-epsilon")
    if claimed is not None and not isinstance(claimed, int | float):
        raise FedshieldError(f"{path}: 'claimed-epsilon' must be a number or null; {hint}")
    return {**data, "file": str(path)}


def exceeds_claim(empirical: dict) -> bool:
    """True when the empirical lower bound is above the epsilon the run claimed."""
    claimed = empirical.get("claimed-epsilon")
    return claimed is not None and empirical["lower-bound"]["epsilon_lower_bound"] > claimed
