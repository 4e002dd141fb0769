"""Local training on one data owner's encoded records: DP-SGD with Opacus, or plain SGD.

Guarantee: with DP on, every step Poisson-samples each record independently at rate
``1 / steps_per_epoch`` (``steps_per_epoch = ceil(n / batch_size)``), every per-sample
gradient is clipped to ``max_grad_norm`` (Opacus's ``GradSampleModule`` and DP
optimizer) and Gaussian noise of std ``noise_multiplier * max_grad_norm`` is added to
each step's sum. Both the sampling and the noise come from :class:`SecureRandom`
(ChaCha20, a fresh 256-bit key per call): nothing the server sends seeds them, and
torch's generators are not used. An empty sample is still a step (noise on a zero
sum). The returned :class:`DpEvent` is read from Opacus's own accountant after
training, so the ledger charges exactly what training did.

This assembles what Opacus's ``PrivacyEngine.make_private`` does (its secure mode
needs the unmaintained torchcsprng), with the noise and the sampler replaced.

The records move to the training device once per call; each step's sample is an index
tensor, and each pass gathers its rows on the device (no per-record collation, no
per-pass host copies). A logical batch larger than the physical batch size is
processed in passes of at most that many records (the DP optimizer accumulates clipped
sums across them, as Opacus's ``BatchMemoryManager`` has it; gradient accumulation
without DP); one optimizer step, and one accountant step, per logical batch either way.
Float32 matmuls run at full precision while training, so clipping is exact to float32
rounding on every device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from fedshield.client.dp_sgd import make_private, zero_per_sample_gradients
from fedshield.client.secure_random import SecureRandom
from fedshield.client.units import UnitMembers, add_carried, carry_unit, group_per_unit
from fedshield.common.dp_event import DpEvent
from fedshield.common.errors import PolicyRefusal
from fedshield.common.model import ModelInputs, ModelSpec, as_tensors, head_bias
from fedshield.common.plan import Plan
from fedshield.common.privacy import ADD_REMOVE, noise_for_target_epsilon


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
    physical_batch_size: int = 0  # 0: ModelSpec.default_physical_batch_size decides
    encoder_learning_rate: float = 0.0  # pretrained layers (minilm fine-tuning) only
    # False: the head's bias stays as the server's model holds it (the log of the
    # federation's published class priors, server/class_priors.py) and every record's
    # clipped norm goes to the weights; True: the bias is trained with them.
    train_bias: bool = False
    # Privacy units (client/units.py): the most records one unit contributes in a round.
    max_records_per_unit: int = 64
    # The spec that built the model declares its parameter groups and clipping mode.
    model_spec: ModelSpec = ModelSpec()

    @classmethod
    def from_plan(cls, plan: Plan) -> TrainSettings:
        """The plan's training keys (noise as given; see client.app.training_settings)."""
        return cls(
            local_epochs=plan.local_epochs,
            batch_size=plan.batch_size,
            learning_rate=plan.learning_rate,
            momentum=plan.momentum,
            max_grad_norm=plan.max_grad_norm,
            noise_multiplier=plan.noise_multiplier,
            dp=plan.dp,
            physical_batch_size=plan.physical_batch_size,
            encoder_learning_rate=plan.encoder_learning_rate,
            train_bias=plan.train_bias,
            model_spec=ModelSpec.from_config(plan),
        )


@dataclass(frozen=True)
class TrainOutcome:
    train_loss: float
    dp_event: DpEvent | None


def effective_batch_size(num_examples: int, settings: TrainSettings) -> int:
    return settings.batch_size if settings.batch_size > 0 else max(num_examples, 1)


def _steps_per_epoch(num_examples: int, settings: TrainSettings) -> int:
    """``len`` of a plain ``DataLoader`` of ``batch_size`` over the records; at least 1 (a
    released count of 0 still trains: one step of noise on a zero sum per epoch)."""
    return max(1, math.ceil(num_examples / effective_batch_size(num_examples, settings)))


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


# Noise for a run is calibrated once per owner before any budget check; beyond this many
# steps that search costs minutes of the owner's CPU, and no real plan comes near
# (100 rounds x 2,000 steps).
MAX_PLANNED_STEPS = 10**7
# Steps one round may take, whatever the noise: a plan of tiny batches, many epochs and
# huge noise costs almost no budget but hours of the owner's CPU (3 ms a step for the
# default head); 20,000 is 10x an honest plan's round (batch 64 over 25,000 records,
# 5 local epochs).
MAX_STEPS_PER_ROUND = 20_000


