"""Local training on one data owner's encoded records: DP-SGD with Opacus, or plain SGD.

Guarantee: with DP on, batches are drawn by Poisson sampling at rate
``batch_size / n`` (Opacus's ``DPDataLoader``), every per-sample gradient is clipped to
``max_grad_norm`` and Gaussian noise of std ``noise_multiplier * max_grad_norm`` is added
to each step's sum. The returned :class:`DpEvent` is read from Opacus's own accountant
after training, so the ledger charges exactly what training did.

A logical batch larger than ``physical_batch_size`` is processed in passes of at most
that many records (Opacus's ``BatchMemoryManager`` with DP, gradient accumulation
without); one optimizer step, and one accountant step, per logical batch either way.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass

import numpy as np
import torch
from fedshield.common.config import RunConfig
from fedshield.common.model import ModelInputs, ModelSpec, as_tensors
from fedshield.common.privacy import DpEvent
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


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
        )


@dataclass(frozen=True)
class TrainOutcome:
    train_loss: float
    num_examples: int
    dp_event: DpEvent | None


def effective_batch_size(num_examples: int, settings: TrainSettings) -> int:
    return settings.batch_size if settings.batch_size > 0 else num_examples


def planned_dp_event(num_examples: int, settings: TrainSettings) -> DpEvent:
    """The DP event one round will cause, computed before training (pre-flight).

    Mirrors Opacus: ``DPDataLoader`` samples at ``1 / len(loader)`` and runs
    ``len(loader)`` steps per epoch, where the loader is a plain ``DataLoader`` of
    ``batch_size``.
    """
    steps_per_epoch = math.ceil(num_examples / effective_batch_size(num_examples, settings))
    return DpEvent(
        noise_multiplier=settings.noise_multiplier,
        sample_rate=1.0 / steps_per_epoch,
        steps=steps_per_epoch * settings.local_epochs,
    )


def clipping_for(model: nn.Module, max_grad_norm: float) -> dict:
    """Opacus's clipping arguments for ``model``: one flat norm, or per tensor.

    A pretrained encoder top clips its head and its layers apart
    (``MiniLMTop.max_grad_norms``); the norms' L2 total is ``max_grad_norm`` either way,
    so the noise (``noise_multiplier`` times that total) and the epsilon are unchanged.
    """
    if hasattr(model, "max_grad_norms"):
        return {"max_grad_norm": model.max_grad_norms(max_grad_norm), "clipping": "per_layer"}
    return {"max_grad_norm": max_grad_norm, "clipping": "flat"}


def _quiet_opacus_import():
    # Opacus switches the "flwr" logger to DEBUG on import; put it back.
    level = logging.getLogger("flwr").level
    import opacus

    logging.getLogger("flwr").setLevel(level)
    return opacus


def train_locally(
    model: nn.Module,
    inputs: ModelInputs,
    labels: np.ndarray,
    settings: TrainSettings,
    device: torch.device,
    seed: int | None = None,
) -> TrainOutcome:
    """Train ``model`` in place on (inputs, labels); returns loss and the DP event.

    ``seed`` is for tests only. In the product it stays None: batch sampling and noise
    are then seeded from the OS's entropy, because a server that could predict a
    client's noise could subtract it, and one that knew which records were sampled would
    void the amplification the accountant assumes.
    """
    seed = secrets.randbits(62) if seed is None else seed
    generator = torch.Generator().manual_seed(seed)
    noise_generator = torch.Generator(device=device).manual_seed(seed + 1)
    dataset = TensorDataset(*as_tensors(inputs), torch.from_numpy(labels).long())
    batch_size = effective_batch_size(len(labels), settings)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    model.to(device)
    model.train()
    groups = (
        model.param_groups(settings.learning_rate, settings.encoder_learning_rate)
        if hasattr(model, "param_groups")  # a pretrained encoder top (common/minilm.py)
        else model.parameters()
    )
    optimizer = torch.optim.SGD(groups, lr=settings.learning_rate, momentum=settings.momentum)
    criterion = nn.CrossEntropyLoss()
    physical = settings.physical_batch_size
    engine = None
    if settings.dp:
        opacus = _quiet_opacus_import()
        engine = opacus.PrivacyEngine(accountant="rdp", secure_mode=False)
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=settings.noise_multiplier,
            **clipping_for(model, settings.max_grad_norm),
            poisson_sampling=True,
            noise_generator=noise_generator,
        )
    total_loss, seen = 0.0, 0

    def forward_backward(xs: list[torch.Tensor], y: torch.Tensor, weight: float) -> None:
        nonlocal total_loss, seen
        loss = criterion(model(*[x.to(device) for x in xs]), y.to(device))
        (loss * weight if weight != 1.0 else loss).backward()
        if len(y):
            total_loss += loss.item() * len(y)
            seen += len(y)

    for _ in range(settings.local_epochs):
        # Poisson sampling can draw an empty batch: it is still a step the accountant
        # counts and Opacus handles it (noise on a zero sum), so it is not skipped.
        if engine is not None and physical:
            from opacus.utils.batch_memory_manager import BatchMemoryManager

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
    event = None
    if engine is not None:
        history = engine.accountant.history
        event = DpEvent.merge_history(history)
    return TrainOutcome(
        train_loss=total_loss / max(seen, 1), num_examples=len(labels), dp_event=event
    )
