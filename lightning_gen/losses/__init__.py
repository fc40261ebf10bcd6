"""Objectives and likelihoods."""

from lightning_gen.losses.gaussian import gaussian_kl_to_standard, log_normal, reparameterize
from lightning_gen.losses.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    PixelLikelihood,
    build_likelihood,
)

__all__ = [
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "DiscretizedLogisticLikelihood",
    "PixelLikelihood",
    "build_likelihood",
    "gaussian_kl_to_standard",
    "log_normal",
    "reparameterize",
]
