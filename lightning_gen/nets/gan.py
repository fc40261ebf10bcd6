"""Generator and discriminator networks: DCGAN-style convolutional pairs for images whose side is
divisible by 4 (28x28 grayscale, 32x32 RGB) and MLP pairs for low-dimensional points (toy 2-D data).

Image generators end in ``tanh`` (outputs in [-1, 1]); discriminators return one unnormalised score per
input (a logit for the probabilistic objectives, a critic value for Wasserstein).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from lightning_gen.errors import check_range
from lightning_gen.nets.conv import check_image_shape


def _maybe_sn(layer: nn.Module, enabled: bool) -> nn.Module:
    return apply_spectral_norm(layer) if enabled else layer


class DCGANGenerator(nn.Module):
    """z ``[N, latent_dim]`` -> images ``[N, C, H, W]`` in [-1, 1]: a linear map to H/4 x W/4, then two
    stride-2 transposed convolutions with batch norm (Radford et al. 2016)."""

    def __init__(self, data_shape: tuple[int, int, int], latent_dim: int, width: int = 64):
        super().__init__()
        channels, height, width_px = check_image_shape(data_shape)
        check_range(at_least=1, latent_dim=latent_dim, width=width)
        base = (2 * width, height // 4, width_px // 4)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, base[0] * base[1] * base[2], bias=False),
            nn.BatchNorm1d(base[0] * base[1] * base[2]),
            nn.ReLU(),
            nn.Unflatten(1, base),  # (N, 2w, H/4, W/4)
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False),  # (N, w, H/2, W/2)
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),  # (N, C, H, W)
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class DCGANDiscriminator(nn.Module):
    """images ``[N, C, H, W]`` in [-1, 1] -> scores ``[N]``. Optional spectral normalisation (Miyato et al.
    2018); optional batch norm after the second convolution, as in DCGAN (Radford et al. 2016). Batch norm
    makes each score depend on the whole batch, so it cannot be combined with the gradient penalty or R1,
    whose per-sample input gradients would then mix samples (the model refuses that combination)."""

    def __init__(self, data_shape: tuple[int, int, int], width: int = 64, spectral_norm: bool = False,
                 batch_norm: bool = False):
        super().__init__()
        channels, height, width_px = check_image_shape(data_shape)
        check_range(at_least=1, width=width)
        second = _maybe_sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=not batch_norm), spectral_norm)
        self.net = nn.Sequential(
            _maybe_sn(nn.Conv2d(channels, width, 4, stride=2, padding=1), spectral_norm),  # (N, w, H/2, W/2)
            nn.LeakyReLU(0.2),
            second,  # (N, 2w, H/4, W/4)
            *([nn.BatchNorm2d(2 * width)] if batch_norm else []),  # absent, not Identity: old checkpoints' keys hold
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            _maybe_sn(nn.Linear(2 * width * (height // 4) * (width_px // 4), 1), spectral_norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


def dcgan_init_(module: nn.Module) -> None:
    """Radford et al. 2016's initialisation, applied with ``net.apply``: convolution and linear weights from
    N(0, 0.02), batch-norm scales from N(1, 0.02) and shifts 0 (biases keep PyTorch's default)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = module.parametrizations.weight.original if hasattr(module, "parametrizations") else module.weight
        nn.init.normal_(weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class MLPGenerator(nn.Module):
    """z -> points ``[N, D]`` (no output squashing)."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        check_range(at_least=1, data_dim=data_dim, latent_dim=latent_dim, hidden=hidden, depth=depth)
        layers, width = [], latent_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, data_dim))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """points ``[N, D]`` -> scores ``[N]``."""

    def __init__(self, data_dim: int, hidden: int = 128, depth: int = 3, spectral_norm: bool = False):
        super().__init__()
        check_range(at_least=1, data_dim=data_dim, hidden=hidden, depth=depth)
        layers, width = [], data_dim
        for _ in range(depth):
            layers += [_maybe_sn(nn.Linear(width, hidden), spectral_norm), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*layers, _maybe_sn(nn.Linear(width, 1), spectral_norm))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)