def check_plan_cost(planned: DpEvent, rounds: int) -> None:
    """Refuse a round (or run) longer than an owner computes, before anything is computed.

    On the planned event, itself a function of the plan and the released count."""
    if planned.steps > MAX_STEPS_PER_ROUND or planned.steps * rounds > MAX_PLANNED_STEPS:
        raise PolicyRefusal(
            f"the plan asks for {planned.steps} steps a round over {rounds} rounds; this "
            f"owner runs at most {MAX_STEPS_PER_ROUND} a round and {MAX_PLANNED_STEPS} a run "
            "(raise batch-size or lower local-epochs)"
        )


def calibrated(
    settings: TrainSettings,
    released_count: int,
    rounds: int,
    target_epsilon: float,
    delta: float,
    *,
    with_events: tuple[DpEvent, ...] = (),
    relation: str = ADD_REMOVE,
) -> TrainSettings:
    """``settings`` with the smallest noise for which ``rounds`` rounds of this training,
    planned on ``released_count`` records (the owner's count as it may leave) and
    accounted under ``relation``, compose with ``with_events`` (the count's release) to
    at most ``target_epsilon`` at ``delta``."""
    one_round = planned_dp_event(released_count, settings)
    check_plan_cost(one_round, rounds)
    planned_steps = one_round.steps * rounds
    sigma = noise_for_target_epsilon(
        target_epsilon,
        delta,
        one_round.sample_rate,
        planned_steps,
        with_events=with_events,
        relation=relation,
    )
    return replace(settings, noise_multiplier=sigma)


# torch's warning (torch/utils/hooks.py) when a full backward hook fires with no input
# requiring a gradient; the start of the message, a regex for warnings.filterwarnings.
_OUTPUT_ONLY_BACKWARD_HOOK = "Full backward hook is firing when gradients are computed"


