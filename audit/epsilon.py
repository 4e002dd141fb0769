"""Epsilon recomputed from an owner's logged DP events without the owners' accountant,
and one claimed epsilon judged against it.

Guarantees:
- a PLD claim is judged against an interval holding the true epsilon: the exact closed
  form for full-batch histories, Opacus's PRV accountant otherwise (``epsilon_interval``);
  an RDP claim (ledgers from before the PLD switch) against dp-accounting's RDP;
- a claim above the recomputation by more than ``TOLERANCE``, below it, or (PLD) above
  the looser RDP cross-check is a problem;
- ``claim_problem`` never raises on what a log holds: a history it cannot recompute is a
  problem on the report, not a crash of it.
"""

from __future__ import annotations

import logging
import math

from fedshield.common.dp_event import DpEvent
from fedshield.common.opacus_compat import prv_dprv
from fedshield.common.privacy import (
    ACCOUNTANT,
    LEGACY_ACCOUNTANT,
    epsilon_gaussian_exact,
    pld_applies,
)

TOLERANCE = 0.01
# A claim below the independent figure by more than numerical noise between two
# accountants (seen: 0.03%) is under-reporting, whatever the 1% tolerance says.
UNDER_CLAIM_TOLERANCE = 0.002
# RDP is a looser upper bound than PLD: 5% to 2.7x above it on a grid of these
# mechanisms (sample rates 0.02-1, 1-400 steps, sigma 0.6-30), plus a floor of about
# 0.1 from its finite orders. A PLD claim above RDP means one of the two is broken;
# how far RDP sits above is shown, not judged (it is RDP's looseness, not an error).
RECOMPUTATION = (
    "claims by PLD (the owners' accountant of record): full-batch histories by the exact "
    "closed form of the composed Gaussian, others by Opacus's PRV accountant (an interval "
    "holding the true epsilon); claims by RDP (ledgers from before the PLD switch): "
    "dp-accounting's RdpAccountant. Cross-check: dp-accounting's RdpAccountant on every charge."
)


def rdp_epsilon(events: list[DpEvent], delta: float) -> float:
    """Epsilon of Poisson-subsampled Gaussian events, composed by dp-accounting's RDP."""
    import dp_accounting

    # dp-accounting warns for every RDP order it drops as non-convergent; the bound
    # stays valid over the remaining orders.
    logging.getLogger("absl").setLevel(logging.ERROR)
    if not events:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    for event in events:
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    event.sample_rate, dp_accounting.GaussianDpEvent(event.noise_multiplier)
                ),
                int(event.steps),
            )
        )
    return float(accountant.get_epsilon(delta))


class TooLongToRecompute(ValueError):
    """A history beyond PLD's range: the owners compose it by RDP, and so does the audit."""


def _pld_applies(events: list[DpEvent]) -> bool:
    return pld_applies(events)


def epsilon_interval(events: list[DpEvent], delta: float) -> tuple[float, float]:
    """An interval holding the true epsilon, computed without the owners' PLD accountant.

    Full-batch histories (sample rate 1): the exact closed form, a point. Otherwise
    Opacus's PRV accountant (Gopi, Lee, Wutschitz 2021): its discretised privacy loss
    gives a lower and an upper bound, each within 0.01 of the truth. A history beyond
    PLD's range (``privacy.pld_applies``) raises :class:`TooLongToRecompute`: PRV's grid
    grows with the steps (2e6 steps: over 20 GB), and a crafted log must not exhaust the
    auditor.
    """
    if not events:
        return 0.0, 0.0
    if not _pld_applies(events):
        raise TooLongToRecompute(f"{sum(int(e.steps) for e in events)} steps")
    if all(e.sample_rate >= 1.0 for e in events):
        exact = epsilon_gaussian_exact(events, delta)
        return exact, exact
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(e.noise_multiplier, e.sample_rate, int(e.steps)) for e in events]
    error = 0.01
    # Opacus's public get_epsilon returns only the upper end; its (private) discretised
    # PRV gives both (opacus 1.6, pinned in pyproject.toml).
    dprv = prv_dprv(accountant, eps_error=error, delta_error=delta / 1000)
    low, _, high = dprv.compute_epsilon(delta, delta / 1000, error)
    return float(low), float(high)


def independent_epsilon(events: list[DpEvent], delta: float, accountant: str = ACCOUNTANT) -> float:
    """Epsilon recomputed without the code the owner ran: what a claim is judged against.

    For a PLD claim, the upper end of :func:`epsilon_interval`; for an RDP claim (older
    ledgers, or histories beyond PLD's range) and for histories beyond PLD's range,
    dp-accounting's RDP (:func:`rdp_epsilon`).
    """
    if accountant == LEGACY_ACCOUNTANT or not _pld_applies(events):
        return rdp_epsilon(events, delta)
    return epsilon_interval(events, delta)[1]


def claim_problem(
    claimed: float, events: list[DpEvent], delta: float, accountant: str
) -> tuple[float, float, str | None]:
    """(recomputed, RDP cross-check, problem or None) for one claimed epsilon.

    Never raises on what a log holds: a history the auditor cannot recompute is a
    problem on the report, not a crash of it.
    """
    try:
        return _judge_claim(claimed, events, delta, accountant)
    except TooLongToRecompute as exc:
        return (
            math.nan,
            math.nan,
            (
                f"claims {accountant} for a history beyond PLD's range ({exc}); the owners "
                "compose such histories by RDP and say so"
            ),
        )
    except (ArithmeticError, MemoryError, ValueError) as exc:
        return math.nan, math.nan, f"epsilon could not be recomputed from the log: {exc!r}"


def _judge_claim(
    claimed: float, events: list[DpEvent], delta: float, accountant: str
) -> tuple[float, float, str | None]:
    rdp = rdp_epsilon(events, delta)
    if accountant == LEGACY_ACCOUNTANT:
        recomputed = rdp
        low, high = rdp * (1 - UNDER_CLAIM_TOLERANCE), rdp * (1 + TOLERANCE)
    else:
        low, recomputed = epsilon_interval(events, delta)
        low, high = low * (1 - UNDER_CLAIM_TOLERANCE), recomputed * (1 + TOLERANCE)
    if not low <= claimed <= high:
        return (
            recomputed,
            rdp,
            (
                f"claimed epsilon {claimed:.4f} ({accountant}) outside the independently "
                f"recomputed [{low:.4f}, {high:.4f}]"
            ),
        )
    if accountant != LEGACY_ACCOUNTANT and rdp < claimed * (1 - UNDER_CLAIM_TOLERANCE):
        return (
            recomputed,
            rdp,
            (
                f"claimed epsilon {claimed:.4f} (pld) is above the RDP cross-check {rdp:.4f}: "
                "RDP is the looser bound, so one of the two computations is broken"
            ),
        )
    return recomputed, rdp, None
