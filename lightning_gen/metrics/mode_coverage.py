"""Mode coverage on a Gaussian mixture with known components (toy 2-D data).

A sample is *high quality* if it lies within ``3 * std`` of its nearest component mean. A component
is *covered* if it receives at least ``min_share`` of the high-quality samples that a perfect sampler
would give it (its fair share, 1/K of all samples). These are the diagnostics of the unrolled-GAN
paper (Metz et al. 2017), with an explicit coverage threshold. Counts add up across processes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def high_quality_counts(samples: Tensor, means: Tensor, std: float) -> Tensor:
    """Per component, how many samples lie within 3 std of it (and nearer to it than to any other): ``[K]``."""
    distances = torch.cdist(samples.float(), means.to(samples.device).float())  # (N, K)
    nearest_distance, nearest = distances.min(dim=1)
    return torch.bincount(nearest[nearest_distance <= 3 * std], minlength=len(means)).float()


def coverage_from_counts(counts: Tensor, num_samples: int, min_share: float = 0.2) -> dict[str, float]:
    fair_share = num_samples / len(counts)
    return {
        "modes_covered": float((counts >= min_share * fair_share).sum()),
        "high_quality_fraction": float(counts.sum() / num_samples),
        "largest_mode_share": float(counts.max() / counts.sum().clamp(min=1)),
    }


def mode_coverage(samples: Tensor, means: Tensor, std: float, min_share: float = 0.2) -> dict[str, float]:
    """``samples`` ``[N, 2]``, ``means`` ``[K, 2]`` -> modes covered (count), high-quality fraction, and
    the share of high-quality samples that the most popular mode takes."""
    return coverage_from_counts(high_quality_counts(samples, means, std), len(samples), min_share)
