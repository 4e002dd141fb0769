"""Guarantee: every use fedshield makes of Opacus's private names is in this module,
named, with why, and each checks at first use that the installed opacus is the release it
was written for (``OPACUS_SUPPORTED``); otherwise it raises ``DependencyMismatch`` naming
the installed version, the range and the command that fixes it.

Opacus's public API (``GradSampleModule``, the optimizers, accountants and validators,
``opacus.accountants.utils``, ``opacus.accountants.analysis``) is used where it is
needed, not here. Importing this module imports no part of Opacus.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

# One version check for both compat modules.
from fedshield.common.flower_compat import require_installed

if TYPE_CHECKING:
    import torch
    from opacus.accountants import PRVAccountant

# As pyproject.toml pins it (tests/unit/test_compat.py checks that the two agree).
OPACUS_SUPPORTED = ">=1.6,<1.7"
OPACUS_FIX = f"pip install 'opacus{OPACUS_SUPPORTED}'"


@functools.cache
def require_opacus(needed_for: str) -> str:
    """The installed opacus version, checked once per use (a mismatch is raised every time)."""
    return require_installed("opacus", OPACUS_SUPPORTED, OPACUS_FIX, needed_for)


_SECURE_NOISE = "fedshield's DP optimizer (client/dp_sgd.py)"


def refuse_if_already_noised(summed_grad: torch.Tensor) -> None:
    """Raise ValueError if this clipped sum was already released: Opacus's own guard
    (``_check_processed_flag``), kept in fedshield's noise step that replaces Opacus's."""
    require_opacus(_SECURE_NOISE)
    from opacus.optimizers.optimizer import _check_processed_flag

    _check_processed_flag(summed_grad)


def mark_noised(summed_grad: torch.Tensor) -> None:
    """Mark a clipped sum as released (``_mark_as_processed``), so that the optimizer
    refuses to add noise to it again until ``zero_grad``."""
    require_opacus(_SECURE_NOISE)
    from opacus.optimizers.optimizer import _mark_as_processed

    _mark_as_processed(summed_grad)


def prv_dprv(accountant: PRVAccountant, eps_error: float, delta_error: float) -> Any:
    """The accountant's history as one discretised privacy random variable
    (``PRVAccountant._get_dprv``): its ``compute_epsilon`` gives the lower and upper
    bounds, where the public ``get_epsilon`` returns the upper one only."""
    require_opacus("the auditor's PRV epsilon interval (audit/owners.py)")
    return accountant._get_dprv(eps_error=eps_error, delta_error=delta_error)
