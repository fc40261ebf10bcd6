"""PixelCNN networks: images ``[N, C, H, W]`` in [0, 1] -> distribution parameters ``[N, P, H, W]``
where the parameters at pixel t depend only on the pixels before t in raster order (and, with channel
groups, on the earlier channels of pixel t).

- ``GatedPixelCNN`` (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders"):
  a vertical stack that sees every row above, a horizontal stack that sees the current row to the left,
  gated activations tanh(a) * sigmoid(b), optional class conditioning, and no blind spot. It also
  generates incrementally (``generate``): each layer keeps the activations it has already computed and
  evaluates only the new pixel (Ramachandran et al. 2017, "Fast Generation for Convolutional
  Autoregressive Models").
- ``ClassicPixelCNN`` (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"): a 7x7 type-A
  convolution then 3x3 type-B convolutions; its receptive field has the well-known blind spot above and
  to the right. Kept as the reference point for tests.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_gen.data.pixels import to_signed
from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.nets.conv import check_image_shape
from lightning_gen.nets.masked import CausalConv2d, channel_groups, prepared_for_positions

# pick(row, column, group, params [N, P]) -> the sampled values [N, channels of the group] in [0, 1]
PixelPicker = Callable[[int, int, int, Tensor], Tensor]


def gate(x: Tensor, dim: int = 1) -> Tensor:
    """tanh(a) * sigmoid(b) for x = [a, b] split along the channels (``dim``)."""
    a, b = x.chunk(2, dim=dim)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x: Tensor) -> Tensor:
    """Row i takes row i - 1 (a zero row on top): features of rows <= i become rows < i."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def to_network_input(x: Tensor) -> Tensor:
    """Pixels in [0, 1] -> [-1, 1], centred for the first layer (padding then reads as the mid level)."""
    return to_signed(x)


class GatedLayer(nn.Module):
    """One gated layer of both stacks.

    vertical:   v' = gate(V * v + c_v)                       (kernel (k//2 + 1) x k with taps d = ``dilation``
                                                              apart: rows i - d (k//2) .. i)
    horizontal: h' = h + W_o gate(H * h + W_vh shift(V * v) + c_h)   (kernel 1 x (k//2 + 1), residual
                                                                       except in the first layer)
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int, first: bool, groups: int,
                 num_classes: int | None, dilation: int = 1):
        super().__init__()
        self.padding = p = kernel_size // 2  # of the horizontal stack: columns to the left
        self.vertical_reach = p * dilation  # rows above (and columns either side) the vertical kernel reads
        self.vertical = CausalConv2d(in_channels, 2 * hidden, (p + 1, kernel_size), (p, p), None,
                                     dilation=dilation)
        self.horizontal = CausalConv2d(in_channels, 2 * hidden, (1, p + 1), (0, p), "A" if first else "B",
                                       groups, in_halves=1, out_halves=2)
        # features of the rows above are visible to every channel group: no mask
        self.vertical_to_horizontal = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.horizontal_out = CausalConv2d(hidden, hidden, (1, 1), (0, 0), "B", groups)
        self.class_bias = nn.Embedding(num_classes, 4 * hidden) if num_classes else None
        self.residual = not first

    def class_biases(self, labels: Tensor | None) -> tuple[Tensor, Tensor] | tuple[int, int]:
        """Per-image biases (vertical, horizontal), each ``[N, 2 * hidden]``; zeros when unconditional."""
        if self.class_bias is None:
            return 0, 0
        return self.class_bias(labels).chunk(2, dim=1)

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        bias_v, bias_h = self.class_biases(labels)
        if self.class_bias is not None:
            bias_v, bias_h = bias_v[:, :, None, None], bias_h[:, :, None, None]
        v_pre = self.vertical(v)  # (N, 2h, H, W), row i sees rows <= i
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(shift_down(v_pre))
        h_out = self.horizontal_out(gate(h_pre + bias_h))
        return gate(v_pre + bias_v), h_out + h if self.residual else h_out

    # --- incremental generation: the same maths on the few inputs one output needs -----------------------
    def vertical_row(self, rows: Tensor, bias_v: Tensor | int) -> tuple[Tensor, Tensor]:
        """The kernel's padded input rows ``[N, in, k//2 + 1, W + 2 reach]`` -> (gated output row
        ``[N, hidden, W]``, the row's contribution to the horizontal stack of the next row ``[N, 2 hidden, W]``).

        The convolution as one matrix product over the row's W windows: on a CPU, oneDNN's convolution
        took ~0.8 ms for these one-row inputs, several times the product's cost."""
        n, width = len(rows), rows.shape[3] - 2 * self.vertical_reach
        taps, spacing = self.vertical.kernel_size[1], self.vertical.dilation[1]
        windows = rows.unfold(3, (taps - 1) * spacing + 1, 1)[..., ::spacing]  # (N, in, k//2 + 1, W, k)
        windows = windows.permute(0, 3, 1, 2, 4).reshape(n * width, -1)  # the kernel's (in, kh, kw) order
        v_pre = torch.addmm(self.vertical.bias, windows, self.vertical.position_weight())  # (N W, 2h)
        to_horizontal = F.linear(v_pre, self.vertical_to_horizontal.weight.flatten(1), self.vertical_to_horizontal.bias)
        v_pre = v_pre.view(n, width, -1)
        bias = bias_v[:, None, :] if isinstance(bias_v, Tensor) else bias_v
        v_out = gate(v_pre + bias, dim=2)  # (N, W, h)
        return v_out.transpose(1, 2), to_horizontal.view(n, width, -1).transpose(1, 2)

    def horizontal_at(self, window: Tensor, from_above: Tensor, bias_h: Tensor | int, h: Tensor) -> Tensor:
        """Horizontal output at one pixel: ``window`` ``[N, in, 1, k//2 + 1]`` ends at the pixel, ``from_above``
        ``[N, 2 hidden]`` is the vertical stack's contribution there, ``h`` ``[N, in]`` the input at the pixel."""
        h_pre = self.horizontal.at_one_position(window) + from_above + bias_h
        h_out = self.horizontal_out.at_one_position(gate(h_pre)[:, :, None, None])
        return h_out + h if self.residual else h_out


