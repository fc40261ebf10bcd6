"""Pixel likelihoods p(x | params) for decoders. Each returns log-probabilities in nats per image.

A likelihood owns the conversion of data into its support (``prepare``) so that a model never
touches pixel ranges itself (pixel convention: ``lightning_gen.data.pixels``). Log-probabilities and
means are computed in float32 whatever the decoder's precision (``float32_region``: mixed precision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gen.data.pixels import NUM_LEVELS, binarize, from_uint8_levels, to_uint8_levels
from lightning_gen.errors import ConfigValueError
from lightning_gen.losses.precision import float32_region


class PixelLikelihood:
    """Interface: ``params`` is the decoder output ``[N, C * params_per_channel, H, W]``."""

    name: str
    params_per_channel: int
    support: str  # said in docs and error messages: what ``log_prob`` expects

    def prepare(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [0, 1] -> values in this likelihood's support."""
        return x

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params), summed over pixels -> ``[N]`` nats."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The mean image E[x | params] in [0, 1]."""
        raise NotImplementedError

    def median(self, params: Tensor) -> Tensor:
        """The per-pixel median image in [0, 1] (a value in this likelihood's support)."""
        raise NotImplementedError


class BernoulliLikelihood(PixelLikelihood):
    """p(x | logits) = prod_i Bernoulli(x_i; sigmoid(logit_i)) on binarised images.

    ``binarization='dynamic'`` re-samples each training image from Bernoulli(pixel) every time it is
    seen; evaluation steps pass a seeded generator so the held-out binarisation is the same every epoch.
    """

    name = "bernoulli"
    params_per_channel = 1
    support = "binary {0, 1}"

    def __init__(self, binarization: str = "dynamic"):
        binarize(torch.zeros(1), binarization)  # validates the mode now
        self.binarization = binarization

    def prepare(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return binarize(x, self.binarization, generator)

    @float32_region
    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        # log Bernoulli(x; sigmoid(l)) = -BCE_with_logits(l, x)
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)

    @float32_region
    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def median(self, params: Tensor) -> Tensor:
        return (params > 0).to(params.dtype)  # 1 where p = sigmoid(logit) > 1/2


class DiscretizedLogisticLikelihood(PixelLikelihood):
    """One logistic per sub-pixel, integrated over the 8-bit bin of the observed level
    (Salimans et al. 2017, PixelCNN++, with a single component; see ``discretized_logistic_log_prob``).
    params per channel: (mu, log s).
    """

    name = "discretized_logistic"
    params_per_channel = 2
    support = "8-bit levels k/255 in [0, 1]"
    min_log_scale = -7.0

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_scale = params.chunk(2, dim=1)  # each (N, C, H, W)
        return mean, log_scale.clamp(min=self.min_log_scale)

    @float32_region
    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = self._split(params)
        return discretized_logistic_log_prob(to_uint8_levels(x), mean, log_scale).flatten(1).sum(1)

    @float32_region
    def mean(self, params: Tensor) -> Tensor:
        """E[k / 255] of the discretised distribution, by summation by parts:
        E[k] = sum_{j=1}^{255} P(k >= j) = sum_j S((j - 1/2)/255), with S the logistic survival function."""
        mean, log_scale = self._split(params)
        inv_scale = torch.exp(-log_scale)
        expected_level = torch.zeros_like(mean)
        for j in range(1, NUM_LEVELS):  # a loop keeps memory at one image-sized tensor
            expected_level += torch.sigmoid(inv_scale * (mean - (j - 0.5) / (NUM_LEVELS - 1)))
        return expected_level / (NUM_LEVELS - 1)

    def median(self, params: Tensor) -> Tensor:
        """The level whose bin holds mu: the bins integrate one logistic, whose median is mu, so
        P(k <= level) >= 1/2 and P(k >= level) >= 1/2. Unlike the mean, it is not pulled off 0 or 1 by
        the tail mass of the edge bins, which is what leaves a grey veil over a wide decoder's background."""
        mean, _ = self._split(params)
        return from_uint8_levels(to_uint8_levels(mean.float()))


@float32_region
def discretized_logistic_log_prob(levels: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(level) of a logistic(mean, exp(log_scale)) on the [0, 1] scale, integrated over the 8-bit
    bin of each level (elementwise, nats).

    With x = k/255 and half-bin h = 1/510: P(k) = sigmoid((x + h - mu)/s) - sigmoid((x - h - mu)/s),
    where the bottom bin extends to -inf and the top bin to +inf, so the 256 probabilities sum to 1.
    """
    x = from_uint8_levels(levels)
    half_bin = 0.5 / (NUM_LEVELS - 1)
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (x - mean + half_bin)
    lower = inv_scale * (x - mean - half_bin)
    # P(k) = F(upper) - F(lower) = S(lower) - S(upper) with F = sigmoid, S = 1 - F. Each form is
    # computed as log a + log(1 - b/a) in log space; the CDF form is accurate left of the mean,
    # the survival form right of it, so each pixel uses the side it lies on.
    log_cdf_upper, log_cdf_lower = F.logsigmoid(upper), F.logsigmoid(lower)
    log_sf_upper, log_sf_lower = F.logsigmoid(-upper), F.logsigmoid(-lower)
    from_left = log_cdf_upper + _log1mexp(log_cdf_lower - log_cdf_upper)
    from_right = log_sf_lower + _log1mexp(log_sf_upper - log_sf_lower)
    log_bin = torch.where(x > mean, from_right, from_left)
    # the bottom bin is (-inf, x + h], the top bin (x - h, +inf)
    return torch.where(levels == 0, log_cdf_upper, torch.where(levels == NUM_LEVELS - 1, log_sf_lower, log_bin))


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0 (clamped just below 0 so a zero-width bin gives a finite value)."""
    return torch.log(-torch.expm1(a.clamp(max=-1e-30)))


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "discretized_logistic": DiscretizedLogisticLikelihood}


def build_likelihood(name: str, binarization: str = "dynamic") -> PixelLikelihood:
    if name == "bernoulli":
        return BernoulliLikelihood(binarization)
    if name in LIKELIHOODS:
        return LIKELIHOODS[name]()
    raise ConfigValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
