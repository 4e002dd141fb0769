"""Local training on one data owner's encoded records: DP-SGD with Opacus, or plain SGD.

Guarantee: with DP on, every step Poisson-samples each record independently at rate
``1 / steps_per_epoch`` (``steps_per_epoch = ceil(n / batch_size)``), every per-sample
gradient is clipped to ``max_grad_norm`` (Opacus's ``GradSampleModule`` and DP
optimizer) and Gaussian noise of std ``noise_multiplier * max_grad_norm`` is added to
each step's sum. Both the sampling and the noise come from :class:`SecureRandom`
(ChaCha20, a fresh 256-bit key per call): nothing the server sends seeds them, and
torch's generators are not used. The returned :class:`DpEvent` is read from Opacus's
own accountant after training, so the ledger charges exactly what training did.

This assembles what Opacus's ``PrivacyEngine.make_private`` does (its secure mode
needs the unmaintained torchcsprng), with the noise and the sampler replaced.

A logical batch larger than ``physical_batch_size`` is processed in passes of at most
that many records (Opacus's ``BatchMemoryManager`` with DP, gradient accumulation
without); one optimizer step, and one accountant step, per logical batch either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer, DPPerLayerOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torch.utils.data._utils.collate import default_collate

from fedshield.client.secure_random import SecureRandom
from fedshield.common.config import RunConfig
from fedshield.common.model import ModelInputs, ModelSpec, as_tensors
from fedshield.common.privacy import DpEvent


@dataclass(frozen=True)
class TrainSettings:
    """How one round of local training runs (sent by the server each round)."""

    local_epochs: int = 1
    batch_size: int = 0  # 0: the whole local data set in every step (sample rate 1)
    learning_rate: float = 1.0
    momentum: float = 0.0
    max_grad_norm: float = 1.0
    noise_multiplier: float = 1.0
    dp: bool = True
    physical_batch_size: int = 0  # 0: the whole logical batch in one pass
    encoder_learning_rate: float = 0.0  # pretrained layers (minilm fine-tuning) only
    # The spec that built the model declares its parameter groups and clipping mode.
    model_spec: ModelSpec = ModelSpec()

    @classmethod
    def from_plan(cls, plan: RunConfig) -> TrainSettings:
        """The plan's training keys (noise as given; see client.app.training_settings)."""
        return cls(
            local_epochs=plan.local_epochs,
            batch_size=plan.batch_size,
            learning_rate=plan.learning_rate,
            momentum=plan.momentum,
            max_grad_norm=plan.max_grad_norm,
            noise_multiplier=plan.noise_multiplier,
            dp=plan.dp,
            physical_batch_size=plan.physical_batch_size
            or ModelSpec.from_config(plan).default_physical_batch_size(),
            encoder_learning_rate=plan.encoder_learning_rate,
            model_spec=ModelSpec.from_config(plan),
        )


@dataclass(frozen=True)
class TrainOutcome:
    train_loss: float
    num_examples: int
    dp_event: DpEvent | None


def effective_batch_size(num_examples: int, settings: TrainSettings) -> int:
    return settings.batch_size if settings.batch_size > 0 else num_examples


def _steps_per_epoch(num_examples: int, settings: TrainSettings) -> int:
    """``len`` of a plain ``DataLoader`` of ``batch_size`` over the records."""
    return math.ceil(num_examples / effective_batch_size(num_examples, settings))


def planned_dp_event(num_examples: int, settings: TrainSettings) -> DpEvent:
    """The DP event one round will cause, computed before training (pre-flight).

    Mirrors Opacus: ``DPDataLoader`` samples at ``1 / len(loader)`` and runs
    ``len(loader)`` steps per epoch, where the loader is a plain ``DataLoader`` of
    ``batch_size``.
    """
    steps_per_epoch = _steps_per_epoch(num_examples, settings)
    return DpEvent(
        noise_multiplier=settings.noise_multiplier,
        sample_rate=1.0 / steps_per_epoch,
        steps=steps_per_epoch * settings.local_epochs,
    )


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

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield np.flatnonzero(self.rng.poisson_mask(self.num_records, self.sample_rate)).tolist()


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
        for p in self.params:
            # Opacus's guard that no clipped sum is released twice.
            _check_processed_flag(p.summed_grad)
            noise = self.secure_random.normal_like(p.summed_grad, std)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class SecureDPOptimizer(_SecureNoise, DPOptimizer):
    """Flat clipping (one norm over all parameters), secure noise."""


class SecurePerLayerDPOptimizer(_SecureNoise, DPPerLayerOptimizer):
    """Per-tensor clipping (``ModelSpec.clipping`` of an encoder top), secure noise."""


_DP_OPTIMIZER_FOR = {"flat": SecureDPOptimizer, "per_layer": SecurePerLayerDPOptimizer}


