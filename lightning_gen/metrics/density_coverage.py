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
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.metrics.precision_recall import kth_neighbour_radii


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


class DensityCoverage(Metric):
    """``update(features, real)`` like torchmetrics' FID; ``compute()`` -> (density, coverage). Features are
    gathered across processes (``cat``), so the value under DDP equals the single-process value."""

    full_state_update = False

    def __init__(self, k: int = 3, **kwargs):
        super().__init__(**kwargs)
        check_range(at_least=1, k=k)
        self.k = k
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features.double())

    def compute(self) -> tuple[float, float]:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        if len(real) <= self.k or len(fake) < 1:
            raise ConfigValueError(f"density/coverage with k={self.k} needs more than {self.k} real images and "
                                   "at least one sample")
        return density_coverage(real, fake, self.k)
