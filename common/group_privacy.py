"""What a ledger's charges guarantee for a group of records (issue 25): a person with k
records under record-level DP, and one record under unit-level DP.

Guarantees (each figure an upper bound, never below the true epsilon):
- :func:`group_epsilon`: removing k records at once. The smaller of two valid bounds:
  (a) each Gaussian step's sum moves by at most k C, and coupling the records' coins as
  ``privacy.accounted_event`` does for replace-one, every step is dominated by a
  Gaussian of multiplier sigma / k at rate 1 (exact for full-batch rounds and for the
  count release); (b) the group-privacy conversion: (eps', delta')-DP gives
  (k eps', k e^((k-1) eps') delta') for groups of k (Dwork and Roth, Theorem 2.2 for
  pure DP, its (eps, delta) form as in Vadhan 2017, Lemma 2.2), with delta' searched so
  that the group's delta is the ledger's;
- :func:`record_epsilon_of_unit_run`: one record of a unit-level run. Removing it
  changes its unit's clipped sum from g to g', both of norm at most C: a replace-one
  move of at most 2C (``accounted_event`` at replace-one); the count of units moves by
  at most 1, as under add/remove.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

from fedshield.common.dp_event import DpEvent
from fedshield.common.privacy import REPLACE_ONE, accounted_event, epsilon_rdp, epsilon_spent

# The conversion's search: delta' = delta / (k e^((k-1) x)) underflows past this exponent.
_MAX_EXPONENT = 700.0


def group_epsilon(events: Iterable[DpEvent], delta: float, k: int) -> float:
    """Epsilon at ``delta`` for removing ``k`` records together, over ``events`` accounted
    per record (add/remove); ``k`` = 1 is the ledger's own figure."""
    events = list(events)
    if k <= 1 or not events:
        return epsilon_spent(events, delta)
    scaled = [DpEvent(e.noise_multiplier / k, 1.0, e.steps) for e in events]
    with warnings.catch_warnings():  # Opacus: "optimal order is the smallest/largest alpha"
        warnings.simplefilter("ignore", UserWarning)
        return min(epsilon_spent(scaled, delta), _group_conversion(events, delta, k))


def _group_conversion(events: list[DpEvent], delta: float, k: int) -> float:
    """k x eps' at the smallest x with eps(delta / (k e^((k-1) x))) <= x, by bisection (RDP:
    fast, and valid at the tiny deltas the search reaches); inf when none is found."""

    def fits(x: float) -> float | None:
        exponent = (k - 1) * x
        if exponent > _MAX_EXPONENT:
            return None
        epsilon = epsilon_rdp(events, delta / (k * math.exp(exponent)))
        return epsilon if epsilon <= x else None

    low, high = 0.0, _MAX_EXPONENT / (k - 1)
    best = fits(high)
    if best is None:
        return math.inf
    for _ in range(40):
        middle = (low + high) / 2
        found = fits(middle)
        if found is None:
            low = middle
        else:
            high, best = middle, found
    return k * best


def record_epsilon_of_unit_run(
    train_events: Iterable[DpEvent], count_events: Iterable[DpEvent], delta: float
) -> float:
    """Epsilon at ``delta`` for one record of a unit-level run: its training events at
    replace-one (2C), its count releases as they are (sensitivity 1)."""
    moved = [accounted_event(e, REPLACE_ONE) for e in train_events]
    return epsilon_spent([*moved, *count_events], delta)