class OutputHead(nn.Module):
    """ReLU -> 1x1 -> ReLU -> 1x1 (type B, so channel groups stay causal) to ``params_per_pixel``."""

    def __init__(self, hidden: int, params_per_pixel: int, groups: int):
        super().__init__()
        self.hidden = CausalConv2d(hidden, hidden, (1, 1), (0, 0), "B", groups)
        self.out = CausalConv2d(hidden, params_per_pixel, (1, 1), (0, 0), "B", groups)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(F.relu(self.hidden(F.relu(h))))

    def at(self, h: Tensor) -> Tensor:
        """``[N, hidden]`` features of one pixel -> ``[N, params_per_pixel]``."""
        h = self.hidden.at_one_position(F.relu(h)[:, :, None, None])
        return self.out.at_one_position(F.relu(h)[:, :, None, None])


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN with ``layers`` gated layers of width ``hidden``.

    Args:
        data_shape: (C, H, W) of the images.
        params_per_pixel: distribution parameters per pixel (all channels together).
        groups: channel groups (1, or C for an R -> G -> B ordering inside each pixel); the output's
            parameters must be laid out in ``groups`` contiguous blocks, one per group.
        num_classes: if given, every layer adds a learned per-class bias (class-conditional model).
        first_kernel_size: kernel size of the first layer (default ``kernel_size``). The first layer reads
            the image's few channels, so a larger kernel there widens the context (kernel // 2 more rows
            above and columns left) for little compute.
        dilations: tap spacings of the layers' vertical stacks, a cycle repeated over the layers as
            WaveNet repeats its dilations (default: all 1). Spacings that double, e.g. 1, 2, 4, 8, let the
            rows above reach far up the image at the cost of a 1-spaced stack.
    """

    def __init__(self, data_shape: tuple[int, int, int], params_per_pixel: int, groups: int = 1,
                 hidden: int = 64, layers: int = 8, kernel_size: int = 5, num_classes: int | None = None,
                 first_kernel_size: int | None = None, dilations: list[int] | None = None):
        super().__init__()
        self.data_shape = check_image_shape(tuple(data_shape), multiple_of=1)
        channels = self.data_shape[0]
        if groups not in (1, channels):
            raise ConfigValueError(f"groups must be 1 or the number of image channels ({channels}), got {groups}")
        first_kernel_size = kernel_size if first_kernel_size is None else first_kernel_size
        for name, size in (("kernel_size", kernel_size), ("first_kernel_size", first_kernel_size)):
            if size < 3 or size % 2 == 0:
                raise ConfigValueError(f"{name} must be odd and at least 3, got {size}")
        check_range(at_least=1, params_per_pixel=params_per_pixel, hidden=hidden, layers=layers)
        cycle = [1] if dilations is None else list(dilations)
        if not cycle or min(cycle) < 1:
            raise ConfigValueError(f"dilations must be a non-empty list of spacings >= 1 (or null), got {dilations}")
        dilations = [cycle[index % len(cycle)] for index in range(layers)]
        self.groups, self.hidden, self.kernel_size = groups, hidden, kernel_size
        self.layers = nn.ModuleList(
            GatedLayer(channels if index == 0 else hidden, hidden, first_kernel_size if index == 0 else kernel_size,
                       index == 0, groups, num_classes, dilations[index])
            for index in range(layers)
        )
        self.head = OutputHead(hidden, params_per_pixel, groups)
        self.group_of_channel = channel_groups(channels, groups).tolist()

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images ``[N, C, H, W]`` in [0, 1] -> parameters ``[N, P, H, W]``."""
        v = h = to_network_input(x)
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

    def channels_of_group(self, group: int) -> slice:
        """The image channels of a channel group: a slice, not a list, so that writing a pixel needs no
        index tensor copied from the host (which a CUDA graph capture refuses)."""
        members = [c for c, g in enumerate(self.group_of_channel) if g == group]
        return slice(members[0], members[-1] + 1)  # groups are contiguous blocks (channel_groups)

    @torch.no_grad()
    def generate(self, n: int, pick: PixelPicker, labels: Tensor | None = None, progress: bool = False,
                 device: torch.device | None = None) -> Tensor:
        """Sample ``n`` images in raster order, computing each layer only where the next pixel needs it.

        Per row: the vertical stack of the finished row above (one row per layer, its inputs kept in
        per-layer buffers). Per pixel and channel group: the horizontal stack at that pixel only, from
        per-layer buffers of the current row. ``pick`` turns the parameters of a pixel into its values.
        Returns ``[n, C, H, W]`` in [0, 1].
        """
        with prepared_for_positions(self):
            return self._generate(n, pick, labels, progress, device)

    def _generate(self, n: int, pick: PixelPicker, labels: Tensor | None, progress: bool,
                  device: torch.device | None) -> Tensor:
        channels, height, width = self.data_shape
        pads = [layer.padding for layer in self.layers]  # columns left of the horizontal kernels
        reaches = [layer.vertical_reach for layer in self.layers]  # rows above, columns either side
        weight = next(self.parameters())
        zeros = lambda *shape: torch.zeros(*shape, device=device or weight.device, dtype=weight.dtype)  # noqa: E731
        x = zeros(n, channels, height, width)
        in_channels = [layer.horizontal.in_channels for layer in self.layers]
        # inputs of each layer's vertical convolution, zero-padded `reach` rows on top and columns each side
        vertical_inputs = [zeros(n, c, height + r, width + 2 * r) for c, r in zip(in_channels, reaches)]
        biases = [layer.class_biases(labels) for layer in self.layers]
        for i in tqdm(range(height), desc="sampling rows", disable=not progress, leave=False):
            if i == 0:  # the row above the image is zero padding
                from_above = [layer.vertical_to_horizontal.bias[None, :, None].expand(n, -1, width)
                              for layer in self.layers]
            else:
                from_above = []
                for index, layer in enumerate(self.layers):
                    spacing = layer.vertical.dilation[0]  # input rows i-1-reach .. i-1, `spacing` apart
                    rows = vertical_inputs[index][:, :, i - 1: i + reaches[index]: spacing]
                    v_out, to_horizontal = layer.vertical_row(rows, biases[index][0])
                    from_above.append(to_horizontal)
                    if index + 1 < len(self.layers):
                        r = reaches[index + 1]
                        vertical_inputs[index + 1][:, :, r + i - 1, r: r + width] = v_out
            horizontal_inputs = [zeros(n, c, 1, width + p) for c, p in zip(in_channels, pads)]  # p zero columns left
            for j in range(width):
                for group in range(self.groups):
                    h = to_network_input(x[:, :, i, j])  # (n, C)
                    for index, layer in enumerate(self.layers):
                        p = pads[index]
                        horizontal_inputs[index][:, :, 0, p + j] = h
                        window = horizontal_inputs[index][:, :, :, j: j + p + 1]
                        h = layer.horizontal_at(window, from_above[index][:, :, j], biases[index][1], h)
                    x[:, self.channels_of_group(group), i, j] = pick(i, j, group, self.head.at(h))
                # the image itself is the first layer's input; deeper inputs at this pixel never depend on
                # the last channel group, so the last pass already left them final
                horizontal_inputs[0][:, :, 0, pads[0] + j] = to_network_input(x[:, :, i, j])
            r = reaches[0]
            vertical_inputs[0][:, :, r + i, r: r + width] = to_network_input(x[:, :, i])
        return x


