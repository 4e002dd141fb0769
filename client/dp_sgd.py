"""DP-SGD's moving parts with fedshield's randomness: Opacus's ``make_private`` (hooks,
Poisson sampling, mean loss, RDP accountant) with the sampler and the noise drawn from
:class:`SecureRandom`.

Guarantee: every step includes each record independently at the sample rate, drawn
from ChaCha20 with a fresh 256-bit key (nothing the server sends seeds it); every
per-sample gradient is clipped (flat or per tensor, as the model's spec says), a
non-finite one counts as zero; one Gaussian draw of std ``noise_multiplier x
max_grad_norm`` is added to each logical batch's sum, which Opacus's flag guards from
being released twice; the accountant records every step. Opacus's own secure mode needs
the unmaintained torchcsprng, hence this module. client/train.py runs the loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer, DPPerLayerOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import Sampler

from fedshield.client.secure_random import SecureRandom
from fedshield.common.opacus_compat import mark_noised, refuse_if_already_noised


class PoissonBatchSampler(Sampler[list[int]]):
    """``steps`` batches; each includes each of ``num_records`` records independently
    with probability ``sample_rate`` (drawn from ``rng``). A batch may be empty: it is
    still a step, which the accountant counts and which releases noise on a zero sum."""

    def __init__(self, num_records: int, sample_rate: float, steps: int, rng: SecureRandom):
        self.num_records = num_records
        self.sample_rate = sample_rate
        self.steps = steps
        self.rng = rng

    def __len__(self) -> int:
        return self.steps

    def index_batches(self, device: torch.device) -> Iterator[torch.Tensor]:
        """Each step's sampled record indices, ascending, as an int64 tensor on ``device``."""
        for _ in range(self.steps):
            drawn = np.flatnonzero(self.rng.poisson_mask(self.num_records, self.sample_rate))
            yield torch.from_numpy(drawn).to(device)

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.index_batches(torch.device("cpu")):
            yield indices.tolist()


class _SecureNoise:
    """Opacus DP optimizer behaviour with the noise drawn from :class:`SecureRandom`."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, secure_random: SecureRandom, **kw):
        super().__init__(optimizer, **kw)
        self.secure_random = secure_random

    def clip_and_accumulate(self) -> None:
        # A crafted global model can make one record's gradient non-finite; a NaN passes
        # clipping and would reveal that such a record exists. It contributes zero instead.
        for p in self.params:
            samples = getattr(p, "grad_sample", None)
            for part in samples if isinstance(samples, list) else [samples]:
                if part is not None:
                    torch.nan_to_num_(part, nan=0.0, posinf=0.0, neginf=0.0)
        super().clip_and_accumulate()

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        sums = [p.summed_grad for p in self.params]
        for summed in sums:
            # Opacus's guard that no clipped sum is released twice.
            refuse_if_already_noised(summed)
        # One draw (and one host-to-device copy) for every parameter: independent
        # N(0, std^2) entries either way, without a call per tensor.
        sizes = [summed.numel() for summed in sums]
        flat = sums[0].new_empty(sum(sizes))
        noises = self.secure_random.normal_like(flat, std).split(sizes)
        for p, summed, noise in zip(self.params, sums, noises, strict=True):
            p.grad = (summed + noise.view_as(summed)).view_as(p)
            mark_noised(summed)


class SecureDPOptimizer(_SecureNoise, DPOptimizer):
    """Flat clipping (one norm over all parameters), secure noise."""


class SecurePerLayerDPOptimizer(_SecureNoise, DPPerLayerOptimizer):
    """Per-tensor clipping (``ModelSpec.clipping`` of an encoder top), secure noise."""


_DP_OPTIMIZER_FOR = {"flat": SecureDPOptimizer, "per_layer": SecurePerLayerDPOptimizer}


def zero_per_sample_gradients(optimizer: DPOptimizer) -> None:
    """Per-sample gradients of an empty batch, so its step is noise on a zero sum.

    The forward pass is skipped rather than run on zero records: BERT's attention
    cannot reshape a batch of none.
    """
    for p in optimizer.params:
        p.grad_sample = p.new_zeros((0, *p.shape))


@dataclass(frozen=True)
class PrivateTraining:
    module: GradSampleModule
    optimizer: DPOptimizer
    sampler: PoissonBatchSampler
    accountant: RDPAccountant


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    num_records: int,
    released_count: int,
    steps_per_epoch: int,
    noise_multiplier: float,
    clipping: dict,
) -> PrivateTraining:
    """Opacus's ``make_private`` (hooks, Poisson sampling, mean loss, RDP accountant),
    with every random draw from one fresh :class:`SecureRandom`.

    The sample rate, the step count and the mean's divisor come from ``released_count``
    (the owner's DP count), never from ``num_records``: an update divided by the exact
    count would tell D from D minus one record. Each of the ``num_records`` records is
    still sampled independently at that rate, as the accountant assumes.
    """
    rng = SecureRandom()
    sample_rate = 1.0 / steps_per_epoch  # exactly the planned event's rate
    sampler = PoissonBatchSampler(num_records, sample_rate, steps_per_epoch, rng)
    ModuleValidator.validate(model, strict=True)
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    module.forbid_grad_accumulation()
    dp_optimizer = _DP_OPTIMIZER_FOR[clipping["clipping"]](
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=clipping["max_grad_norm"],
        # Opacus truncates (int); round avoids 49 * (1 / 49) = 0.999... giving 0.
        expected_batch_size=max(1, round(released_count * sample_rate)),
        loss_reduction="mean",
        secure_random=rng,
    )
    accountant = RDPAccountant()
    dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return PrivateTraining(module, dp_optimizer, sampler, accountant)
