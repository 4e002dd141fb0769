"""The DP event record: one class that the owner's accountant, its ledger, its audit
entries and the auditor's recomputation all share (as dp-accounting's ``dp_event.py``).

Guarantee: an event is ``steps`` steps of the Poisson-subsampled Gaussian mechanism at
``sample_rate`` with ``noise_multiplier``; the ledger stores it under Python names
(``as_dict``), audit entries under kebab-case keys (``as_entry``), and both read back to
the same event. No heavy imports: the auditor reads events without Opacus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DpEvent:
    """``steps`` steps of the Poisson-subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def as_dict(self) -> dict[str, Any]:
        """The ledger's form (``noise_multiplier``, ``sample_rate``, ``steps``)."""
        return asdict(self)

    def as_entry(self) -> dict[str, Any]:
        """An audit entry's form (``noise-multiplier``, ``sample-rate``, ``steps``)."""
        return {
            "noise-multiplier": self.noise_multiplier,
            "sample-rate": self.sample_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_entry(cls, value: dict | list | tuple) -> DpEvent:
        """From an audit entry; entries written before the named form are positional."""
        if isinstance(value, dict):
            return cls(
                float(value["noise-multiplier"]), float(value["sample-rate"]), int(value["steps"])
            )
        sigma, q, steps = value
        return cls(float(sigma), float(q), int(steps))

    @classmethod
    def merge_history(cls, history: Sequence[tuple[float, float, int]]) -> DpEvent:
        """One event from an Opacus accountant's history of one round's training."""
        if len({(sigma, q) for sigma, q, _ in history}) != 1:
            raise ValueError(f"one round must use one (sigma, q), got history {history}")
        sigma, q, _ = history[0]
        return cls(noise_multiplier=sigma, sample_rate=q, steps=sum(s for *_, s in history))
