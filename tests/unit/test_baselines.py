"""The hand-written baselines of the benchmarks (benchmarks/baselines.py): the classic PixelCNN sees only the
pixels before each one, and its window sampler gets the full pass's logits; the Bernoulli autoencoders' losses
against hand computations and the AE's code Gaussian against the codes' moments; the plain rectified-flow
loss and torchcfm's loss against hand computations on fixed batches; the RealNVP's inverse, its
log-determinant against autograd's Jacobian, its likelihood at initialisation in closed form; every flow's
likelihood finite, negative and in nats of the 8-bit data."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from tests.support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from baselines import (  # noqa: E402
    LATENT_AE,
    LOGIT_MARGIN,
    NUM_DIMS,
    BernoulliAutoencoder,
    ClassicPixelCNN,
    EulerSampler,
    NormflowsGlow,
    PlainUNet,
    RealNVP,
    dequantize,
    mlp_nets,
    rectified_flow_loss,
    torchcfm_loss,
)


def _fixed_batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images x1 in [-1, 1], noise x0, times t, all from one seed."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(n, 1, 28, 28, generator=g) * 2 - 1
    return x1, torch.randn(n, 1, 28, 28, generator=g), torch.rand(n, generator=g)


def _perturbed(model: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """``model`` with every parameter moved off its initialisation (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# --- PixelCNN and autoencoders -------------------------------------------------------------------------
def test_the_classic_pixelcnn_sees_only_earlier_pixels_and_its_window_pass_gives_the_full_logits():
    model = _perturbed(ClassicPixelCNN(width=8, b_layers=2), 0.05).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    later = x.clone()
    later[:, :, 10, 12:] = torch.rand(2, 1, 16)  # the pixel (10, 12) itself and everything after it
    later[:, :, 11:] = torch.rand(2, 1, 17, 28)
    with torch.no_grad():
        full, changed = model(x), model(later)
        assert torch.allclose(full[:, :, 10, 12], changed[:, :, 10, 12])  # mask A: not even the pixel itself
        assert not torch.allclose(full[:, :, 10, 13], changed[:, :, 10, 13])  # the control: (10, 13) sees (10, 12)
        for i, j in ((0, 0), (10, 12), (27, 27), (5, 26)):  # the window ``sample`` feeds for pixel (i, j)
            top, left = max(0, i - model.reach), max(0, j - model.reach)
            window = model(x[:, :, top: i + 1, left: j + model.reach + 1])[:, :, -1, j - left]
            assert torch.allclose(window, full[:, :, i, j], atol=1e-5), (i, j)
    levels = torch.round(x[:, 0] * 255).long()
    by_hand = torch.log_softmax(full, 1).gather(1, levels[:, None])[:, 0].sum((1, 2))  # (2,) nats per image
    assert torch.allclose(model.log_likelihood(x), by_hand, atol=1e-3)
    assert model.loss(x).item() == pytest.approx(-by_hand.sum().item() / (2 * 784), rel=1e-5)


def test_the_bernoulli_autoencoders_losses_are_the_cross_entropy_and_the_kl_by_hand():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ae = BernoulliAutoencoder(mlp_nets, variational=False)
    logits = ae.decoder(ae.encoder(x))
    by_hand = -(x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(1 - torch.sigmoid(logits))).sum((1, 2, 3))
    assert ae.loss(x).item() == pytest.approx(by_hand.mean().item(), rel=1e-4)

    vae = BernoulliAutoencoder(mlp_nets, variational=True)
    torch.manual_seed(1)
    loss = vae.loss(x)
    torch.manual_seed(1)  # the same reparameterisation noise
    mean, logvar = vae.encoder(x).chunk(2, dim=1)
    z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
    kl = (0.5 * (mean ** 2 + torch.exp(logvar) - 1 - logvar)).sum(1)  # KL(N(mean, var) || N(0, I))
    reconstruction = torch.nn.functional.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="none")
    assert loss.item() == pytest.approx((reconstruction.sum((1, 2, 3)) + kl).mean().item(), rel=1e-5)