@contextmanager
def _full_precision_matmuls() -> Iterator[None]:
    """Float32 matmuls without TF32 (10-bit mantissas) while training, whatever the process
    set: per-sample norms, and so the clipping bound, stay exact to float32 rounding."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@dataclass(frozen=True)
class _DeviceRecords:
    """One owner's encoded records and labels, moved to the training device once."""

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor

    @classmethod
    def load(cls, inputs: ModelInputs, labels: np.ndarray, device: torch.device) -> _DeviceRecords:
        return cls(
            tuple(part.to(device) for part in as_tensors(inputs)),
            torch.from_numpy(np.asarray(labels)).long().to(device),
        )

    def __len__(self) -> int:
        return len(self.targets)

    def rows(self, indices: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The records at ascending, distinct ``indices``, gathered on the device (all of
        them, in order, without a copy)."""
        if len(indices) == len(self):
            return list(self.inputs), self.targets
        return [part[indices] for part in self.inputs], self.targets[indices]


def _passes(indices: torch.Tensor, physical_batch_size: int) -> tuple[torch.Tensor, ...]:
    """A logical batch's indices in near-equal passes of at most ``physical_batch_size``;
    an empty batch is one empty pass."""
    return torch.tensor_split(indices, max(1, math.ceil(len(indices) / physical_batch_size)))


def _train_logical_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    records: _DeviceRecords,
    indices: torch.Tensor,
    physical_batch_size: int,
    dp: bool,
) -> tuple[torch.Tensor, int]:
    """One optimizer step on the records at ``indices``, in passes; returns the summed
    loss (on the device: no synchronisation per pass) and the records seen.

    With DP each pass's clipped per-sample gradients are added to the DP optimizer's sum,
    and only the last pass's ``step`` adds noise and moves the weights (an empty batch
    is one pass of zero gradients). Without DP the passes accumulate the batch's mean
    gradient.
    """
    loss_sum, seen = torch.zeros((), device=records.targets.device), 0
    passes = _passes(indices, physical_batch_size)
    for number, part in enumerate(passes, start=1):
        last = number == len(passes)
        if dp:
            # Opacus's "skip" here means "accumulate, no noise yet" for every pass but the
            # last: one logical batch is one noisy step, as the accountant counts it.
            optimizer.signal_skip_step(do_skip=not last)
        if len(part):
            inputs, targets = records.rows(part)
            loss = nn.functional.cross_entropy(model(*inputs), targets)
            # Opacus's per-sample gradients undo the mean whatever the pass's size.
            (loss if dp or len(passes) == 1 else loss * (len(part) / len(indices))).backward()
            loss_sum += loss.detach() * len(part)
            seen += len(part)
        else:
            zero_per_sample_gradients(optimizer)
        if dp or last:
            optimizer.step()
            optimizer.zero_grad()
    return loss_sum, seen


def _train_unit_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    records: _DeviceRecords,
    members: UnitMembers,
    units: torch.Tensor,
    physical_batch_size: int,
) -> tuple[torch.Tensor, int]:
    """One DP step on the sampled ``units``: passes of at most the physical batch, each
    unit's per-record gradients summed (``group_per_unit``, carried over the passes of a
    unit larger than a pass: ``carry_unit``) before the optimizer clips them, so a unit is
    one contribution of norm at most C; one noisy step per logical batch."""
    loss_sum, seen = torch.zeros((), device=records.targets.device), 0
    passes = list(members.passes(units, physical_batch_size))
    passes = passes or [(units[:0], units[:0], False)]
    carried = None
    for number, (rows, positions, more) in enumerate(passes, start=1):
        if len(rows):
            inputs, targets = records.rows(rows)
            loss = nn.functional.cross_entropy(model(*inputs), targets)
            loss.backward()
            group_per_unit(optimizer.params, positions)
            loss_sum += loss.detach() * len(rows)
            seen += len(rows)
            if more:  # not clipped until the unit is whole
                carried = carry_unit(optimizer.params, carried)
                continue
            if carried is not None:
                add_carried(optimizer.params, carried)
                carried = None
        else:
            zero_per_sample_gradients(optimizer)
        optimizer.signal_skip_step(do_skip=number != len(passes))
        optimizer.step()
        optimizer.zero_grad()
    return loss_sum, seen


def train_locally(
    model: nn.Module,
    inputs: ModelInputs,
    labels: np.ndarray,
    settings: TrainSettings,
    device: torch.device,
    released_count: int | None = None,
    units: np.ndarray | None = None,
) -> TrainOutcome:
    """Train ``model`` in place on (inputs, labels); returns loss and the DP event.

    With DP, ``released_count`` (the owner's count as it may leave, client/count.py)
    sets the sample rate, the steps and the mean's divisor; None: the exact count (a
    non-private round, or a bench that releases nothing).

    ``device`` is the owner's; a linear head with small logical batches trains on the
    CPU instead (``ModelSpec.training_device``). A ``physical_batch_size`` of 0 is
    chosen from that device and the model (``ModelSpec.default_physical_batch_size``).

    ``units`` (one privacy-unit code 0..U-1 per record; DP only): units are sampled and
    clipped instead of records (client/units.py), and ``released_count`` counts units.

    Takes no seed: a server that could predict a client's noise could subtract it, and
    one that knew which records were sampled would void the amplification the
    accountant assumes.
    """
    spec = settings.model_spec
    num_records = len(labels)
    logical_batch = effective_batch_size(num_records, settings)
    device = spec.training_device(device, expected_batch=logical_batch)
    records = _DeviceRecords.load(inputs, labels, device)
    model.to(device)
    model.train()
    head_bias(model).requires_grad_(settings.train_bias)
    # The plan may ask for smaller passes, never for more memory than the device has.
    fitting = spec.default_physical_batch_size(model, device, num_records)
    physical = min(settings.physical_batch_size or fitting, fitting)
    groups = spec.param_groups(model, settings.learning_rate, settings.encoder_learning_rate)
    optimizer = torch.optim.SGD(groups, lr=settings.learning_rate, momentum=settings.momentum)
    members = (
        UnitMembers.draw(units, settings.max_records_per_unit, SecureRandom())
        if units is not None and settings.dp
        else None
    )
    sampled_items = num_records if members is None else len(members)
    planned_on = sampled_items if released_count is None else released_count
    private = (
        make_private(
            model,
            optimizer,
            sampled_items,
            planned_on,
            _steps_per_epoch(planned_on, settings),
            settings.noise_multiplier,
            spec.clipping(model, settings.max_grad_norm),
        )
        if settings.dp
        else None
    )
    if private is not None:
        model, optimizer = private.module, private.optimizer

    def batches() -> Iterator[torch.Tensor]:
        if private is not None:
            return private.sampler.index_batches(device)
        # No DP claim without DP: torch's process-wide generator shuffles. Sorting within
        # a batch changes nothing but the order of a sum, and keeps gathers in order.
        shuffled = torch.randperm(num_records, device=device).split(logical_batch)
        return (batch.sort().values for batch in shuffled)

    total_loss, seen = torch.zeros((), device=device), 0
    with _full_precision_matmuls(), warnings.catch_warnings():
        # Opacus's per-layer backward hooks read only grad_output; that the records (the
        # first layer's input) need no gradient is expected, not worth a warning per step.
        warnings.filterwarnings("ignore", message=_OUTPUT_ONLY_BACKWARD_HOOK)
        for _ in range(settings.local_epochs):
            for indices in batches():
                loss_sum, count = (
                    _train_logical_batch(
                        model, optimizer, records, indices, physical, private is not None
                    )
                    if members is None
                    else _train_unit_batch(model, optimizer, records, members, indices, physical)
                )
                total_loss += loss_sum
                seen += count
    event = DpEvent.merge_history(private.accountant.history) if private is not None else None
    return TrainOutcome(train_loss=float(total_loss) / max(seen, 1), dp_event=event)
