"""Privacy maths: DP events and their composition into epsilon.

The accountant of record is the privacy loss distribution (PLD, Google's
``dp-accounting``; Koskela et al. 2020, Doroshenko et al. 2022) with pessimistic
discretisation: tight for the Poisson-subsampled Gaussian the training loop runs, and
an upper bound on the true epsilon (never below it). Rényi DP (Opacus) stays as an
independent, looser cross-check (:func:`epsilon_rdp`), and full-batch rounds
(sample rate 1) have an exact closed form (:func:`epsilon_gaussian_exact`) against
which the auditor and the tests check the PLD figure.

Guarantees:
- epsilon is always computed from the whole list of events a data set has been
  through, never summed from per-round epsilons;
- :func:`noise_for_target_epsilon` calibrates with the same accountant the ledger
  charges with, so a run planned for a target never exceeds it;
- a history so loose that its epsilon is beyond any budget (over ``PLD_MAX_EPSILON`` by
  RDP), so long or so varied that PLD would take minutes (``PLD_MAX_STEPS``,
  ``PLD_MAX_MECHANISMS``), is composed by RDP, a valid upper bound, and
  :func:`accountant_used` says so: a hostile plan cannot make the owner compute for
  minutes or build a grid of billions of points, and the audit entry names the
  accountant the figure actually rests on.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier

from fedshield.common.dp_event import DpEvent
from fedshield.common.errors import ConfigError

RDP_ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)
# Names written into ledgers and audit entries: which accountant a figure rests on.
ACCOUNTANT = "pld"
LEGACY_ACCOUNTANT = "rdp"  # entries written before the PLD switch carry no name
# Discretisation of the privacy loss (nats). Pessimistic rounding keeps the result an
# upper bound, but its bias grows with the number of subsampled steps composed: 1e-3
# is within 1e-4 of the exact figure on full-batch rounds and up to 1,000 steps; beyond,
# 1e-4 (40,000 steps at rate 0.001: 1e-3 over-states by 4%, 1e-4 lies inside Opacus's
# PRV interval). An epsilon takes 0.03-0.3 s at 1e-3, up to about 2 s at 1e-4.
PLD_INTERVAL = 1e-3
PLD_FINE_INTERVAL = 1e-4
PLD_FINE_AFTER_STEPS = 1000
# Beyond these, RDP (a valid upper bound, computed at once) is the accountant: epsilon
# over any budget; more composed steps than a real run takes (100 rounds x 2,000 steps
# is 2e5; PLD's cost grows with them: 1e7 steps take 7 s, 1e8 minutes); more distinct
# mechanisms than a real ledger holds (each costs up to 35 ms, and a hostile plan that
# nudged the noise every round would otherwise slow every later pre-flight).
PLD_MAX_EPSILON = 50.0  # PLD's grid grows with epsilon (eps 6,000: 26 s)
PLD_MAX_STEPS = 2 * 10**5
PLD_MAX_MECHANISMS = 64

# Neighbouring relations (docs/PRIVACY.md, "Privacy semantics"). Add/remove one record is the
# default: it protects whether a record is there at all, so the record count N is
# private and leaves only as a DP release. Replace-one applies when the owner declares N
# public; then the clipped-gradient sum moves by 2C, not C.
ADD_REMOVE = "add-remove"
REPLACE_ONE = "replace-one"
RELATIONS = (ADD_REMOVE, REPLACE_ONE)
# What one DP contribution is when an owner names no privacy unit (issue 25); otherwise
# the owner's privacy-unit column's name.
PER_RECORD = "record"


def accounted_event(event: DpEvent, relation: str) -> DpEvent:
    """The event the accountant composes for a training release under ``relation``.

    Add/remove: the event itself. Replace-one: the sum's sensitivity is 2C, so each step
    is a Gaussian of multiplier sigma/2; dp-accounting's PLD cannot compose a
    Poisson-subsampled Gaussian under replace-one, so the steps are charged at rate 1,
    an upper bound (coupling each record's coin in D and D', every sample is a
    Gaussian pair of sensitivity at most 2C, and the mixture is dominated by it).
    """
    if relation == ADD_REMOVE:
        return event
    if relation == REPLACE_ONE:
        return DpEvent(event.noise_multiplier / 2.0, 1.0, event.steps)
    raise ConfigError(f"unknown neighbouring relation {relation!r}; use one of {RELATIONS}")


Grouped = tuple[tuple[float, float, int], ...]

# The slow accounting results (a PLD epsilon, a calibration: 0.03-2 s each) are pure
# functions of public parameters. A process that forks one task per message
# (client/executor.py) would recompute them in every task, where a long-lived one (a
# Ray actor) keeps them: a task hands what it computed back to its parent
# (``learned_lines``), which takes them in (``learn``) before it forks the next task.
MEMO_MAX_ENTRIES = 4096
_memos: dict[str, dict[tuple, float]] = {}
_learned: list[tuple[str, tuple, float]] = []


def _shared_memo(function: Callable[..., float]) -> Callable[..., float]:
    """Memoise ``function`` (positional, hashable arguments) and note each new result."""
    name = function.__name__
    cache = _memos.setdefault(name, {})

    @functools.wraps(function)
    def memoised(*args):
        if args in cache:
            return cache[args]
        value = function(*args)
        if len(cache) >= MEMO_MAX_ENTRIES:
            cache.clear()  # bounded like the lru_cache it replaces; a miss only costs time
        cache[args] = value
        if len(_learned) < MEMO_MAX_ENTRIES:  # bounded where nothing collects them (Ray)
            _learned.append((name, args, value))
        return value

    return memoised


def _plain(value):
    if isinstance(value, DpEvent):
        return {"DpEvent": [value.noise_multiplier, value.sample_rate, value.steps]}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _from_plain(value):
    if isinstance(value, dict):
        sigma, q, steps = value["DpEvent"]
        return DpEvent(float(sigma), float(q), int(steps))
    if isinstance(value, list):
        return tuple(_from_plain(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"unexpected {type(value).__name__} in an accounting key")
    return value


def learned_lines() -> list[bytes]:
    """The results this process computed since the last call, one JSON line each."""
    lines = [
        json.dumps([name, _plain(args), value]).encode() + b"\n" for name, args, value in _learned
    ]
    _learned.clear()
    return lines


def learn(line: bytes) -> bool:
    """Take in one line of :func:`learned_lines` from a task of this process; False (and
    nothing cached) if it is not a well-formed result of a memoised function."""
    try:
        name, args, value = json.loads(line)
        cache = _memos[name]
        key = _from_plain(args)
        if not isinstance(key, tuple) or not isinstance(value, float):
            return False
        if not math.isfinite(value) or value < 0:
            return False
        hash(key)
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
        return False  # a cache: a line it cannot read is dropped, never fatal
    if len(cache) >= MEMO_MAX_ENTRIES:
        cache.clear()
    cache.setdefault(key, value)
    return True


def _grouped(events: Iterable[DpEvent]) -> Grouped:
    """Events as (sigma, q, total steps), one per distinct mechanism, in a fixed order.

    Composition is commutative, so grouping loses nothing and makes the result cacheable.
    """
    steps: Counter[tuple[float, float]] = Counter()
    for event in events:
        steps[(float(event.noise_multiplier), float(event.sample_rate))] += int(event.steps)
    return tuple(sorted((sigma, q, n) for (sigma, q), n in steps.items() if n > 0))


def composed_history(events: Iterable[DpEvent]) -> list[DpEvent]:
    """A history as the accountant composes it: one event per distinct (sigma, q), its
    steps summed, in a fixed order. Epsilon is the same as the whole history's (the
    accountant groups it so), and its size grows with the mechanisms used, not with the
    rounds: what a charge's audit entry carries (client/charge.py)."""
    return [DpEvent(sigma, q, steps) for sigma, q, steps in _grouped(events)]