def test_the_ae_samples_from_a_gaussian_with_its_codes_mean_and_covariance():
    ae = BernoulliAutoencoder(mlp_nets, variational=False).eval()
    images = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ae.fit_code_gaussian(images)
    with torch.no_grad():
        codes = ae.encoder(images).double()  # (500, 20)
    assert torch.allclose(ae.code_mean.double(), codes.mean(0), atol=1e-5)
    covariance = (ae.code_scale_tril @ ae.code_scale_tril.T).double()
    assert torch.allclose(covariance, torch.cov(codes.T, correction=0), atol=1e-4)
    assert ae.code_mean.shape == (LATENT_AE,) and not torch.allclose(ae.code_mean, torch.zeros(LATENT_AE))
    samples = ae.sample(4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1


# --- flow matching ---------------------------------------------------------------------------------
def test_the_plain_rectified_flow_loss_is_the_mean_squared_error_to_x1_minus_x0():
    x1, x0, t = _fixed_batch()
    tt = t[:, None, None, None]
    # the identity field v(x, t) = x: the loss sees x_t = (1 - t) x0 + t x1, so swapping the ends would show
    expected = ((((1 - tt) * x0 + tt * x1) - (x1 - x0)) ** 2).mean()
    assert torch.allclose(rectified_flow_loss(lambda x, s: x, x1, x0, t), expected)
    assert torch.allclose(rectified_flow_loss(lambda x, s: torch.zeros_like(x), x1, x0, t), ((x1 - x0) ** 2).mean())
    # a field that depends on t as well: v = t x
    expected = ((tt * ((1 - tt) * x0 + tt * x1) - (x1 - x0)) ** 2).mean()
    assert torch.allclose(rectified_flow_loss(lambda x, s: s[:, None, None, None] * x, x1, x0, t), expected)

    net = _perturbed(PlainUNet(8), 0.05)
    v = net((1 - tt) * x0 + tt * x1, t)  # (4, 1, 28, 28)
    assert v.shape == x1.shape
    by_hand = sum(((v[i] - (x1[i] - x0[i])) ** 2).sum() for i in range(4)) / x1.numel()
    assert torch.allclose(rectified_flow_loss(net, x1, x0, t), by_hand)


def test_the_plain_unet_depends_on_time_and_the_euler_sampler_takes_nfe_steps():
    net = _perturbed(PlainUNet(8), 0.05)
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(net(x, torch.zeros(2)), net(x, torch.ones(2)))  # t reaches the output

    calls = []
    sampler = EulerSampler(lambda x, t: calls.append(t[0].item()) or torch.ones_like(x), nfe=4)
    images = sampler.sample(3, torch.Generator().manual_seed(0))
    assert calls == [0.0, 0.25, 0.5, 0.75]  # one evaluation per step, at the start of each step
    noise = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(images, ((noise + 1 + 1) / 2).clamp(0, 1))  # x1 = x0 + 1 (v = 1 for a unit time)
    assert sampler.sampling_protocol() == {"solver": "euler", "nfe": 4}


def test_torchcfm_loss_is_theirs_on_their_exact_ot_pairs():
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )

    matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    x1, x0, t = _fixed_batch(n=1)
    tt = t[:, None, None, None]
    net = lambda s, x: s[:, None, None, None] * x  # torchcfm's networks take (t, x)  # noqa: E731
    expected = ((tt * ((1 - tt) * x0 + tt * x1) - (x1 - x0)) ** 2).mean()  # one pair: the plan is that pair
    assert torch.allclose(torchcfm_loss(net, matcher, x1, x0, t), expected)

    # six images and, in shifted order, noise 0.01 away from each in every pixel: the OT plan pairs each image
    # with its own noise, so for the zero field the loss is 0.01^2 whichever pairs it draws; the matcher
    # without OT keeps the batch's (shifted) pairs, whose squared distance is large
    np.random.seed(0)
    x1, _, t = _fixed_batch(n=6, seed=1)
    x0 = x1.roll(1, 0) + 0.01
    zero = lambda s, x: torch.zeros_like(x)  # noqa: E731
    assert torchcfm_loss(zero, matcher, x1, x0, t).item() == pytest.approx(1e-4, rel=1e-4)
    assert torchcfm_loss(zero, ConditionalFlowMatcher(sigma=0.0), x1, x0, t).item() > 0.05  # the control


# --- normalizing flows -------------------------------------------------------------------------------
def test_the_realnvp_inverts_its_forward_map():
    model = _perturbed(RealNVP(8), 0.05).eval()
    y = dequantize(torch.rand(3, 1, 28, 28), torch.Generator().manual_seed(0))
    latents, log_det = model(y)
    assert [tuple(z.shape) for z in latents] == [(3, 2, 14, 14), (3, 4, 7, 7), (3, 4, 7, 7)]
    assert sum(z[0].numel() for z in latents) == NUM_DIMS  # every dimension ends up in a latent
    assert torch.allclose(model.inverse(latents), y, atol=1e-5)
    _, logit_log_det = model.to_logits(y)
    assert not torch.allclose(log_det, logit_log_det)  # the couplings act: not only the logit preprocessing


