"""Privacy units at one owner (issue 25): which records are one person's, and how a
sampled set of units becomes the passes DP-SGD runs.

Guarantee: every unit's records are taken together (never split between two passes, so
a unit is clipped once, to C, as one contribution); a unit holds at most
``max_records`` records, a fresh CSPRNG sample of them when it has more, drawn once per
round; ``group_per_unit`` turns Opacus's per-record gradients into per-unit sums before
the DP optimizer clips them. The design and why the sum: docs/design/privacy-unit.md.

Not yet wired to owners: ``client/train.py`` runs it when given units; the data column,
the count of units and the ledger's unit come next (issue 25).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedshield.client.secure_random import SecureRandom


@dataclass(frozen=True)
class UnitMembers:
    """Each unit's record indices for one round (at most ``max_records`` each)."""

    members: tuple[np.ndarray, ...]

    @classmethod
    def draw(cls, unit_of_record: np.ndarray, max_records: int, rng: SecureRandom) -> UnitMembers:
        """Units from the per-record unit codes (0..U-1), each capped at ``max_records``
        by a uniformly random subset (ranks of CSPRNG draws) when it has more."""
        codes = np.asarray(unit_of_record, dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(codes.max(initial=-1) + 2))
        members = []
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            rows = order[start:stop]
            if len(rows) > max_records:
                rows = np.sort(rows[np.argsort(rng.uniform(len(rows)))[:max_records]])
            members.append(rows)
        return cls(tuple(members))

    def __len__(self) -> int:
        return len(self.members)

    def passes(
        self, units: torch.Tensor, physical_records: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The sampled ``units`` as passes of whole units, each of at most
        ``physical_records`` records unless one unit alone is larger (it then has a pass
        of its own): (record indices, the record's unit position within the pass)."""
        chosen = [self.members[u] for u in units.tolist()]
        start = 0
        while start < len(chosen):
            stop, size = start + 1, len(chosen[start])
            while stop < len(chosen) and size + len(chosen[stop]) <= physical_records:
                size += len(chosen[stop])
                stop += 1
            part = chosen[start:stop]
            records = np.concatenate(part)
            positions = np.repeat(np.arange(len(part)), [len(rows) for rows in part])
            order = np.argsort(records, kind="stable")  # gathers take ascending rows
            yield (
                torch.from_numpy(records[order]).to(units.device),
                torch.from_numpy(positions[order]).to(units.device),
            )
            start = stop


def group_per_unit(params: list[torch.nn.Parameter], positions: torch.Tensor) -> None:
    """Replace each parameter's per-record gradients (records, ...) by per-unit sums
    (units, ...): the DP optimizer then clips each unit's whole contribution to C."""
    units = int(positions.max()) + 1 if len(positions) else 0
    for p in params:
        samples = p.grad_sample
        grouped = samples.new_zeros((units, *samples.shape[1:]))
        p.grad_sample = grouped.index_add_(0, positions, samples)
