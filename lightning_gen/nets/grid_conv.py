"""Fully convolutional encoder/decoder between images and a grid of vectors a quarter of their side (a 28x28
image <-> a 7x7 grid), the networks of a VQ-VAE (van den Oord et al. 2017: two stride-2 convolutions, then
residual blocks ReLU -> 3x3 conv -> ReLU -> 1x1 conv; the decoder mirrors it)."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_gen.errors import check_range
from lightning_gen.nets.conv import check_image_shape


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), channels and size unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class GridEncoder(nn.Module):
    """``[N, C, H, W] -> [N, code_dim, H/4, W/4]``: two stride-2 convs, residual blocks, a 1x1 projection."""

    def __init__(self, data_shape: tuple[int, int, int], code_dim: int, channels: int = 32, residual_blocks: int = 2):
        super().__init__()
        in_channels, _, _ = check_image_shape(data_shape)
        check_range(at_least=1, code_dim=code_dim, channels=channels)
        check_range(at_least=0, residual_blocks=residual_blocks)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),  # (N, ch, H/2, W/2)
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),  # (N, 2ch, H/4, W/4)
            *(ResidualBlock(2 * channels) for _ in range(residual_blocks)),
            nn.ReLU(),
            nn.Conv2d(2 * channels, code_dim, 1),  # (N, D, H/4, W/4)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GridDecoder(nn.Module):
    """``[N, code_dim, H/4, W/4] -> [N, C * params_per_channel, H, W]``, the mirror of ``GridEncoder``."""

    def __init__(self, data_shape: tuple[int, int, int], code_dim: int, params_per_channel: int, channels: int = 32,
                 residual_blocks: int = 2):
        super().__init__()
        out_channels, _, _ = check_image_shape(data_shape)
        check_range(at_least=1, code_dim=code_dim, params_per_channel=params_per_channel, channels=channels)
        check_range(at_least=0, residual_blocks=residual_blocks)
        self.net = nn.Sequential(
            nn.Conv2d(code_dim, 2 * channels, 3, padding=1),  # (N, 2ch, H/4, W/4)
            *(ResidualBlock(2 * channels) for _ in range(residual_blocks)),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # (N, ch, H/2, W/2)
            nn.ReLU(),
            nn.ConvTranspose2d(channels, out_channels * params_per_channel, 4, stride=2, padding=1),  # (N, C*P, H, W)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