def epsilon_spent(events: Iterable[DpEvent], delta: float) -> float:
    """Epsilon at ``delta`` of all ``events`` composed, by :func:`accountant_used`'s choice."""
    grouped = _grouped(events)
    if _accountant(grouped, float(delta)) == LEGACY_ACCOUNTANT:
        return _epsilon_rdp(grouped, float(delta))
    return _epsilon_pld(grouped, float(delta))


def accountant_used(events: Iterable[DpEvent], delta: float) -> str:
    """Which accountant :func:`epsilon_spent` rests on for ``events``: PLD, or RDP beyond
    PLD's range (``PLD_MAX_*``). A charge's audit entry names it."""
    return _accountant(_grouped(events), float(delta))


def pld_applies(events: Iterable[DpEvent]) -> bool:
    """Whether a history is short and uniform enough to be composed by PLD at all (else
    RDP): at most ``PLD_MAX_STEPS`` steps of at most ``PLD_MAX_MECHANISMS`` mechanisms."""
    return _within_pld_range(_grouped(events))


def _within_pld_range(grouped: Grouped) -> bool:
    total_steps = sum(steps for *_, steps in grouped)
    return total_steps <= PLD_MAX_STEPS and len(grouped) <= PLD_MAX_MECHANISMS


def _accountant(grouped: Grouped, delta: float) -> str:
    if not _within_pld_range(grouped):
        return LEGACY_ACCOUNTANT
    # Subsampling only lowers epsilon, so the same steps at rate 1 bound it from above,
    # in closed form and at once (RDP is slow for large noise at rates near 0.5).
    full_batch = tuple((sigma, 1.0, steps) for sigma, _, steps in grouped)
    if _gaussian_exact(full_batch, delta) <= PLD_MAX_EPSILON:
        return ACCOUNTANT
    return LEGACY_ACCOUNTANT if _epsilon_rdp(grouped, delta) > PLD_MAX_EPSILON else ACCOUNTANT


