"""A small time-conditioned U-Net: ``v = net(x, t, labels)`` with ``x, v`` of shape ``[N, C, H, W]``.

Sized for 28x28 (and 32x32) images on a CPU: residual blocks of GroupNorm -> SiLU -> 3x3 conv, with the
time (and class) embedding added to every block; one stride-2 downsampling per extra level
(28 -> 14 -> 7 with the default three levels), skip connections by concatenation, an optional
single-head self-attention at the lowest resolution. The output convolution starts at zero, so an
untrained network is the zero velocity field (an identity flow: the sampler returns its noise).

Class conditioning (``num_classes``) adds a learned embedding of the label to the time embedding; the
extra index ``num_classes`` is the "null" label (no class), used for label dropout in training and for
the unconditional velocity of classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.nets.conv import check_image_shape


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Times ``[N]`` (floating) in [0, 1] -> ``[N, dim]``: sin and cos of ``scale * t`` at ``dim / 2``
    frequencies from 1 down to 1/10000 (the Transformer's positions; ``scale`` spreads [0, 1] over the range
    diffusion networks see)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = scale * t[:, None] * frequencies[None]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, dim)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (the largest divisor of ``channels`` not above 8)."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ResidualBlock(nn.Module):
    """h -> h + conv(SiLU(GN(conv(SiLU(GN(h))) + W e))) for the embedding e ``[N, E]``; a 1x1 convolution on
    the shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embedding_dim, out_channels)
        self.norm2, self.conv2 = group_norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (N, out, H, W)
        h = h + self.embed(F.silu(embedding))[:, :, None, None]  # (N, out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (N, out, H, W)
        return self.shortcut(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, residual: x + proj(softmax(q k^T / sqrt(c)) v)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm, self.qkv = group_norm(channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # 3 x (N, HW, c)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, HW, c)
        return x + self.proj(out.transpose(1, 2).reshape(n, c, h, w))


class TimeConditionedUNet(nn.Module):
    """``(x [N, C, H, W], t [N] in [0, 1], labels [N] | None) -> [N, C, H, W]``.

    Args:
        data_shape: (C, H, W); H and W divisible by 2^(levels - 1).
        base_width: channels of the first level.
        channel_multipliers: one per level; level i has ``base_width * channel_multipliers[i]`` channels and
            1 / 2^i of the resolution. (1, 2, 2): 28x28 at w, 14x14 at 2w, 7x7 at 2w.
        blocks_per_level: residual blocks per level on the way down (and on the way up).
        attention: self-attention in the middle, at the lowest resolution (off by default: at 7x7 it buys
            little for its cost on a CPU).
        num_classes: class-conditional with this many classes (None: unconditional); label ``num_classes``
            is the null label.
    """

    def __init__(self, data_shape: tuple[int, int, int], base_width: int = 32,
                 channel_multipliers: tuple[int, ...] = (1, 2, 2), blocks_per_level: int = 1,
                 attention: bool = False, num_classes: int | None = None):
        super().__init__()
        multipliers = tuple(channel_multipliers)
        if not multipliers or any(m < 1 for m in multipliers):
            raise ConfigValueError(f"channel_multipliers must be a non-empty list of integers >= 1, got {multipliers}")
        check_range(at_least=1, base_width=base_width, blocks_per_level=blocks_per_level, num_classes=num_classes)
        channels, _, _ = check_image_shape(tuple(data_shape), multiple_of=2 ** (len(multipliers) - 1))
        widths = [base_width * m for m in multipliers]
        embedding_dim = 4 * base_width
        self.num_classes, self.base_width = num_classes, base_width
        self.time_mlp = nn.Sequential(nn.Linear(base_width, embedding_dim), nn.SiLU(),
                                      nn.Linear(embedding_dim, embedding_dim))
        # one extra row: the null label (index num_classes) of label dropout and guidance
        self.label_embedding = None if num_classes is None else nn.Embedding(num_classes + 1, embedding_dim)
        self.conv_in = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, width in enumerate(widths):
            self.down.append(nn.ModuleList(ResidualBlock(width, width, embedding_dim) for _ in range(blocks_per_level)))
            if i + 1 < len(widths):
                self.downsample.append(nn.Conv2d(width, widths[i + 1], 3, stride=2, padding=1))
        self.middle = nn.ModuleList([ResidualBlock(widths[-1], widths[-1], embedding_dim),
                                     ResidualBlock(widths[-1], widths[-1], embedding_dim)])
        self.attention = SelfAttention(widths[-1]) if attention else None
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in enumerate(widths):  # indexed like `down`; run from the last level back to the first
            blocks = [ResidualBlock(2 * width, width, embedding_dim)]  # takes the skip connection
            blocks += [ResidualBlock(width, width, embedding_dim) for _ in range(blocks_per_level - 1)]
            self.up.append(nn.ModuleList(blocks))
            if i > 0:
                self.upsample.append(nn.Conv2d(width, widths[i - 1], 3, padding=1))
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # an untrained net is the zero velocity field
        nn.init.zeros_(self.conv_out.bias)

    def embedding(self, t: Tensor, labels: Tensor | None) -> Tensor:
        """Time ``[N]`` (and labels ``[N]``; None: the null label) -> ``[N, 4 * base_width]``."""
        e = self.time_mlp(sinusoidal_embedding(t, self.base_width))  # (N, E)
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full((len(t),), self.num_classes, device=t.device, dtype=torch.long)
            e = e + self.label_embedding(labels)  # (N, E)
        return e

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        e = self.embedding(t.expand(len(x)).to(x.dtype), labels)  # (N, E)
        h = self.conv_in(x)  # (N, w0, H, W)
        skips = []
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, e)  # (N, w_i, H / 2^i, W / 2^i)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (N, w_{i+1}, H / 2^(i+1), W / 2^(i+1))
        h = self.middle[0](h, e)
        if self.attention is not None:
            h = self.attention(h)
        h = self.middle[1](h, e)  # (N, w_last, H / 2^last, W / 2^last)
        for i in reversed(range(len(self.up))):
            h = torch.cat([h, skips[i]], dim=1)  # (N, 2 w_i, H / 2^i, W / 2^i)
            for block in self.up[i]:
                h = block(h, e)  # (N, w_i, H / 2^i, W / 2^i)
            if i > 0:
                h = self.upsample[i - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (N, w_{i-1}, ...)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, C, H, W)
