"""Small convolutional encoder/decoder for images whose height and width are divisible by 4
(28x28 grayscale, 32x32 RGB, image folders)."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_gen.errors import ConfigValueError, check_range


def check_image_shape(data_shape: tuple[int, ...], multiple_of: int = 4) -> tuple[int, int, int]:
    """Validate ``(C, H, W)`` for the conv nets (sides divisible by ``multiple_of`` for the strided
    ones); the error names the shape and the fix."""
    if len(data_shape) != 3:
        raise ConfigValueError(
            f"this model needs images (C, H, W) but the data has shape {tuple(data_shape)}; "
            "use an image DataModule (the toy 2-D data is for GANs)"
        )
    channels, height, width = data_shape
    if height % multiple_of or width % multiple_of:
        nearest = max(multiple_of, round(height / multiple_of) * multiple_of)
        raise ConfigValueError(
            f"this model needs image height and width divisible by {multiple_of}, but the data has "
            f"{height}x{width}; resize the data (an image folder: --data.init_args.image_size {nearest})"
        )
    return channels, height, width


class ConvEncoder(nn.Module):
    """``[N, C, H, W] -> [N, out_features]``: two stride-2 convs (H/4 x W/4), then an MLP head."""

    def __init__(self, data_shape: tuple[int, int, int], out_features: int, channels: int = 32, hidden: int = 256):
        super().__init__()
        in_channels, height, width = check_image_shape(data_shape)
        check_range(at_least=1, out_features=out_features, channels=channels, hidden=hidden)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),  # (N, ch, H/2, W/2)
            nn.SiLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),  # (N, 2ch, H/4, W/4)
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * (height // 4) * (width // 4), hidden),
            nn.SiLU(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """``[N, latent_dim] -> [N, C * params_per_channel, H, W]``, mirror of ``ConvEncoder``."""

    def __init__(
        self,
        data_shape: tuple[int, int, int],
        latent_dim: int,
        params_per_channel: int,
        channels: int = 32,
        hidden: int = 256,
    ):
        super().__init__()
        out_channels, height, width = check_image_shape(data_shape)
        check_range(at_least=1, latent_dim=latent_dim, params_per_channel=params_per_channel, channels=channels,
                    hidden=hidden)
        self.base_shape = (2 * channels, height // 4, width // 4)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * channels * (height // 4) * (width // 4)),
            nn.SiLU(),
            nn.Unflatten(1, self.base_shape),  # (N, 2ch, H/4, W/4)
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # (N, ch, H/2, W/2)
            nn.SiLU(),
            nn.ConvTranspose2d(channels, out_channels * params_per_channel, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