def epsilon_rdp(events: Iterable[DpEvent], delta: float) -> float:
    """Epsilon by Rényi DP (Opacus's orders and conversion): the looser cross-check."""
    return _epsilon_rdp(_grouped(events), float(delta))


@lru_cache(maxsize=4096)
def _epsilon_rdp(grouped: Grouped, delta: float) -> float:
    if not grouped:
        return 0.0
    total = sum(
        compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=RDP_ORDERS)
        for sigma, q, steps in grouped
    )
    epsilon, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=total, delta=delta)
    return float(epsilon)


@_shared_memo
def _epsilon_pld(grouped: Grouped, delta: float) -> float:
    if not grouped:
        return 0.0
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    logging.getLogger("absl").setLevel(logging.ERROR)
    subsampled_steps = sum(steps for _, q, steps in grouped if q < 1.0)
    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=(
            PLD_FINE_INTERVAL if subsampled_steps > PLD_FINE_AFTER_STEPS else PLD_INTERVAL
        ),
    )
    for sigma, q, steps in grouped:
        gaussian = dp_accounting.GaussianDpEvent(sigma)
        event = gaussian if q >= 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
        accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def epsilon_gaussian_exact(events: Iterable[DpEvent], delta: float) -> float:
    """Exact epsilon of full-batch rounds (sample rate 1), no discretisation.

    Each round adds N(0, (sigma*C)^2) to a sum of sensitivity C, i.e. is mu-GDP with
    mu = 1/sigma; k such rounds compose to one Gaussian with mu = sqrt(sum 1/sigma_i^2)
    (Dong, Roth, Su 2019, Cor. 3.3), whose (epsilon, delta) curve is exactly
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)
    (Balle & Wang 2018, Thm 8). Returns the epsilon at which that equals ``delta``.
    """
    grouped = _grouped(events)
    if any(q < 1.0 for _, q, _ in grouped):
        raise ValueError("the closed form holds for sample rate 1 (full-batch rounds) only")
    return _gaussian_exact(grouped, float(delta))


@lru_cache(maxsize=4096)
def _gaussian_exact(grouped: Grouped, delta: float) -> float:
    from scipy.optimize import brentq
    from scipy.stats import norm

    if not grouped:
        return 0.0
    mu = math.sqrt(sum(steps / sigma**2 for sigma, _, steps in grouped))

    def excess(eps: float) -> float:
        return (
            norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2)) - delta
        )

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
    return float(brentq(excess, 0.0, high, xtol=1e-12, rtol=1e-12))


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    with_events: Sequence[DpEvent] = (),
    relation: str = ADD_REMOVE,
) -> float:
    """The smallest noise multiplier (within 0.1%) for which ``steps`` steps, accounted
    under ``relation`` and composed with ``with_events`` (the owner's count release),
    stay <= target.

    Bisection on the accountant of record, started from RDP's calibration (RDP is looser,
    so its noise always meets the target alone). The returned value is the bracket's
    upper end: it meets the target, never just misses it.
    """
    if target_epsilon <= 0:
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon}")
    fixed = tuple(with_events)
    if epsilon_spent(fixed, delta) >= target_epsilon:
        raise ConfigError(
            f"the owner's count release alone spends epsilon {epsilon_spent(fixed, delta):.3f}, "
            f"at or over the target {target_epsilon:g}; raise the target or the count noise"
        )
    return _calibrate(
        float(target_epsilon), float(delta), float(sample_rate), int(steps), fixed, relation
    )


@_shared_memo
def _calibrate(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    fixed: tuple[DpEvent, ...] = (),
    relation: str = ADD_REMOVE,
) -> float:
    def eps(sigma: float) -> float:
        planned = accounted_event(DpEvent(sigma, sample_rate, steps), relation)
        return epsilon_spent([*fixed, planned], delta)

    high = float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
        )
    )
    while eps(high) > target_epsilon:  # RDP's 1% search, the count, replace-one: above
        high *= 1.05
    low = high / 2
    while eps(low) <= target_epsilon:
        high, low = low, low / 2
    while (high - low) / high > 1e-3:
        middle = (low + high) / 2
        if eps(middle) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high


def check_delta(delta: float, num_records: int) -> None:
    """Refuse delta >= 1/N: at that delta 'DP' permits leaking a whole record."""
    if not 0 < delta < 1.0 / num_records:
        raise ConfigError(
            f"delta={delta} must be > 0 and < 1/N = {1.0 / num_records:.3g} for N={num_records} "
            f"records; pick delta well below 1/N, e.g. {10 ** -len(str(num_records)):.0e}"
        )
