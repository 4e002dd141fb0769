"""Privacy units at one owner (issue 25): which records are one person's, and how a
sampled set of units becomes the passes DP-SGD runs.

Guarantee: a unit is clipped once, to C, as one contribution: units that fit a pass are
taken whole in it, and a unit larger than the physical batch is cut into passes of its
own whose per-unit sums are carried until its last pass, where it is clipped (so no pass
holds more records than the physical batch, whatever the units' sizes: the memory bound
cannot depend on the data); a unit holds at most ``max_records`` records, a fresh
CSPRNG sample of them when it has more, drawn once per round; ``group_per_unit`` turns
Opacus's per-record gradients into per-unit sums before the DP optimizer clips them. The
design and why the sum: docs/design/privacy-unit.md.
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
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """The sampled ``units`` as passes of at most ``physical_records`` records each:
        (record indices, each record's unit position within the pass, whether the pass's
        one unit goes on in the next pass). Units that fit are packed whole; a larger unit
        is cut into passes of its own, the flag set on all but its last."""
        device = units.device
        chosen = [self.members[u] for u in units.tolist()]
        start = 0
        while start < len(chosen):
            if len(chosen[start]) > physical_records:
                rows = chosen[start]
                for cut in range(0, len(rows), physical_records):
                    chunk = torch.from_numpy(rows[cut : cut + physical_records]).to(device)
                    more = cut + physical_records < len(rows)
                    yield chunk, torch.zeros(len(chunk), dtype=torch.long, device=device), more
                start += 1
                continue
            stop, size = start + 1, len(chosen[start])
            while (
                stop < len(chosen)
                and len(chosen[stop]) <= physical_records
                and size + len(chosen[stop]) <= physical_records
            ):
                size += len(chosen[stop])
                stop += 1
            part = chosen[start:stop]
            records = np.concatenate(part)
            positions = np.repeat(np.arange(len(part)), [len(rows) for rows in part])
            order = np.argsort(records, kind="stable")  # gathers take ascending rows
            yield (
                torch.from_numpy(records[order]).to(device),
                torch.from_numpy(positions[order]).to(device),
                False,
            )
            start = stop


def carry_unit(params: list[torch.nn.Parameter], carried: list[torch.Tensor] | None) -> list:
    """A unit cut over passes: its per-unit sums so far (``carried`` plus this pass's),
    taken out of the parameters so that nothing clips or accumulates them yet."""
    sums = []
    for i, p in enumerate(params):
        sums.append(p.grad_sample if carried is None else carried[i] + p.grad_sample)
        p.grad_sample = None
        p.grad = None
    return sums


def add_carried(params: list[torch.nn.Parameter], carried: list[torch.Tensor]) -> None:
    """The last pass of a cut unit: its earlier passes' sums added to this one's."""
    for p, earlier in zip(params, carried, strict=True):
        p.grad_sample = p.grad_sample + earlier


def group_per_unit(params: list[torch.nn.Parameter], positions: torch.Tensor) -> None:
    """Replace each parameter's per-record gradients (records, ...) by per-unit sums
    (units, ...): the DP optimizer then clips each unit's whole contribution to C."""
    units = int(positions.max()) + 1 if len(positions) else 0
    for p in params:
        samples = p.grad_sample
        grouped = samples.new_zeros((units, *samples.shape[1:]))
        p.grad_sample = grouped.index_add_(0, positions, samples)
