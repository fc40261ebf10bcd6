"""One-hidden-layer MLP encoder/decoder for images, the nets of the PyTorch VAE example (784-400-20):
on a CPU they train an order of magnitude more images per second than the conv pair, which at a budget
of minutes is worth more than the convolutions' inductive bias (benchmarks/history.md, quality_at_budget)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from lightning_gen.errors import check_range
from lightning_gen.nets.conv import check_image_shape


class MLPEncoder(nn.Module):
    """``[N, C, H, W] -> [N, out_features]``: flatten, one hidden ReLU layer of ``hidden`` units, linear."""

    def __init__(self, data_shape: tuple[int, int, int], out_features: int, hidden: int = 400):
        super().__init__()
        check_range(at_least=1, out_features=out_features, hidden=hidden)
        pixels = math.prod(check_image_shape(data_shape, multiple_of=1))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """``[N, latent_dim] -> [N, C * params_per_channel, H, W]``, mirror of ``MLPEncoder``."""

    def __init__(self, data_shape: tuple[int, int, int], latent_dim: int, params_per_channel: int, hidden: int = 400):
        super().__init__()
        channels, height, width = check_image_shape(data_shape, multiple_of=1)
        check_range(at_least=1, latent_dim=latent_dim, params_per_channel=params_per_channel, hidden=hidden)
        out_shape = (channels * params_per_channel, height, width)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(out_shape)),
                                 nn.Unflatten(1, out_shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
