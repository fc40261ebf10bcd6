"""Blur and sharpness as a number: the power spectrum of images.

A pixel-wise factorised likelihood (a VAE's decoder) averages away what it cannot predict, and what it cannot
predict is mostly fine detail: high spatial frequencies. The power at frequency (u, v) is |F(u, v)|², F the 2-D
Fourier transform of an image minus its mean; averaged over images and channels and binned by the radius
sqrt(u² + v²) it is the radially averaged power spectrum. The sharpness ratio is

    hf_energy_ratio = (power of the samples above the cutoff) / (power of real images above the cutoff)

with the cutoff a share of the Nyquist frequency (half the sampling rate: radius min(H, W) / 2). Real images
against real images give 1; a blurred copy less, added noise more.
"""

from __future__ import annotations

import torch
from torch import Tensor

NYQUIST_SHARE = 0.5  # the default cutoff: power above half the Nyquist frequency


def frequency_radius(height: int, width: int) -> Tensor:
    """``[H, W]``: the radius of each frequency of ``torch.fft.fft2`` (cycles per image, DC at 0)."""
    rows = torch.fft.fftfreq(height) * height  # 0, 1, ..., -1: cycles per image
    columns = torch.fft.fftfreq(width) * width
    return (rows[:, None] ** 2 + columns[None, :] ** 2).sqrt()


class PowerSpectrum:
    """A running mean of the 2-D power spectrum of images ``[N, C, H, W]`` (float64; DDP: ``all_reduce``)."""

    def __init__(self):
        self.power_sum: Tensor | None = None  # [H, W], summed over images and channels
        self.count = 0  # images x channels

    def update(self, images: Tensor) -> None:
        x = images.detach().to(torch.float64)
        x = x - x.mean(dim=(-2, -1), keepdim=True)  # no DC: the mean brightness is not detail
        power = torch.fft.fft2(x).abs().pow(2).sum(dim=(0, 1)).cpu()  # (H, W)
        self.power_sum = power if self.power_sum is None else self.power_sum + power
        self.count += x.shape[0] * x.shape[1]

    def all_reduce(self) -> None:
        """Sum over processes (every process must call it, with the same image shape)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            packed = torch.cat([self.power_sum.flatten(), torch.tensor([float(self.count)], dtype=torch.float64)])
            packed = packed.to(device)
            dist.all_reduce(packed)
            packed = packed.cpu()
            self.power_sum, self.count = packed[:-1].reshape(self.power_sum.shape), int(packed[-1])

    @property
    def mean_power(self) -> Tensor:
        """``[H, W]`` power per image and channel."""
        return self.power_sum / self.count

    def radial(self) -> Tensor:
        """``[R]``: mean power per integer radius 0 .. min(H, W) / 2 (the Nyquist frequency)."""
        height, width = self.power_sum.shape
        radius = frequency_radius(height, width).round().long()
        nyquist = min(height, width) // 2
        inside = radius <= nyquist
        sums = torch.zeros(nyquist + 1, dtype=torch.float64).index_add_(0, radius[inside], self.mean_power[inside])
        return sums / torch.bincount(radius[inside], minlength=nyquist + 1).clamp(min=1)

    def power_above(self, nyquist_share: float = NYQUIST_SHARE) -> float:
        """Power per image and channel at frequencies above ``nyquist_share`` x the Nyquist frequency."""
        height, width = self.power_sum.shape
        above = frequency_radius(height, width) > nyquist_share * min(height, width) / 2
        return float(self.mean_power[above].sum())


def high_frequency_ratio(samples: PowerSpectrum, real: PowerSpectrum, nyquist_share: float = NYQUIST_SHARE) -> float:
    """Power of ``samples`` above the cutoff over that of ``real``: 1 as sharp as real, < 1 blurrier, > 1 noisier."""
    return samples.power_above(nyquist_share) / real.power_above(nyquist_share)
