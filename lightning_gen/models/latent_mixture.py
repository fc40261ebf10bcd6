"""A Gaussian mixture over latent codes, fitted by EM to the codes of training images.

Sampling a VAE's decoder at z ~ N(0, I) visits regions of the prior that the aggregate posterior
q(z) = E_x q(z|x) leaves nearly empty (the "holes"); the decoder was never trained there, and the
images come out blurred or malformed. Fitting a density to the training codes after (or during)
training and sampling z from it instead is "ex-post density estimation" (Ghosh et al. 2020, who used
a 10-component Gaussian mixture); it changes no weight of the model, only where the decoder is asked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LatentMixture(nn.Module):
    """K full-covariance Gaussians: weights ``[K]``, means ``[K, d]``, Cholesky factors ``[K, d, d]``
    (buffers, so a checkpoint samples without refitting)."""

    def __init__(self, latent_dim: int, components: int):
        super().__init__()
        self.register_buffer("weights", torch.full((components,), 1.0 / components))
        self.register_buffer("means", torch.zeros(components, latent_dim))
        self.register_buffer("scale_trils", torch.eye(latent_dim).repeat(components, 1, 1))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def components(self) -> int:
        return len(self.weights)

    @torch.no_grad()
    def fit(self, codes: Tensor, iterations: int = 50, seed: int = 0) -> None:
        """EM for a Gaussian mixture (Dempster et al. 1977) on ``codes`` ``[M, d]``, in float64, from
        k-means++ centres (Arthur & Vassilvitskii 2007) drawn with ``seed``: the fit depends only on the codes.

        E-step: r_mk = w_k N(z_m | mu_k, S_k) / sum_j w_j N(z_m | mu_j, S_j);
        M-step: w_k = R_k / M, mu_k = sum_m r_mk z_m / R_k, S_k = sum_m r_mk (z_m - mu_k)(z_m - mu_k)^T / R_k,
        with R_k = sum_m r_mk and a small ridge on S_k so that no component collapses onto one code.
        """
        z = codes.detach().double()
        count, dim = z.shape
        k = min(self.components, count)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        means = _kmeans_plus_plus(z, k, generator)
        ridge = 1e-4 * z.var(0).mean().clamp_min(1e-12) * torch.eye(dim, dtype=z.dtype, device=z.device)
        covariances = (torch.cov(z.T, correction=0) + ridge).expand(k, dim, dim)
        log_weights = torch.full((k,), -math.log(k), dtype=z.dtype, device=z.device)
        for _ in range(iterations):
            log_joint = log_weights + _log_normal(z, means, torch.linalg.cholesky(covariances))  # (M, K)
            responsibilities = torch.softmax(log_joint, dim=1)
            totals = responsibilities.sum(0) + 1e-10  # R_k
            log_weights = torch.log(totals / count)
            means = responsibilities.T @ z / totals[:, None]
            # S_k = sum_m r_mk z_m z_m^T / R_k - mu_k mu_k^T: one (K d, M) x (M, d) product instead of the
            # (M, K, d) tensor of centred codes (float64 keeps the subtraction exact enough)
            weighted = (responsibilities.T[:, None, :] * z.T).reshape(k * dim, count)  # r_mk z_m, (K d, M)
            second_moments = (weighted @ z).view(k, dim, dim) / totals[:, None, None]
            covariances = second_moments - means[:, :, None] * means[:, None, :] + ridge
        weights = torch.zeros(self.components, dtype=z.dtype, device=z.device)
        weights[:k] = log_weights.exp() / log_weights.exp().sum()  # unused components (fewer codes than K) weigh 0
        self.weights.copy_(weights.float())
        self.means[:k].copy_(means.float())
        self.scale_trils[:k].copy_(torch.linalg.cholesky(covariances).float())
        self.fitted.fill_(True)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, d]`` codes: a component per code by its weight, then its Gaussian."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, self.means.shape[1], generator=generator, device=self.means.device)
        return self.means[component] + torch.einsum("nij,nj->ni", self.scale_trils[component], eps)

    def log_prob(self, z: Tensor) -> Tensor:
        """log sum_k w_k N(z | mu_k, S_k), ``[N]``."""
        used = self.weights > 0
        return torch.logsumexp(self.weights[used].log() + _log_normal(z, self.means[used], self.scale_trils[used]),
                               dim=1)


def _log_normal(z: Tensor, means: Tensor, scale_trils: Tensor) -> Tensor:
    """log N(z_m | mu_k, L_k L_k^T) for every code and component, ``[M, K]``."""
    centred = z.T - means[:, :, None]  # (K, d, M), contiguous for the solver
    solved = torch.linalg.solve_triangular(scale_trils, centred, upper=False)  # L^-1 (z - mu), (K, d, M)
    half_log_det = scale_trils.diagonal(dim1=1, dim2=2).log().sum(1)  # (K,)
    dim = z.shape[1]
    return (-0.5 * (solved * solved).sum(1) - half_log_det[:, None] - 0.5 * dim * math.log(2 * math.pi)).T


def _kmeans_plus_plus(z: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k centres: the first uniformly, each next with probability proportional to its squared distance
    from the nearest centre chosen so far."""
    first = torch.randint(len(z), (1,), generator=generator).item()
    centres = [z[first]]
    nearest = (z - z[first]).pow(2).sum(1)
    for _ in range(1, k):
        probabilities = (nearest / nearest.sum()).cpu() if nearest.sum() > 0 else torch.full((len(z),), 1 / len(z))
        chosen = torch.multinomial(probabilities.float(), 1, generator=generator).item()
        centres.append(z[chosen])
        nearest = torch.minimum(nearest, (z - z[chosen]).pow(2).sum(1))
    return torch.stack(centres)
