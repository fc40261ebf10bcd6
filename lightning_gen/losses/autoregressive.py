"""Per-pixel distributions of autoregressive models over 8-bit images.

An autoregressive model factorises p(x) = prod_t p(x_t | x_<t); its network emits ``params_per_pixel``
numbers for every pixel, and a distribution here turns them into

- ``log_prob(params, x)``: log p(x) summed over every sub-pixel, ``[N]`` nats (exact, no bound);
- ``sample_pixel(params, noise, group)``: the values of one pixel's channel group in [0, 1], from
  uniform noise drawn in advance, so that two samplers fed the same noise draw the same image.

``groups`` says how a pixel is generated: the categorical distribution samples one channel at a time
(R, then G given R, then B given R and G: the network masks its channels accordingly), the mixture
samples all channels of a pixel at once and couples them itself. Both compute in float32 whatever the
network's precision (``float32_region``: a 256-way log-softmax loses its bits in bfloat16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gen.data.pixels import NUM_LEVELS, from_uint8_levels, to_uint8_levels
from lightning_gen.errors import ConfigValueError
from lightning_gen.losses.likelihoods import discretized_logistic_log_prob
from lightning_gen.losses.precision import float32_region


def inverse_cdf_sample(probabilities: Tensor, uniform: Tensor) -> Tensor:
    """Index k with cdf(k - 1) <= u < cdf(k), for ``probabilities`` ``[N, K]`` and ``uniform`` ``[N]``."""
    cdf = probabilities.cumsum(dim=1)
    return (cdf < uniform[:, None]).sum(dim=1).clamp(max=probabilities.shape[1] - 1)


class PixelDistribution:
    name: str
    params_per_pixel: int
    groups: int
    noise_per_pixel: int

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """``params`` ``[N, P, H, W]``, images ``x`` ``[N, C, H, W]`` in [0, 1] -> log p(x), ``[N]`` nats."""
        raise NotImplementedError

    def sample_pixel(self, params: Tensor, noise: Tensor, group: int) -> Tensor:
        """``params`` ``[N, P]`` and ``noise`` ``[N, noise_per_pixel]`` of one pixel -> the values of the
        group's channels, ``[N, channels in group]`` in [0, 1]."""
        raise NotImplementedError


class CategoricalPixels(PixelDistribution):
    """A 256-way softmax per sub-pixel: p(x_t,c | x_<t, x_t,<c) = softmax(logits_c)[x_t,c].

    params: C blocks of 256 logits (channel c's block only sees channels < c of its own pixel).
    """

    name = "categorical"

    def __init__(self, channels: int):
        self.channels = channels
        self.params_per_pixel = channels * NUM_LEVELS
        self.groups = channels
        self.noise_per_pixel = channels

    @float32_region
    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        n, _, height, width = params.shape
        levels = to_uint8_levels(x)
        if params.is_contiguous(memory_format=torch.channels_last) and not params.is_contiguous():
            # NHWC memory (a ``channels_last`` network): each pixel's 256 logits are adjacent, so the softmax
            # runs along memory instead of 784 floats apart (the NCHW view would copy all 256 H W N logits)
            logits = params.permute(0, 2, 3, 1).view(n, height, width, self.channels, NUM_LEVELS)
            chosen = F.log_softmax(logits, dim=4).gather(4, levels.permute(0, 2, 3, 1).unsqueeze(4))
            return chosen.flatten(1).sum(1)
        logits = params.view(n, self.channels, NUM_LEVELS, height, width)
        log_probs = F.log_softmax(logits, dim=2)
        chosen = log_probs.gather(2, levels.unsqueeze(2)).squeeze(2)  # (N, C, H, W)
        return chosen.flatten(1).sum(1)

    @float32_region
    def sample_pixel(self, params: Tensor, noise: Tensor, group: int) -> Tensor:
        logits = params.view(len(params), self.channels, NUM_LEVELS)[:, group]
        level = inverse_cdf_sample(torch.softmax(logits, dim=1), noise[:, group])
        return from_uint8_levels(level).to(params.dtype)[:, None]


