"""Autoregressive sampling: draw a grid one position (and channel group) at a time from a masked network.

Used by the PixelCNN (pixels of an image) and the VQ-VAE prior (codes of a grid). The network offers the
gated PixelCNN's interface (``nets/pixelcnn.py``): ``net(x, labels)`` gives every position's parameters in
one pass, ``net.generate(n, pick, labels)`` caches every layer's activations and computes only what the next
position needs, ``net.groups`` / ``net.channels_of_group``. A ``pick(i, j, group, params)`` turns the
parameters of one position into its drawn values, from noise drawn up front, so every sampler draws the same
grid for the same noise (up to floating-point rounding).

Samplers (``AUTOREGRESSIVE_SAMPLERS``):
- ``fast``: the cached generation; on a CUDA device recorded once as a CUDA graph and replayed
  (``CudaGraphSampler``), since its thousands of small kernels are launch-bound there.
- ``fast_eager``: the cached generation, never graphed.
- ``reference``: one full network pass per position and channel group (H * W * groups passes).
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import Tensor

from lightning_gen.errors import ConfigValueError
from lightning_gen.nets.pixelcnn import PixelPicker

AUTOREGRESSIVE_SAMPLERS = ("fast", "fast_eager", "reference")


def check_autoregressive_sampler(sampler: str) -> str:
    if sampler not in AUTOREGRESSIVE_SAMPLERS:
        raise ConfigValueError(f"unknown sampler {sampler!r}; choose one of {AUTOREGRESSIVE_SAMPLERS}")
    return sampler


@torch.no_grad()
def sample_by_full_passes(net, shape: tuple[int, int, int], pick: PixelPicker, labels: Tensor | None,
                          n: int, device: torch.device) -> Tensor:
    """The reference sampler: one full forward pass per position and channel group -> ``[n, *shape]``."""
    channels, height, width = shape
    x = torch.zeros(n, channels, height, width, device=device, dtype=next(net.parameters()).dtype)
    for i in range(height):
        for j in range(width):
            for group in range(net.groups):
                params = net(x, labels)[:, :, i, j]
                x[:, net.channels_of_group(group), i, j] = pick(i, j, group, params)
    return x


class CudaGraphSampler:
    """The cached sampler recorded as one CUDA graph per network and batch shape, then replayed.

    The cached sampler launches ~20 small kernels per layer, position and channel group (about 100k for a
    28x28 image through 6 layers); at small batches the GPU waits on the launches. Replaying a recorded
    graph issues them all at once. The graph reads the network's parameters by address, so in-place
    training updates are seen; a new address (moved, re-created or cast parameters) or a new noise shape
    records a new graph. The first call per shape runs the sampler eagerly (the warm-up that a capture
    needs, and its result is returned: the same noise gives the same grid), then records; later calls
    replay. One graph is kept per network.
    """

    def __init__(self) -> None:
        self._recorded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> (key, buffers, graph)

    @staticmethod
    def _key(net, noise: Tensor, labels: Tensor | None) -> tuple:
        return (tuple(noise.shape), noise.dtype, noise.device, labels is None,
                tuple(p.data_ptr() for p in net.parameters()))

    def __call__(self, net, noise: Tensor, labels: Tensor | None,
                 picker: Callable[[Tensor], PixelPicker]) -> Tensor:
        """``picker(noise)``: the ``pick`` function that reads its noise from the tensor it is given (the
        graph's own copy of ``noise``)."""
        key = self._key(net, noise, labels)
        recorded = self._recorded.get(net)
        if recorded is not None and recorded[0] == key:
            _, static_noise, static_labels, graph, drawn = recorded
            static_noise.copy_(noise)
            if labels is not None:
                static_labels.copy_(labels)
            graph.replay()
            return drawn.clone()
        self._recorded.pop(net, None)  # frees the old graph's memory before recording a new one
        static_noise, static_labels = noise.clone(), None if labels is None else labels.clone()
        pick = picker(static_noise)
        side = torch.cuda.Stream(noise.device)
        side.wait_stream(torch.cuda.current_stream(noise.device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            first = net.generate(len(noise), pick, static_labels, device=noise.device)
        torch.cuda.current_stream(noise.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            drawn = net.generate(len(noise), pick, static_labels, device=noise.device)
        self._recorded[net] = (key, static_noise, static_labels, graph, drawn)
        return first


cuda_graph_sampler = CudaGraphSampler()


@torch.no_grad()
def draw_autoregressively(net, shape: tuple[int, int, int], noise: Tensor, picker: Callable[[Tensor], PixelPicker],
                          labels: Tensor | None, sampler: str, progress: bool = False) -> Tensor:
    """``[n, *shape]`` drawn by ``sampler`` from ``noise`` (``n = len(noise)``), the one dispatch of every
    autoregressive model."""
    check_autoregressive_sampler(sampler)
    n, device = len(noise), noise.device
    if sampler == "fast" and device.type == "cuda":
        return cuda_graph_sampler(net, noise, labels, picker)
    if sampler in ("fast", "fast_eager"):
        return net.generate(n, picker(noise), labels, progress=progress, device=device)
    return sample_by_full_passes(net, shape, picker(noise), labels, n, device)
