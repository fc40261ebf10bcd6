"""The Gaussian mixture fitted to latent codes, and the VAE that samples from it."""

from __future__ import annotations

import pytest
import torch

from lightning_gen.callbacks.pictures import picture_grids
from lightning_gen.errors import CheckpointError
from lightning_gen.models import VAE
from lightning_gen.models.latent_mixture import LatentMixture

# three clusters with known weights, means and covariances (2-D)
WEIGHTS = torch.tensor([0.2, 0.5, 0.3])
MEANS = torch.tensor([[0.0, 0.0], [6.0, 6.0], [-6.0, 6.0]])
COVARIANCES = torch.stack([torch.tensor([[1.0, 0.5], [0.5, 1.0]]), torch.tensor([[0.5, 0.0], [0.0, 2.0]]),
                           torch.tensor([[1.5, -0.6], [-0.6, 0.5]])])


def _draw(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    component = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    eps = torch.randn(n, 2, generator=generator)
    return MEANS[component] + torch.einsum("nij,nj->ni", torch.linalg.cholesky(COVARIANCES)[component], eps)


def _fitted(components: int, codes: torch.Tensor) -> LatentMixture:
    mixture = LatentMixture(2, components)
    mixture.fit(codes)
    return mixture


def test_em_recovers_the_generating_mixture():
    mixture = _fitted(3, _draw(6000, seed=0))
    order = torch.cdist(MEANS, mixture.means).argmin(1)  # the fitted component nearest each true mean
    assert sorted(order.tolist()) == [0, 1, 2]
    covariances = mixture.scale_trils @ mixture.scale_trils.transpose(1, 2)
    assert torch.allclose(mixture.weights[order], WEIGHTS, atol=0.02)
    assert torch.allclose(mixture.means[order], MEANS, atol=0.1)
    assert torch.allclose(covariances[order], COVARIANCES, atol=0.15)


def test_mixture_explains_held_out_codes_better_than_one_gaussian():
    train, held_out = _draw(4000, seed=1), _draw(2000, seed=2)
    mixture, single = _fitted(3, train), _fitted(1, train)
    # the true mixture's entropy is about 3.3 nats; one Gaussian over three clusters pays well over a nat more
    assert mixture.log_prob(held_out).mean() > single.log_prob(held_out).mean() + 1.0


def test_samples_follow_the_fit_and_the_seed():
    mixture = _fitted(3, _draw(6000, seed=3))
    samples = mixture.sample(50_000, torch.Generator().manual_seed(0))
    # the fitted mixture's own mean and covariance: sum_k w_k mu_k and sum_k w_k (S_k + mu_k mu_k^T) - mu mu^T
    w, mu = mixture.weights, mixture.means
    mean = (w[:, None] * mu).sum(0)
    second_moment = (w[:, None, None] * (mixture.scale_trils @ mixture.scale_trils.transpose(1, 2)
                                         + mu[:, :, None] * mu[:, None, :])).sum(0)
    assert torch.allclose(samples.mean(0), mean, atol=0.05)  # the standard error is about 0.015
    assert torch.allclose(torch.cov(samples.T), second_moment - torch.outer(mean, mean), rtol=0.05, atol=0.1)
    again = mixture.sample(50_000, torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


def test_fewer_codes_than_components_leaves_the_rest_unused():
    codes = _draw(2, seed=4)
    mixture = LatentMixture(2, 5)
    mixture.fit(codes)
    assert (mixture.weights[2:] == 0).all() and torch.isclose(mixture.weights.sum(), torch.tensor(1.0))
    assert torch.isfinite(mixture.sample(100, torch.Generator().manual_seed(0))).all()


def _vae(**kwargs) -> VAE:
    torch.manual_seed(0)
    return VAE(latent_dim=4, channels=4, hidden=16, sample_latents="posterior_mixture", **kwargs)


def test_vae_samples_from_the_prior_until_it_has_seen_codes():
    vae, prior_vae = _vae(), _vae()
    prior_vae.sample_latents = "prior"
    draw = lambda model: model.sample(8, torch.Generator().manual_seed(0))  # noqa: E731
    assert torch.equal(draw(vae), draw(prior_vae))
    vae._remember_codes(torch.full((50, 4), 3.0) + torch.randn(50, 4) * 0.01)
    assert not torch.equal(draw(vae), draw(prior_vae))
    assert vae.latent_mixture.fitted and torch.allclose(vae.latent_mixture.means[vae.latent_mixture.weights > 0],
                                                        torch.tensor(3.0), atol=0.05)


def test_vae_remembers_only_the_latest_codes_and_refits_only_on_new_ones():
    vae = _vae(mixture_codes=100, mixture_components=1)
    vae._remember_codes(torch.zeros(80, 4))
    vae._remember_codes(torch.ones(250, 4))  # more than the buffer holds: its last 100 rows stay
    assert torch.equal(vae._recent_codes, torch.ones(100, 4))
    vae.fit_latent_mixture()
    fitted_means = vae.latent_mixture.means.clone()
    vae.latent_mixture.means.zero_()
    vae.fit_latent_mixture()  # nothing new since the fit: no refit
    assert torch.equal(vae.latent_mixture.means, torch.zeros_like(fitted_means))
    vae._remember_codes(torch.full((10, 4), 2.0))
    vae.fit_latent_mixture()
    assert torch.allclose(vae.latent_mixture.means, torch.full((1, 4), 1.1), atol=1e-4)  # 90 ones and 10 twos


def test_the_fitted_mixture_travels_in_the_state_dict():
    vae = _vae()
    vae._remember_codes(torch.randn(200, 4) + 5)
    vae.fit_latent_mixture()
    restored = _vae()
    restored.load_state_dict(vae.state_dict())
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(restored.sample(6, generator()), vae.sample(6, generator()))


def test_pictures_show_the_prior_samples_beside_the_mixture_samples():
    vae = _vae()
    vae._remember_codes(torch.randn(200, 4) + 5)
    grids = picture_grids(vae, None, torch.Generator().manual_seed(0), num_samples=8)
    assert set(grids) == {"samples", "prior_samples"}
    assert not torch.equal(grids["samples"][0], grids["prior_samples"][0])
    vae.sample_latents = "prior"
    assert set(picture_grids(vae, None, torch.Generator().manual_seed(0), num_samples=8)) == {"samples"}


def test_a_checkpoint_carries_the_codes_so_a_loaded_vae_fits_the_same_mixture():
    """No fit at epoch ends: a checkpoint written before any fit still samples from its own codes' mixture."""
    vae = _vae()
    vae._remember_codes(torch.randn(300, 4) * 0.5 + 4)
    checkpoint = {"state_dict": {name: value.clone() for name, value in vae.state_dict().items()}}
    vae.on_save_checkpoint(checkpoint)
    assert not vae.latent_mixture.fitted  # nothing has asked for samples yet
    restored = _vae()
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    generator = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    samples = restored.sample(6, generator())
    assert torch.equal(samples, vae.sample(6, generator()))
    fitted = restored.latent_mixture
    assert torch.allclose(fitted.weights @ fitted.means, torch.full((4,), 4.0), atol=0.1)  # the codes' mean
    assert torch.equal(restored.latent_mixture.means, vae.latent_mixture.means)
    control = _vae()  # the same weights without the codes: nothing to fit, so the prior
    control.load_state_dict(checkpoint["state_dict"])
    control.sample(6, generator())
    assert not control.latent_mixture.fitted


def test_codes_of_another_shape_are_refused_with_the_settings_to_use():
    vae = _vae()
    vae._remember_codes(torch.randn(20, 4))
    checkpoint = {}
    vae.on_save_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="mixture_codes, latent_dim"):
        _vae(mixture_codes=50).on_load_checkpoint(checkpoint)
