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
    max_detectable: float  # the bound if every guess were right: the audit's ceiling
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
        max_detectable=max_detectable(m, delta, beta),
        grid=grid,
    )


def max_detectable(m: int, delta: float, beta: float) -> float:
    """The largest bound the guess grid can ever give on ``m`` canaries at level ``beta``
    per test: every guess right. A claim at or above it cannot be contradicted by this
    audit, whatever the implementation does; the audit is then inconclusive."""
    return max((epsilon_lower_bound(m, r, r, delta, beta) for r in guess_sizes(m)), default=0.0)


def verdict(
    bound: float, claimed: float | None, ceiling: float, confidence: float, delta: float
) -> str:
    """The result in words, from the numbers alone."""
    if claimed is None and bound <= 0:
        return (
            "no DP claim, and no leak found (bound 0): in these settings one record moves the "
            "updates too little for these scores; the audit cannot judge them"
        )
    if claimed is None:
        return (
            f"no DP claim; the run is not ({bound:.3g}, {delta:g})-DP with {confidence:.0%} "
            "confidence"
        )
    if bound > claimed:
        return (
            f"LEAKS MORE THAN CLAIMED: the lower bound {bound:.3g} is above the claimed "
            f"epsilon {claimed:.3g} ({confidence:.0%} confidence)"
        )
    if ceiling <= claimed:
        return (
            f"INCONCLUSIVE: with these canaries the audit cannot show a bound above "
            f"{ceiling:.3g}, and the claim is {claimed:.3g}; use more canaries"
        )
    return f"consistent with the claim: lower bound {bound:.3g} <= claimed {claimed:.3g}"


EMPIRICAL_FORMAT = "fedshield-empirical-audit/1"

WHAT_IT_SHOWS = (
    "Canaries (records of random words with a random label; with a privacy unit, units "
    "of several such records, in or out whole) were dealt to the simulated owners and "
    "each was put into its owner's data on a coin flip. After one training run, the "
    "server's view (every owner's update, every round) was used to guess which canaries "
    "were trained on. Many correct guesses are impossible for a mechanism that really is "
    "(epsilon, delta)-DP per record, or per unit, with a small epsilon (Steinke, Nasr "
    "and Jagielski, NeurIPS 2023, Theorem 3.1); the lower bound is the largest epsilon "
    "the guesses rule out at the stated confidence. A lower bound ABOVE the claimed "
    "epsilon proves, at that confidence, that the implementation leaks more than it "
    "claims (noise switched off, clipping that does not clip, an update that bypasses "
    "the optimizer). A lower bound BELOW the claim is consistent with the claim but does "
    "not prove it: one run with these canaries and these scores is a weak attacker, so "
    "the bound is usually far below the true epsilon; it tests this run, this data and "
    "these settings only."
)


def _number(value, name: str, low: float, high: float, path, hint: str) -> float:
    from fedshield.common.errors import FedshieldError

    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FedshieldError(f"{path}: {name} must be a number, got {value!r}; {hint}")
    if not (math.isfinite(value) and low <= value <= high):
        raise FedshieldError(f"{path}: {name} = {value!r} is outside [{low}, {high}]; {hint}")
    return float(value)


def load_empirical(path) -> dict:
    """Read ``fedshield audit empirical``'s ``empirical.json`` for the report.

    A file that is not that format, or whose numbers are missing, not finite or out of
    range, is refused with the path, the field and the fix. The report does not take the
    file's word for the claim or the bound: it checks them against the signed logs and
    the file's own evidence (``check_empirical``).
    """
    from fedshield.audit.evaluation import read_json_object
    from fedshield.common.errors import FedshieldError

    hint = "pass the empirical.json that `fedshield audit empirical` wrote"
    data = read_json_object(path, hint)
    if data.get("format") != EMPIRICAL_FORMAT:
        raise FedshieldError(f"{path}: not a {EMPIRICAL_FORMAT} file; {hint}")
    bound = data.get("lower-bound")
    if not isinstance(bound, dict):
        raise FedshieldError(f"{path}: 'lower-bound' missing; {hint}")
    _number(bound.get("epsilon_lower_bound"), "lower-bound.epsilon_lower_bound", 0, 1e3, path, hint)
    _number(bound.get("confidence"), "lower-bound.confidence", 0.5, 1 - 1e-12, path, hint)
    _number(bound.get("delta"), "lower-bound.delta", 0, 1, path, hint)
    for key in ("canaries", "guesses", "correct", "tests", "included"):
        value = bound.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FedshieldError(f"{path}: lower-bound.{key} must be a count, got {value!r}")
    if not 0 <= bound["correct"] <= bound["guesses"] <= bound["canaries"] or bound["tests"] < 1:
        raise FedshieldError(
            f"{path}: lower-bound needs 0 <= correct <= guesses <= canaries and tests >= 1; {hint}"
        )
    if not isinstance(data.get("run-keys"), list) or not all(
        isinstance(k, str) for k in data["run-keys"]
    ):
        raise FedshieldError(f"{path}: 'run-keys' must be a list of run keys; {hint}")
    if not isinstance(data.get("dp"), bool):
        raise FedshieldError(f"{path}: 'dp' must be true or false; {hint}")
    return {**data, "file": str(path)}


def check_empirical(empirical: dict, run_keys: set[str], charges: list) -> dict:
    """What the report concludes from an empirical result, not trusting the file.

    ``run_keys`` are the runs found in the verified logs; ``charges`` the owners' verified
    charges (audit/owner_records.py ``Charge``). The claim is the largest epsilon the owners'
    signed logs record for the tested run; the bound is recomputed from the file's own
    evidence (canaries, guesses, correct, tests) at the logs' delta.
    """
    bound = empirical["lower-bound"]
    keys = set(empirical["run-keys"]) & run_keys
    problems = []
    if not keys:
        problems.append(
            "the empirical result is of a run that is not in these logs (run keys "
            f"{sorted(empirical['run-keys'])}); pass that run's audit folder"
        )
    tested = [c for c in charges if c.run_key in keys]
    claimed = max((c.epsilon_claimed for c in tested), default=None)
    deltas = {c.delta for c in tested}
    delta = max(deltas) if deltas else float(bound["delta"])
    if empirical["dp"] and keys and claimed is None:
        problems.append("the result says DP, but no owner charged any epsilon in that run")
    if bound["tests"] < len(bound.get("grid") or []):
        problems.append(f"tests = {bound['tests']} is fewer than the {len(bound['grid'])} tried")
    beta = (1.0 - bound["confidence"]) / bound["tests"]
    recomputed = epsilon_lower_bound(
        bound["canaries"], bound["guesses"], bound["correct"], delta, beta
    )
    if abs(recomputed - bound["epsilon_lower_bound"]) > 1e-6 * max(1.0, recomputed):
        problems.append(
            f"the file states a bound of {bound['epsilon_lower_bound']:.6g}; its evidence "
            f"supports {recomputed:.6g} at the logs' delta {delta:g}"
        )
    ceiling = max_detectable(bound["canaries"], delta, beta)
    exceeds = claimed is not None and recomputed > claimed
    return {
        "run-in-these-logs": sorted(keys),
        "claimed-from-logs": claimed,
        "delta-from-logs": delta,
        "bound-recomputed": recomputed,
        "max-detectable": ceiling,
        "exceeds-claim": exceeds,
        "problems": problems,
        "verdict": verdict(recomputed, claimed, ceiling, bound["confidence"], delta),
        "ok": not problems and not exceeds,
    }
