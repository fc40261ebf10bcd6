import math

import pytest
import torch

from lightning_gen.losses import BernoulliLikelihood, DiscretizedLogisticLikelihood, build_likelihood

ALL_LEVELS = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1)  # every 8-bit value, one pixel


def _constant_params(mean: float, log_scale: float, n: int = 256) -> torch.Tensor:
    return torch.cat([torch.full((n, 1, 1, 1), mean), torch.full((n, 1, 1, 1), log_scale)], dim=1)


@pytest.mark.parametrize(
    "mean, log_scale",
    [(0.3, -2.0), (0.0, -6.0), (1.0, -7.0), (0.5, 3.0), (-3.0, -7.0), (0.71, -4.5), (0.5, -7.0)],
)
def test_discretized_logistic_probabilities_normalise_over_all_256_levels(mean, log_scale):
    log_p = DiscretizedLogisticLikelihood().log_prob(_constant_params(mean, log_scale), ALL_LEVELS)
    assert torch.isfinite(log_p).all()
    assert abs(log_p.exp().sum().item() - 1.0) < 1e-5


def test_discretized_logistic_matches_the_cdf_difference_in_float64():
    mean, log_scale = 0.42, -3.0
    x = ALL_LEVELS.double().flatten()
    scale = math.exp(log_scale)
    cdf = lambda t: torch.sigmoid((t - mean) / scale)  # noqa: E731
    half = 0.5 / 255
    expected = cdf(x + half) - cdf(x - half)
    expected[0], expected[-1] = cdf(x[0] + half), 1 - cdf(x[-1] - half)
    log_p = DiscretizedLogisticLikelihood().log_prob(_constant_params(mean, log_scale), ALL_LEVELS)
    mask = expected > 1e-30
    torch.testing.assert_close(log_p.double()[mask], expected[mask].log(), rtol=1e-4, atol=1e-4)


def test_discretized_logistic_sums_pixels_and_prefers_the_observed_level():
    x = torch.full((1, 1, 4, 4), 100 / 255)
    near = DiscretizedLogisticLikelihood().log_prob(torch.cat([x, torch.full_like(x, -5.0)], 1), x)
    far = DiscretizedLogisticLikelihood().log_prob(torch.cat([x + 0.3, torch.full_like(x, -5.0)], 1), x)
    one_pixel = DiscretizedLogisticLikelihood().log_prob(_constant_params(100 / 255, -5.0, 1), x[:, :, :1, :1])
    torch.testing.assert_close(near, 16 * one_pixel)
    assert near.item() > far.item() + 10


def test_bernoulli_matches_torch_distributions():
    logits = torch.randn(3, 1, 4, 4)
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(BernoulliLikelihood().log_prob(logits, x), expected)


def test_unknown_likelihood_names_the_choices():
    with pytest.raises(ValueError, match="discretized_logistic"):
        build_likelihood("gaussian_mixture")


@pytest.mark.parametrize("mean, log_scale", [(0.3, -2.0), (-0.2, -3.0), (1.3, -1.0), (0.5, -7.0)])
def test_discretized_logistic_mean_is_the_expected_level(mean, log_scale):
    likelihood = DiscretizedLogisticLikelihood()
    probabilities = likelihood.log_prob(_constant_params(mean, log_scale), ALL_LEVELS).exp()
    expected = (probabilities * ALL_LEVELS.flatten()).sum()
    actual = likelihood.mean(_constant_params(mean, log_scale, 1)).flatten()[0]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert 0 <= actual <= 1


@pytest.mark.parametrize("mean, log_scale", [(0.3, -2.0), (-0.2, -3.0), (1.3, -1.0), (0.5, -7.0), (0.02, -2.5),
                                             (0.6 + 0.25 / 255, -4.0)])
def test_discretized_logistic_median_splits_the_probability_mass(mean, log_scale):
    """The median level m has P(k <= m) >= 1/2 and P(k >= m) >= 1/2, checked on the 256 probabilities."""
    likelihood = DiscretizedLogisticLikelihood()
    probabilities = likelihood.log_prob(_constant_params(mean, log_scale), ALL_LEVELS).exp().double()
    median = likelihood.median(_constant_params(mean, log_scale, 1)).flatten()[0]
    level = int(round(median.item() * 255))
    assert median == torch.tensor(level / 255)  # a value of the support (float32, as the data)
    assert probabilities[: level + 1].sum() >= 0.5 - 1e-5
    assert probabilities[level:].sum() >= 0.5 - 1e-5


def test_discretized_logistic_median_keeps_a_dark_pixel_dark_where_the_mean_greys_it():
    """A wide logistic just above 0: the clipped upper tail lifts the mean off black (the grey veil over
    a blurry decoder's background); the median stays at the location's level."""
    params = _constant_params(0.02, -2.0, 1)  # scale 0.135
    likelihood = DiscretizedLogisticLikelihood()
    assert likelihood.mean(params).item() > 0.1
    assert likelihood.median(params) == torch.tensor(round(0.02 * 255) / 255)


def test_bernoulli_median_is_the_more_likely_value():
    logits = torch.tensor([-3.0, -0.1, 0.1, 2.0]).view(4, 1, 1, 1)
    assert BernoulliLikelihood().median(logits).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
