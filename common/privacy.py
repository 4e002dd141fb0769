"""Privacy maths: DP events and their composition into epsilon (Opacus's RDP accountant).

Guarantee: epsilon is always computed from the whole list of events a data set has been
through, never summed from per-round epsilons, and with the same accountant (Opacus RDP,
Poisson-subsampled Gaussian) whose assumptions the training loop satisfies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier

from fedshield.common.errors import ConfigError

RDP_ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)


@dataclass(frozen=True)
class DpEvent:
    """``steps`` steps of the Poisson-subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def merge_history(cls, history: Sequence[tuple[float, float, int]]) -> DpEvent:
        """One event from an Opacus accountant's history of one round's training."""
        if len({(sigma, q) for sigma, q, _ in history}) != 1:
            raise ValueError(f"one round must use one (sigma, q), got history {history}")
        sigma, q, _ = history[0]
        return cls(noise_multiplier=sigma, sample_rate=q, steps=sum(s for *_, s in history))


def epsilon_spent(events: Iterable[DpEvent], delta: float) -> float:
    """Epsilon at ``delta`` of all ``events`` composed (RDP, Opacus's default orders)."""
    events = list(events)
    if not events:
        return 0.0
    total = None
    for event in events:
        rdp = compute_rdp(
            q=event.sample_rate,
            noise_multiplier=event.noise_multiplier,
            steps=event.steps,
            orders=RDP_ORDERS,
        )
        total = rdp if total is None else total + rdp
    epsilon, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=total, delta=delta)
    return float(epsilon)


def noise_for_target_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    """The smallest noise multiplier (within 1%) for which ``steps`` steps stay <= target."""
    if target_epsilon <= 0:
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon}")
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
        )
    )


def check_delta(delta: float, num_records: int) -> None:
    """Refuse delta >= 1/N: at that delta 'DP' permits leaking a whole record."""
    if not 0 < delta < 1.0 / num_records:
        raise ConfigError(
            f"delta={delta} must be > 0 and < 1/N = {1.0 / num_records:.3g} for N={num_records} "
            f"records; pick delta well below 1/N, e.g. {10 ** -len(str(num_records)):.0e}"
        )