class ClassicPixelCNN(nn.Module):
    """PixelCNN with a 7x7 type-A convolution, ``layers - 1`` ReLU + 3x3 type-B convolutions and the same
    output head as the gated network. Its receptive field misses a wedge above and right of each pixel
    (the blind spot), which the gated network's two stacks remove."""

    def __init__(self, data_shape: tuple[int, int, int], params_per_pixel: int, groups: int = 1,
                 hidden: int = 64, layers: int = 8, first_kernel_size: int = 7):
        super().__init__()
        self.data_shape = check_image_shape(tuple(data_shape), multiple_of=1)
        if first_kernel_size < 3 or first_kernel_size % 2 == 0:
            raise ConfigValueError(f"first_kernel_size must be odd and at least 3, got {first_kernel_size}")
        check_range(at_least=1, params_per_pixel=params_per_pixel, hidden=hidden, layers=layers)
        p = first_kernel_size // 2
        convs = [CausalConv2d(self.data_shape[0], hidden, (first_kernel_size,) * 2, (p, p), "A", groups)]
        for _ in range(layers - 1):
            convs += [nn.ReLU(), CausalConv2d(hidden, hidden, (3, 3), (1, 1), "B", groups)]
        self.body = nn.Sequential(*convs)
        self.head = OutputHead(hidden, params_per_pixel, groups)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.head(self.body(to_network_input(x)))