class DiscretizedLogisticMixture(PixelDistribution):
    """PixelCNN++'s likelihood (Salimans et al. 2017): per pixel, a mixture of M components, each a
    product over channels of discretised logistics whose means depend linearly on the earlier channels:

        p(x_t | x_<t) = sum_m pi_m prod_c DLogistic(x_t,c; mu_m,c + sum_{c' < c} alpha_m,c,c' x_t,c', s_m,c)

    so all channels of a pixel come from one network output (``groups = 1``). Scale: [0, 1] pixels.
    params per pixel, in blocks of M: mixture logits, means (C blocks), log scales (C blocks), then the
    C(C-1)/2 coefficients alpha (tanh-squashed).
    """

    name = "logistic_mixture"
    groups = 1
    min_log_scale = -7.0

    def __init__(self, channels: int, components: int = 5):
        if components < 1:
            raise ConfigValueError(f"a mixture needs at least one component, got {components}")
        self.channels, self.components = channels, components
        self.num_coefficients = channels * (channels - 1) // 2
        self.params_per_pixel = components * (1 + 2 * channels + self.num_coefficients)
        self.noise_per_pixel = 1 + channels  # the component, then one logistic draw per channel

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> logits (N, M, ...), means (N, M, C, ...), log scales (N, M, C, ...),
        coefficients (N, M, C(C-1)/2, ...)."""
        m, c = self.components, self.channels
        rest = params.shape[2:]
        logits, means, log_scales, coefficients = params.split([m, m * c, m * c, m * self.num_coefficients], dim=1)
        return (logits, means.reshape(len(params), m, c, *rest),
                log_scales.reshape(len(params), m, c, *rest).clamp(min=self.min_log_scale),
                torch.tanh(coefficients.reshape(len(params), m, self.num_coefficients, *rest)))

    def _channel_mean(self, means: Tensor, coefficients: Tensor, x: Tensor, channel: int) -> Tensor:
        """mu_c + sum_{c' < c} alpha_{c, c'} x_c' (coefficients stored in (c, c') order: (1,0), (2,0), (2,1), ...)."""
        mean = means[:, :, channel]
        first = channel * (channel - 1) // 2
        for earlier in range(channel):
            mean = mean + coefficients[:, :, first + earlier] * x[:, earlier].unsqueeze(1)
        return mean

    @float32_region
    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logits, means, log_scales, coefficients = self._split(params)
        levels = to_uint8_levels(x)
        x = from_uint8_levels(levels)  # condition on the observed levels, exactly as sampling does
        per_channel = [
            discretized_logistic_log_prob(levels[:, c].unsqueeze(1), self._channel_mean(means, coefficients, x, c),
                                          log_scales[:, :, c])
            for c in range(self.channels)
        ]  # each (N, M, H, W)
        log_mixture = torch.logsumexp(F.log_softmax(logits, dim=1) + torch.stack(per_channel).sum(0), dim=1)
        return log_mixture.flatten(1).sum(1)

    @float32_region
    def sample_pixel(self, params: Tensor, noise: Tensor, group: int) -> Tensor:
        logits, means, log_scales, coefficients = self._split(params)
        component = inverse_cdf_sample(torch.softmax(logits, dim=1), noise[:, 0])
        pick = lambda t: t[torch.arange(len(t), device=t.device), component]  # noqa: E731  (N, M, K) -> (N, K)
        means, log_scales, coefficients = pick(means), pick(log_scales), pick(coefficients)
        values = torch.zeros(len(params), self.channels, device=params.device, dtype=params.dtype)
        for c in range(self.channels):
            mean = self._channel_mean(means[:, None], coefficients[:, None], values, c)[:, 0]
            u = noise[:, 1 + c]
            # a continuous logistic draw, rounded to the nearest level with the tails in the end levels,
            # has exactly the discretised probabilities that log_prob integrates
            continuous = mean + torch.exp(log_scales[:, c]) * (torch.log(u) - torch.log1p(-u))
            values[:, c] = from_uint8_levels(to_uint8_levels(continuous))
        return values


class CategoricalCodes:
    """A K-way softmax per cell of a grid of discrete codes (a VQ-VAE's latent grid), the categorical of
    ``CategoricalPixels`` without its 256 ordered levels: p(z_t | z_<t) = softmax(logits_t)[z_t].

    Codes are indices ``[N, h, w]`` (long), logits ``[N, K, h, w]``.
    """

    def __init__(self, num_codes: int):
        if num_codes < 2:
            raise ConfigValueError(f"a categorical over codes needs at least 2 codes, got {num_codes}")
        self.num_codes = num_codes

    @float32_region
    def log_prob(self, logits: Tensor, codes: Tensor) -> Tensor:
        """sum_t log softmax(logits_t)[z_t]: ``[N]`` nats per grid."""
        chosen = F.log_softmax(logits, dim=1).gather(1, codes.unsqueeze(1)).squeeze(1)  # (N, h, w)
        return chosen.flatten(1).sum(1)

    @float32_region
    def sample(self, logits: Tensor, uniform: Tensor) -> Tensor:
        """Codes ``[N]`` for the logits ``[N, K]`` of one cell, by inverse CDF of ``uniform`` ``[N]``."""
        return inverse_cdf_sample(torch.softmax(logits, dim=1), uniform)


DISTRIBUTIONS = ("categorical", "logistic_mixture")


def build_pixel_distribution(name: str, channels: int, mixture_components: int = 5) -> PixelDistribution:
    if name == "categorical":
        return CategoricalPixels(channels)
    if name == "logistic_mixture":
        return DiscretizedLogisticMixture(channels, mixture_components)
    raise ConfigValueError(f"unknown pixel distribution {name!r}; choose one of {DISTRIBUTIONS}")
