"""Diagonal-Gaussian pieces of the VAE objective. All log-densities in nats, computed in float32 whatever the
encoder's precision (``float32_region``): under bfloat16, z - mean would keep 8 bits of z's magnitude."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_gen.losses.precision import float32_region

_LOG_2PI = math.log(2 * math.pi)


@float32_region
def reparameterize(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mean + sigma * eps, eps ~ N(0, I): a sample of N(mean, diag(exp(logvar))) that is
    differentiable in ``mean`` and ``logvar`` (Kingma & Welling 2014)."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


@float32_region
def gaussian_kl_to_standard(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) in closed form, summed over the last dim -> ``[N]`` nats.

    KL = 1/2 * sum_j (mean_j^2 + sigma_j^2 - 1 - log sigma_j^2).
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


@float32_region
def log_normal(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over the last dim (nats)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar)).sum(dim=-1)


@float32_region
def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dim (nats)."""
    return -0.5 * (_LOG_2PI + z.pow(2)).sum(dim=-1)
