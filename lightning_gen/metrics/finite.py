"""Samples with NaN or ±inf values are refused, once, at every boundary, before any statistics.

A diverged model samples NaN; `evaluate --samples` may be handed a file of them. Scored anyway, they reach
FID's matrix square root, where the linear algebra library does not raise but kills the process (MKL's
``DGEBAL``: exit 139). So every way samples enter evaluation calls one check here: a file (`evaluate
--samples`, ``metrics/sample_files.py``), the `sample` command before it writes, and the sampling pass of
``EvaluationRun`` (`evaluate`, `compare`, ``EvaluationCallback``). The error is one line: how many values
are bad, in how many samples, and where they came from.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_gen.errors import LightningGenError

FIX = ("refused before any statistics: the model diverged or its sampler overflowed; score an earlier checkpoint "
       "(or fix the sampler)")


class NonFiniteSamplesError(LightningGenError):
    """Samples (or statistics of their features) hold NaN or ±inf: refused before any linear algebra."""


def count_nonfinite(images: Tensor) -> tuple[int, int]:
    """``images``: ``[N, ...]``. Returns (non-finite values, samples holding at least one)."""
    bad = ~torch.isfinite(images.reshape(len(images), -1))  # (N, values per sample)
    return int(bad.sum()), int(bad.any(dim=1).sum())


def nonfinite_message(bad_values: int, bad_samples: int, total: int, source: str, fix: str = FIX) -> str:
    """The one line the refusal prints."""
    return f"{source}: {bad_values:,} non-finite values (NaN or ±inf) in {bad_samples:,} of {total:,} samples; {fix}"


def raise_if_nonfinite(bad_values: int, bad_samples: int, total: int, source: str, fix: str = FIX) -> None:
    if bad_values:
        raise NonFiniteSamplesError(nonfinite_message(bad_values, bad_samples, total, source, fix))


def check_finite_samples(images: Tensor, source: str, fix: str = FIX) -> None:
    """Raise ``NonFiniteSamplesError`` if ``images`` (``[N, ...]``) hold a NaN or ±inf; ``source`` says where
    they came from (``--samples x.npz``, ``samples of VAE (seed 0)``)."""
    raise_if_nonfinite(*count_nonfinite(images), len(images), source, fix)


def check_finite_statistics(what: str, **statistics: Tensor) -> None:
    """Raise if a statistic (a mean, a covariance) is not finite: finite samples whose features overflow
    would otherwise reach an eigendecomposition that crashes instead of raising."""
    for name, value in statistics.items():
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise NonFiniteSamplesError(
                f"{what}: the {name} has {bad:,} non-finite entries of {value.numel():,} (features of samples too "
                "large to represent), refused before the matrix square root: the model diverged or its sampler "
                "overflowed; score an earlier checkpoint (or fix the sampler)")