def _collate_or_empty(dataset: TensorDataset) -> Callable[[list], list[torch.Tensor]]:
    def collate(records: list) -> list[torch.Tensor]:
        # An empty Poisson batch: every input with its shape and dtype, zero rows.
        return default_collate(records) if records else [t[:0] for t in dataset.tensors]

    return collate


def _zero_per_sample_gradients(optimizer: DPOptimizer) -> None:
    """Per-sample gradients of an empty batch, so its step is noise on a zero sum.

    The forward pass is skipped rather than run on zero records: BERT's attention
    cannot reshape a batch of none.
    """
    for p in optimizer.params:
        p.grad_sample = p.new_zeros((0, *p.shape))


@dataclass(frozen=True)
class _PrivateTraining:
    module: GradSampleModule
    optimizer: DPOptimizer
    loader: DataLoader
    accountant: RDPAccountant


def _make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: TensorDataset,
    settings: TrainSettings,
) -> _PrivateTraining:
    """Opacus's ``make_private`` (hooks, Poisson sampling, mean loss, RDP accountant),
    with every random draw from one fresh :class:`SecureRandom`."""
    rng = SecureRandom()
    steps_per_epoch = _steps_per_epoch(len(dataset), settings)
    sample_rate = 1.0 / steps_per_epoch  # exactly planned_dp_event's rate
    loader = DataLoader(
        dataset,
        batch_sampler=PoissonBatchSampler(len(dataset), sample_rate, steps_per_epoch, rng),
        collate_fn=_collate_or_empty(dataset),
    )
    ModuleValidator.validate(model, strict=True)
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    module.forbid_grad_accumulation()
    clipping = settings.model_spec.clipping(model, settings.max_grad_norm)
    dp_optimizer = _DP_OPTIMIZER_FOR[clipping["clipping"]](
        optimizer,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=clipping["max_grad_norm"],
        # Opacus truncates (int); round avoids 49 * (1 / 49) = 0.999... giving 0.
        expected_batch_size=round(len(dataset) * sample_rate),
        loss_reduction="mean",
        secure_random=rng,
    )
    accountant = RDPAccountant()
    dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return _PrivateTraining(module, dp_optimizer, loader, accountant)


def train_locally(
    model: nn.Module,
    inputs: ModelInputs,
    labels: np.ndarray,
    settings: TrainSettings,
    device: torch.device,
) -> TrainOutcome:
    """Train ``model`` in place on (inputs, labels); returns loss and the DP event.

    Takes no seed: a server that could predict a client's noise could subtract it, and
    one that knew which records were sampled would void the amplification the
    accountant assumes.
    """
    dataset = TensorDataset(*as_tensors(inputs), torch.from_numpy(labels).long())
    model.to(device)
    model.train()
    groups = settings.model_spec.param_groups(
        model, settings.learning_rate, settings.encoder_learning_rate
    )
    optimizer = torch.optim.SGD(groups, lr=settings.learning_rate, momentum=settings.momentum)
    accountant = None
    if settings.dp:
        private = _make_private(model, optimizer, dataset, settings)
        model, optimizer, loader = private.module, private.optimizer, private.loader
        accountant = private.accountant
    else:
        # No DP claim without DP: torch's process-wide generator shuffles.
        batch_size = effective_batch_size(len(labels), settings)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    criterion = nn.CrossEntropyLoss()
    physical = settings.physical_batch_size
    total_loss, seen = 0.0, 0

    def forward_backward(xs: list[torch.Tensor], y: torch.Tensor, weight: float) -> None:
        nonlocal total_loss, seen
        if not len(y):  # only Poisson sampling draws an empty batch
            _zero_per_sample_gradients(optimizer)
            return
        loss = criterion(model(*[x.to(device) for x in xs]), y.to(device))
        (loss * weight if weight != 1.0 else loss).backward()
        total_loss += loss.item() * len(y)
        seen += len(y)

    for _ in range(settings.local_epochs):
        # Poisson sampling can draw an empty batch: it is still a step the accountant
        # counts (noise on a zero sum), so it is not skipped.
        if accountant is not None and physical:
            # The DP optimizer skips its step until a logical batch's last pass.
            with BatchMemoryManager(
                data_loader=loader, max_physical_batch_size=physical, optimizer=optimizer
            ) as passes:
                for *xs, y in passes:
                    forward_backward(xs, y, 1.0)
                    optimizer.step()
                    optimizer.zero_grad()
            continue
        for *xs, y in loader:
            size = physical or max(len(y), 1)
            starts = range(0, max(len(y), 1), size)
            for start in starts:
                part = slice(start, start + size)
                weight = 1.0 if len(starts) == 1 else len(y[part]) / len(y)
                forward_backward([x[part] for x in xs], y[part], weight)
            optimizer.step()
            optimizer.zero_grad()
    event = DpEvent.merge_history(accountant.history) if accountant is not None else None
    return TrainOutcome(
        train_loss=total_loss / max(seen, 1), num_examples=len(labels), dp_event=event
    )
