"""Fréchet distances between feature Gaussians: FID guarded against non-finite statistics, FID∞ (FID
extrapolated to infinitely many samples) and the bootstrap spread of FID over sample draws.

The Fréchet distance between N(μ_r, Σ_r) (real features) and N(μ_g, Σ_g) (generated features) is

    d² = |μ_r − μ_g|² + tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^{1/2}.

``tr (Σ_r Σ_g)^{1/2}`` is the sum of the square roots of the eigenvalues of Σ_r Σ_g, which are those of the
symmetric positive semi-definite S Σ_g S with S = Σ_r^{1/2} (AB and BA share their eigenvalues). S is computed
once per real set, and each sample set then costs one symmetric eigendecomposition, stabler and several times
cheaper than the general one.

**FID∞** (Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020).
FID estimated from N samples is biased upwards, by an amount close to linear in 1/N, so models compared at
different N (or one model evaluated with 3000 samples in training and 10,000 afterwards) differ for that reason
alone. FID∞ computes FID_N at several N (``FID_INFINITY_POINTS`` sizes from N/5 to N, each a random subset of
the generated features: no new samples), fits FID_N = a + b / N by least squares and reports the intercept a,
the value at N = ∞. The real images' statistics are fixed, so their own (smaller) bias is not removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from lightning_gen.errors import check_range
from lightning_gen.metrics.finite import check_finite_statistics

FID_INFINITY_POINTS = 5  # sample sizes N/5, 2N/5, ..., N the line is fitted through
BOOTSTRAP_DRAWS = 10  # resamplings of the generated features behind fid_std


def gaussian_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """``features``: ``[N, d]`` -> mean ``[d]`` and unbiased covariance ``[d, d]``, float64."""
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean  # (N, d)
    return mean, centred.T @ centred / (len(x) - 1)


class FrechetReference:
    """The real features' Gaussian, ready to measure the Fréchet distance of many sample sets to it."""

    def __init__(self, mean: Tensor, cov: Tensor):
        check_finite_statistics("FID", **{"real features' mean": mean, "real features' covariance": cov})
        self.mean, self.trace = mean, float(cov.trace())
        eigenvalues, vectors = torch.linalg.eigh(cov)
        self.sqrt_cov = (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T  # Σ_r^{1/2}, symmetric

    def distance(self, mean: Tensor, cov: Tensor) -> float:
        """The Fréchet distance d² to N(``mean``, ``cov``) (squared feature units, like FID)."""
        check_finite_statistics("FID", **{"generated features' mean": mean, "generated features' covariance": cov})
        inner = self.sqrt_cov @ cov @ self.sqrt_cov
        inner = (inner + inner.T) / 2  # symmetric up to rounding; make it exactly so for eigvalsh
        trace_sqrt = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()
        return float((self.mean - mean).square().sum() + self.trace + cov.trace() - 2 * trace_sqrt)


class GuardedFrechetInceptionDistance(FrechetInceptionDistance):
    """torchmetrics' FID (float64 sums, synced across processes), whose ``compute`` first checks that the
    synced means and covariances are finite: its eigendecomposition would crash the process on them."""

    def compute(self) -> Tensor:
        if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
            return super().compute()  # torchmetrics' own error
        for kind, said in (("real", "real"), ("fake", "generated")):
            count = getattr(self, f"{kind}_features_num_samples")
            mean = getattr(self, f"{kind}_features_sum") / count
            cov = (getattr(self, f"{kind}_features_cov_sum") - count * torch.outer(mean, mean)) / (count - 1)
            check_finite_statistics("FID", **{f"{said} features' mean": mean, f"{said} features' covariance": cov})
        return super().compute()


@dataclass
class FIDInfinityFit:
    """FID∞ = ``intercept``; FID_N ≈ intercept + slope / N over ``sizes``/``fids``; ``fid_std``: the standard
    deviation of FID at the full N over ``BOOTSTRAP_DRAWS`` resamplings (with replacement) of the samples."""

    intercept: float
    slope: float
    sizes: list[int]
    fids: list[float]
    fid_std: float


def fid_infinity(reference: FrechetReference, fake: Tensor, generator: torch.Generator,
                 points: int = FID_INFINITY_POINTS, draws: int = BOOTSTRAP_DRAWS) -> FIDInfinityFit:
    """Fit FID_N = a + b / N on ``points`` subset sizes N/points, ..., N of ``fake`` (``[N, d]``, without
    replacement, drawn with the CPU ``generator``) and bootstrap the spread of FID_N at the full N."""
    check_range(at_least=2, points=points, draws=draws)
    n = len(fake)
    check_range(at_least=2 * points, **{"generated samples for FID∞": n})
    sizes = [round(n * (i + 1) / points) for i in range(points)]  # (N/points, ..., N)

    def fid_of(index: Tensor) -> float:
        return reference.distance(*gaussian_statistics(fake[index.to(fake.device)]))

    fids = [fid_of(torch.randperm(n, generator=generator)[:size]) for size in sizes]
    design = torch.tensor([[1.0, 1.0 / size] for size in sizes], dtype=torch.float64)  # (points, 2): [1, 1/N]
    (intercept, slope), *_ = torch.linalg.lstsq(design, torch.tensor(fids, dtype=torch.float64)[:, None])
    bootstrap = torch.tensor([fid_of(torch.randint(n, (n,), generator=generator)) for _ in range(draws)],
                             dtype=torch.float64)
    return FIDInfinityFit(float(intercept), float(slope), sizes, fids, float(bootstrap.std()))


class FIDInfinity(Metric):
    """``update(features, real)`` like torchmetrics' FID; ``compute()`` -> ``FIDInfinityFit``. Features are
    gathered across processes (``cat``), and the subsets are drawn from ``seed``, so every process computes
    the single-process value."""

    full_state_update = False

    def __init__(self, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features.double())

    def compute(self) -> FIDInfinityFit:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        check_range(at_least=2, **{"real images for FID∞": len(real)})
        generator = torch.Generator().manual_seed(self.seed)
        return fid_infinity(FrechetReference(*gaussian_statistics(real)), fake, generator)