def test_the_realnvp_couplings_alternate_which_half_they_change():
    model = _perturbed(RealNVP(8), 0.1).eval()
    (checkerboard, channel), _ = model.scales
    x = torch.randn(1, 1, 28, 28)
    i, j = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    for k, layer in enumerate(checkerboard):  # RealNVP: the mask's parity flips from one layer to the next
        changed = (layer(x)[0] != x)[0, 0]
        assert torch.equal(changed, (i + j) % 2 != k % 2), k
    x = torch.randn(1, 4, 14, 14)
    for k, layer in enumerate(channel):  # channel-wise: the second half, then the first, then the second
        changed = (layer(x)[0] != x).flatten(2).all(2)[0]
        assert changed.tolist() == ([False, False, True, True] if k % 2 == 0 else [True, True, False, False]), k


def test_the_realnvp_log_determinant_is_autograds():
    model = _perturbed(RealNVP(4), 0.1).double().eval()
    y = dequantize(torch.rand(1, 1, 28, 28), torch.Generator().manual_seed(1)).double()

    def flat_latents(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten() for z in model(v.view(1, 1, 28, 28))[0]])

    jacobian = torch.autograd.functional.jacobian(flat_latents, y.flatten(), vectorize=True)  # (784, 784)
    sign, log_abs_det = torch.linalg.slogdet(jacobian)
    assert sign != 0
    assert model(y)[1].item() == pytest.approx(log_abs_det.item(), abs=1e-6)


def test_the_realnvp_likelihood_at_initialisation_is_the_logit_transform_of_a_gaussian():
    model = RealNVP(8).eval()  # zero-initialised couplings: the identity, so only the logit preprocessing acts
    y = dequantize(torch.rand(2, 1, 28, 28), torch.Generator().manual_seed(2))
    p = LOGIT_MARGIN + (1 - 2 * LOGIT_MARGIN) * y
    v = torch.log(p / (1 - p))
    log_dv_dy = torch.log((1 - 2 * LOGIT_MARGIN) / (p * (1 - p)))
    by_hand = (-0.5 * v**2 - 0.5 * math.log(2 * math.pi) + log_dv_dy).flatten(1).sum(1)
    assert torch.allclose(model.continuous_log_likelihood(y), by_hand, rtol=1e-5)
    assert torch.allclose(model.log_likelihood(y), by_hand - 784 * math.log(256), rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: _perturbed(RealNVP(8), 0.02), lambda: NormflowsGlow(2, 2, 16)],
                         ids=["realnvp", "normflows-glow"])
def test_every_flow_baseline_gives_finite_negative_nats_of_the_8bit_data_and_repeatable_samples(make):
    torch.manual_seed(0)
    model = make()
    images = torch.randint(0, 256, (4, 1, 28, 28)) / 255
    y = model.prepare_input(images, torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor(y * 256), torch.round(images * 255))  # (k + u) / 256 keeps the level k
    with torch.no_grad():
        log_p = model.log_likelihood(y)  # (4,) nats per image
        continuous = model.continuous_log_likelihood(y)
    assert log_p.shape == (4,) and torch.isfinite(log_p).all() and (log_p < 0).all()
    assert torch.allclose(log_p, continuous - NUM_DIMS * math.log(256))  # the dequantisation's D log 256 counted
    samples = model.eval().sample(5, torch.Generator().manual_seed(3))
    assert samples.shape == (5, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, model.sample(5, torch.Generator().manual_seed(3)))
    assert not torch.equal(samples, model.sample(5, torch.Generator().manual_seed(4)))


def test_the_glow_peer_is_normflows_example_resized_for_28x28():
    glow = NormflowsGlow()  # the benchmark's: L = 2, K = 16, 256 hidden channels
    assert [len(level) for level in glow.flow.flows] == [17, 17]  # 16 GlowBlocks and a Squeeze per level
    assert [tuple(base.shape) for base in glow.flow.q0] == [(8, 7, 7), (2, 14, 14)]
    assert sum(math.prod(base.shape) for base in glow.flow.q0) == NUM_DIMS
