"""Guarantee: every random draw of DP training comes from ChaCha20 keyed with 256 bits
from the operating system's CSPRNG (``os.urandom``); the key never leaves the process
and nothing the server sends (no seed, no setting) reaches it.

Why not torch's generators: ``torch.Generator().manual_seed(s)`` keeps 32 bits of ``s``
for CPU Mersenne Twister streams, so a server that makes one output row gradient-free
sees pure noise there, searches the 2^32 seeds, regenerates all the noise and subtracts
it. Opacus's own ``secure_mode`` needs torchcsprng, which is unmaintained.

Floating-point samplers. Mironov (CCS 2012, "On significance of the least significant
bits for differential privacy") showed that a textbook floating-point Laplace sampler
leaks: the set of doubles it can output depends on the value it was added to, so the
low bits of a release can identify the input. Jin et al. (IEEE S&P 2022, "Are we there
yet? Timing and floating-point attacks on differential privacy systems") carried the
attack over to Gaussian samplers (Box-Muller, polar) and to Opacus. What this module
does: uniforms on the full 53-bit grid of (0, 1), Box-Muller in float64, scaled by the
standard deviation in float64; training then casts the noise to the parameters' dtype
(float32), adds it to the clipped gradient sum, scales by ``lr / expected_batch_size``
and adds the result to the weights, so what leaves the client is a float32 weight in
which the float64 sample's low bits have been rounded away twice. That makes the
published attacks, which read those low bits, much harder; it is not a proof. Residual
risk, stated plainly: this is neither Mironov's snapping mechanism nor a discrete
Gaussian, so no formal guarantee covers the floating-point gaps. The formal fix is the
discrete Gaussian of Canonne, Kamath and Steinke (NeurIPS 2020, "The discrete Gaussian
for differential privacy") on a fixed-point gradient grid; it is not implemented here.
Box-Muller also truncates the tails at about 8.6 standard deviations (u >= 2^-53),
an event of probability below 1e-17, far under any delta in use.

Use a fresh :class:`SecureRandom` per training call; it is not thread-safe.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_KEY_BYTES = 32  # 256 bits of secret state
# A new key well before ChaCha20's 32-bit block counter (2^32 blocks of 64 bytes) could
# wrap, whatever the OpenSSL build does on overflow.
_STREAM_LIMIT_BYTES = 2**36
_UNIT = 2.0**-53


class SecureRandom:
    """Uniform, Gaussian and Bernoulli draws from a ChaCha20 keystream.

    Takes no seed on purpose: reproducible noise is subtractable noise.
    """

    def __init__(self) -> None:
        self._open_stream()

    def _open_stream(self) -> None:
        # Each key is used for one stream only, so the all-zero nonce is never reused.
        cipher = Cipher(algorithms.ChaCha20(os.urandom(_KEY_BYTES), bytes(16)), mode=None)
        self._encryptor = cipher.encryptor()
        self._stream_bytes = 0

    def _words(self, n: int) -> np.ndarray:
        """``n`` independent uniform 64-bit words (ChaCha20 applied to zero bytes)."""
        nbytes = 8 * n
        if nbytes > _STREAM_LIMIT_BYTES:
            raise ValueError(
                f"one draw of {n} words exceeds the {_STREAM_LIMIT_BYTES} byte stream limit;"
                " draw in parts"
            )
        if self._stream_bytes + nbytes > _STREAM_LIMIT_BYTES:
            self._open_stream()
        self._stream_bytes += nbytes
        return np.frombuffer(self._encryptor.update(bytes(nbytes)), dtype="<u8")

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 draws, uniform on {k * 2^-53 : 0 < k < 2^53}: never 0, never 1."""
        grid = self._words(n) >> np.uint64(11)  # the top 53 bits
        zeros = np.flatnonzero(grid == 0)
        while len(zeros):  # probability 2^-53 per draw; redrawn, not nudged, to stay uniform
            grid[zeros] = self._words(len(zeros)) >> np.uint64(11)
            zeros = zeros[grid[zeros] == 0]
        out = grid.astype(np.float64)  # exact: every value is below 2^53
        out *= _UNIT
        return out

    def standard_normal(self, n: int) -> np.ndarray:
        """``n`` float64 draws from N(0, 1) (Box-Muller on :meth:`uniform`)."""
        pairs = (n + 1) // 2
        # torch's vectorised float64 log/cos/sin: about 3x numpy's here, same arithmetic.
        u = torch.from_numpy(self.uniform(2 * pairs))
        radius = u[:pairs].log_().mul_(-2.0).sqrt_()
        angle = u[pairs:].mul_(2.0 * math.pi)
        out = torch.empty(2 * pairs, dtype=torch.float64)
        torch.cos(angle, out=out[:pairs])
        torch.sin(angle, out=out[pairs:])
        out[:pairs] *= radius
        out[pairs:] *= radius
        return out[:n].numpy()

    def normal_like(self, reference: torch.Tensor, std: float) -> torch.Tensor:
        """N(0, std^2) noise with ``reference``'s shape, dtype and device.

        Sampled and scaled in float64 on the CPU, then cast and moved (see the module
        docstring for what that does and does not protect against).
        """
        if std == 0:
            return torch.zeros_like(reference)
        noise = self.standard_normal(reference.numel())
        noise *= std
        return (
            torch.from_numpy(noise)
            .reshape(reference.shape)
            .to(device=reference.device, dtype=reference.dtype)
        )

    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        """Which of ``n`` records a Poisson sample at ``rate`` includes, independently."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sampling rate must be in [0, 1], got {rate}")
        if rate == 1.0:
            return np.ones(n, dtype=bool)
        # P(u < rate) = rate up to the 2^-53 grid of the uniforms.
        return self.uniform(n) < rate
