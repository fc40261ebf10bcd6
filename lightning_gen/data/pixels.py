"""The one pixel convention of lightning-gen, and the only place where pixels change range.

Every DataModule yields images as float tensors of shape ``[N, C, H, W]`` with values in
``[0, 1]``; for 8-bit data the values are exactly ``k / 255`` for integers ``k`` in 0..255.
Every model's ``sample(n)`` returns images in the same range. A model that needs another
representation converts here, on its side of the boundary:

- ``binarize``          -> {0, 1}     (Bernoulli likelihoods; static threshold or dynamic sampling)
- ``to_signed``         -> [-1, 1]    (GAN generators with ``tanh`` outputs)
- ``to_uint8_levels``   -> 0..255     (categorical / discretised likelihoods, PixelCNN)
- ``dequantize``        -> [0, 1) continuous (continuous densities on 8-bit data)
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_gen.errors import ConfigValueError

NUM_LEVELS = 256  # 8-bit images
BINARIZATION_MODES = ("dynamic", "static")


def to_uint8_levels(x: Tensor) -> Tensor:
    """Images in [0, 1] -> integer levels 0..255 (int64), rounding to the nearest level."""
    return torch.round(x.clamp(0, 1) * (NUM_LEVELS - 1)).long()


def from_uint8_levels(levels: Tensor) -> Tensor:
    """Integer levels 0..255 -> images in [0, 1]."""
    return levels.float() / (NUM_LEVELS - 1)


def to_signed(x: Tensor) -> Tensor:
    """Images in [0, 1] -> [-1, 1]."""
    return x * 2 - 1


def from_signed(x: Tensor) -> Tensor:
    """[-1, 1] -> images in [0, 1] (clamped, since generators may overshoot)."""
    return ((x + 1) / 2).clamp(0, 1)


def binarize(x: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Images in [0, 1] -> {0, 1}.

    ``dynamic`` draws each pixel from Bernoulli(x) (a fresh binarisation every call, the usual
    protocol for binarised MNIST); ``static`` thresholds at 0.5.
    """
    if mode == "dynamic":
        return torch.bernoulli(x.clamp(0, 1), generator=generator)
    if mode == "static":
        return (x > 0.5).to(x.dtype)
    raise ConfigValueError(f"unknown binarization {mode!r}; choose one of {BINARIZATION_MODES}")


def dequantize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation: 8-bit images in [0, 1] -> (k + u) / 256 with u ~ U[0, 1).

    A continuous density p on the result gives a lower bound on the discrete log-likelihood:
    log P(k) >= E_u[log p((k + u) / 256)] - D log 256 (Theis et al. 2016).
    """
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (to_uint8_levels(x).to(x.dtype) + noise) / NUM_LEVELS
