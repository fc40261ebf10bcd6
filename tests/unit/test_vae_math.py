"""The VAE's objective, checked against independent references."""

import math

import torch
from torch.distributions import Normal, kl_divergence

from lightning_gen.losses import gaussian_kl_to_standard, reparameterize
from lightning_gen.losses.gaussian import log_normal, log_standard_normal
from lightning_gen.models import VAE
from lightning_gen.models.autoencoder import linear_warmup


def test_closed_form_kl_equals_torch_distributions():
    mean, logvar = torch.randn(5, 7) * 2, torch.randn(5, 7)
    q = Normal(mean, torch.exp(0.5 * logvar))
    expected = kl_divergence(q, Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(-1)
    torch.testing.assert_close(gaussian_kl_to_standard(mean, logvar), expected)


def test_log_normal_densities_equal_torch_distributions():
    z, mean, logvar = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(log_normal(z, mean, logvar), Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1))
    torch.testing.assert_close(log_standard_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_reparameterised_sample_has_the_posterior_moments():
    mean, logvar = torch.tensor([1.5, -2.0]), torch.tensor([0.0, math.log(0.25)])
    z = reparameterize(mean.expand(200_000, 2), logvar.expand(200_000, 2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(z.var(0), logvar.exp(), atol=0.01, rtol=0)


def test_gradients_of_the_elbo_reach_the_encoder():
    model = VAE(data_shape=(1, 28, 28), latent_dim=4)
    x = torch.rand(8, 1, 28, 28)
    log_px_z, kl = model.elbo_terms(x)
    (-(log_px_z - kl).mean()).backward()
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in encoder_grads)
    assert sum(g.abs().sum() for g in encoder_grads) > 0


def test_linear_kl_warmup():
    assert linear_warmup(step=0, warmup_steps=100, final=0.5) == 0.0
    assert linear_warmup(step=50, warmup_steps=100, final=0.5) == 0.25
    assert linear_warmup(step=500, warmup_steps=100, final=0.5) == 0.5
    assert linear_warmup(step=0, warmup_steps=0, final=2.0) == 2.0


def _tiny_vae() -> VAE:
    """1-D latent, 16 binary pixels: small enough to integrate log p(x) = log int p(x|z) p(z) dz numerically."""
    torch.manual_seed(3)
    model = VAE(data_shape=(1, 4, 4), latent_dim=1, likelihood="bernoulli", channels=4, hidden=16)
    # train briefly so q(z|x) is a real posterior approximation rather than a random one
    data = (torch.rand(256, 1, 4, 4) < torch.linspace(0.1, 0.9, 16).view(1, 1, 4, 4)).float()
    data[:128] = 1 - data[:128]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        log_px_z, kl = model.elbo_terms(data)
        loss = -(log_px_z - kl).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), data[::32]


@torch.no_grad()
def _log_marginal_by_quadrature(model: VAE, x: torch.Tensor) -> torch.Tensor:
    z = torch.linspace(-12, 12, 48_001).unsqueeze(1)  # (G, 1)
    log_px_z = torch.stack([model.likelihood.log_prob(model.decoder(z), xi.expand(len(z), *xi.shape)) for xi in x])
    log_integrand = log_px_z + log_standard_normal(z).unsqueeze(0)  # (N, G)
    return torch.logsumexp(log_integrand.double(), dim=1) + math.log(24 / 48_000)  # trapezoid-like Riemann sum


def test_iwae_with_many_samples_recovers_the_exact_log_likelihood():
    model, x = _tiny_vae()
    exact = _log_marginal_by_quadrature(model, x)
    iwae = model.log_likelihood(x, k=5000, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(iwae, exact, atol=0.02, rtol=0)


def test_iwae_bound_is_above_the_elbo_and_grows_with_k():
    model, x = _tiny_vae()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        repeats = 200
        xs = x.repeat(repeats, 1, 1, 1)
        log_px_z, kl = model.elbo_terms(xs, generator)
        elbo = (log_px_z - kl).mean()
        bounds = [model.log_likelihood(xs, k=k, generator=generator).mean() for k in (1, 5, 50)]
    exact = _log_marginal_by_quadrature(model, x).mean()
    torch.testing.assert_close(bounds[0], elbo, atol=0.1, rtol=0)  # k = 1 is the ELBO in expectation
    assert elbo < bounds[1] < bounds[2] <= exact + 1e-3
