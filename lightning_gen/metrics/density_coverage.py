"""Density and coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models",
ICML 2020) as a torchmetrics ``Metric``.

Both use only the real manifold of improved precision/recall (``precision_recall.py``): balls B(X_i, r_i)
around the N real features X_i, r_i the distance to X_i's k-th nearest real neighbour. For M generated
features Y_j:

    density  = 1 / (k M) · Σ_j Σ_i 1[Y_j ∈ B(X_i, r_i)]    (how many real balls a sample sits in, over k)
    coverage = 1 / N · Σ_i 1[∃ j: Y_j ∈ B(X_i, r_i)]       (share of real balls holding at least one sample)

Real balls make them robust to outlying samples (which inflate the generated manifold of precision/recall).
For samples from the real distribution density is 1 in expectation; above 1 means samples crowd the dense real
regions, below 1 that they stray. "In the ball" is a strict ``<``, as in the authors' ``prdc`` package.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_gen.errors import ConfigValueError
from lightning_gen.metrics.precision_recall import NeighbourhoodMetric, kth_neighbour_radii


def density_coverage(real: Tensor, fake: Tensor, k: int, chunk: int = 1024) -> tuple[float, float]:
    """``real``: ``[N, d]``, ``fake``: ``[M, d]`` features. Returns (density, coverage)."""
    radii = kth_neighbour_radii(real, k)  # (N,)
    in_balls = torch.zeros((), dtype=torch.float64, device=real.device)  # Σ_j Σ_i 1[Y_j ∈ B(X_i, r_i)]
    covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for start in range(0, len(fake), chunk):
        inside = torch.cdist(fake[start : start + chunk], real) < radii.unsqueeze(0)  # (c, N)
        in_balls += inside.sum()
        covered |= inside.any(dim=0)
    return float(in_balls / (k * len(fake))), float(covered.double().mean())


class DensityCoverage(NeighbourhoodMetric):
    """``compute()`` -> (density, coverage)."""

    def compute(self) -> tuple[float, float]:
        real, fake = self.features()
        if len(real) <= self.k or len(fake) < 1:
            raise ConfigValueError(f"density/coverage with k={self.k} needs more than {self.k} real images and "
                                   "at least one sample")
        return density_coverage(real, fake, self.k)
