"""Convolutions that only look at pixels earlier in raster order (PixelCNN, van den Oord et al. 2016).

A kernel is padded so that its ``center`` tap sits on the output pixel. Taps before the centre in
raster order (rows above, then columns to the left) are always visible; taps after it never are.
The centre tap connects an input feature to an output feature by their *channel groups*: with RGB data
and ``groups=3`` every feature belongs to R, G or B, and

- mask type ``A`` (first layer, reads the image): group(out) > group(in), so a pixel never sees itself;
- mask type ``B`` (later layers): group(out) >= group(in), a feature sees its own group's features.

With ``groups=1`` (grayscale, or a distribution that couples the channels itself) type A hides the whole
centre pixel and type B shows it. ``mask_type=None`` is an unmasked convolution with the same padding
(the vertical stack of the gated PixelCNN, which sees a whole row and is shifted down before use).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gen.errors import ConfigValueError

MASK_TYPES = ("A", "B")


def channel_groups(num_channels: int, groups: int, halves: int = 1) -> Tensor:
    """The group (0..groups-1) of each of ``num_channels`` features, in contiguous blocks.

    ``halves=2`` is for tensors that are split in two by a gate (tanh half, sigmoid half): each half
    repeats the same block layout, so the two halves of a gate belong to the same group.
    """
    per_half = num_channels // halves
    if per_half * halves != num_channels or per_half % groups:
        raise ConfigValueError(f"{num_channels} features cannot be split into {halves} half/halves of {groups} "
                         "equal channel groups; choose a hidden width divisible by the number of image channels")
    return (torch.arange(num_channels) % per_half) * groups // per_half


class CausalConv2d(nn.Conv2d):
    """A same-size convolution whose kernel sees only the causal past of its ``center`` tap.

    Args:
        kernel_size: (height, width) of the kernel.
        center: (row, column) of the tap aligned with the output pixel; padding puts it there.
        mask_type: "A", "B" or None (see the module docstring).
        groups: channel groups of the centre tap (1 for grayscale; the image's channel count for RGB
            with an R -> G -> B dependence). Not ``nn.Conv2d``'s ``groups``.
        in_halves, out_halves: 2 where the input / output is split by a gate.
        dilation: spacing of the kernel's taps (rows and columns alike); the padding scales with it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        center: tuple[int, int],
        mask_type: str | None,
        groups: int = 1,
        in_halves: int = 1,
        out_halves: int = 1,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, kernel_size, padding=0, dilation=dilation)
        if mask_type is not None and mask_type not in MASK_TYPES:
            raise ConfigValueError(f"unknown mask type {mask_type!r}; choose one of {MASK_TYPES} or None")
        (kh, kw), (ci, cj) = self.kernel_size, center
        self.center = (ci, cj)
        self.mask_type = mask_type
        d = dilation  # left, right, top, bottom (F.pad order)
        self.causal_padding = (cj * d, (kw - 1 - cj) * d, ci * d, (kh - 1 - ci) * d)
        mask = torch.ones(out_channels, in_channels, kh, kw)
        if mask_type is not None:
            mask[:, :, ci, cj + 1:] = 0  # right of the centre, same row
            mask[:, :, ci + 1:, :] = 0  # rows below
            group_out = channel_groups(out_channels, groups, out_halves)[:, None]
            group_in = channel_groups(in_channels, groups, in_halves)[None, :]
            visible = group_out > group_in if mask_type == "A" else group_out >= group_in
            mask[:, :, ci, cj] = visible.float()
        self.register_buffer("mask", mask, persistent=False)
        self._position_weight: Tensor | None = None  # set while prepared_for_positions() holds

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.causal_padding), self.masked_weight(), self.bias, dilation=self.dilation)

    def position_weight(self) -> Tensor:
        """The masked kernel as a ``[in_channels * kh * kw, out_channels]`` matrix (``at_one_position``)."""
        if self._position_weight is not None:
            return self._position_weight
        return self.masked_weight().flatten(1).T

    def at_one_position(self, window: Tensor) -> Tensor:
        """The output at one pixel from its input window ``[N, in_channels, kh, kw]`` -> ``[N, out_channels]``.

        One matrix product, the whole cost of this layer for one pixel when sampling incrementally.
        """
        return torch.addmm(self.bias, window.flatten(1), self.position_weight())


@contextmanager
def prepared_for_positions(module: nn.Module) -> Iterator[None]:
    """Within the block, every ``CausalConv2d`` of ``module`` reuses one masked kernel matrix in
    ``at_one_position`` instead of masking and transposing its weight again at every call (incremental
    sampling calls it once per pixel and layer: thousands of small ops per image on a CPU). The weights
    must not change inside the block (sampling runs under ``torch.no_grad``)."""
    convs = [m for m in module.modules() if isinstance(m, CausalConv2d)]
    for conv in convs:
        conv._position_weight = conv.masked_weight().detach().flatten(1).T.contiguous()
    try:
        yield
    finally:
        for conv in convs:
            conv._position_weight = None
