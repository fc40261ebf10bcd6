"""Mixed precision: every family trains under ``configs/trainer/bf16.yaml``; likelihoods stay float32 under
autocast (against a control that computes them in bfloat16); the GAN's penalties, divergence guard and
gradient norms are right under a grad scaler (float16 autocast and ``torch.amp.GradScaler`` on the CPU)."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.plugins import MixedPrecision

from lightning_gen.cli import LightningGenCLI, main
from lightning_gen.data import FashionMNISTDataModule, ToyMixtureDataModule
from lightning_gen.errors import DivergenceError
from lightning_gen.losses.gan import gradient_penalty, r1_penalty
from lightning_gen.losses.precision import float32_regions_disabled
from lightning_gen.models import GAN, VAE, PixelCNN
from lightning_gen.models.base import GenerativeModule
from tests.support.paths import CONFIGS

BF16 = str(CONFIGS / "trainer" / "bf16.yaml")
CHECKPOINT_ONLY = '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]'
FAMILIES = {  # config -> (size overrides, the training losses it logs)
    "ae_fmnist": ([], ["train/loss"]),
    "vae_fmnist": ([], ["train/loss", "train/kl"]),
    "gan_fmnist": (["--model.init_args.width", "16"], ["train/d_loss", "train/g_loss"]),
    "pixelcnn_fmnist": (["--model.init_args.hidden", "16", "--model.init_args.layers", "2"], ["train/loss"]),
}


# --- every family through the command line ------------------------------------------------------------
@pytest.mark.parametrize("config", FAMILIES)
def test_every_family_trains_under_bf16_mixed_from_the_config_snippet(config, in_tmp_dir, fmnist_dir):
    sizes, losses = FAMILIES[config]
    args = ["--config", str(CONFIGS / f"{config}.yaml"), "--config", BF16, *sizes,
            "--data.init_args.data_dir", str(fmnist_dir), "--data.init_args.subset", "640",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", CHECKPOINT_ONLY]
    initial = {k: v.clone() for k, v in LightningGenCLI(args=args, run=False).model.state_dict().items()}
    main(["fit", *args])

    (folder,) = (in_tmp_dir / "runs" / config).glob("version_*")
    assert yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    for name in losses:
        logged = [float(row[name]) for row in rows if row.get(name)]
        assert len(logged) == 4 and all(math.isfinite(v) for v in logged), (name, logged)

    trained = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert trained.keys() == initial.keys()
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    assert all(v.dtype == initial[k].dtype for k, v in trained.items())  # autocast never touches the weights
    # encoder/decoder, generator/discriminator, net; not the VAE's posterior mixture, fitted when samples are drawn
    networks = {key.split(".")[0] for key in initial if "." in key and not key.startswith("latent_mixture.")}
    moved = {key.split(".")[0] for key in initial if "." in key and not torch.equal(initial[key], trained[key])}
    assert networks <= moved, f"not trained: {networks - moved}"


# --- log-likelihoods under bf16 autocast ------------------------------------------------------------------
# bfloat16 keeps 8 significant bits: every op rounds with a relative error up to 2^-9. With the likelihood in
# float32, what is left is the rounding of the network's activations, which enters each image's log p(x)
# with both signs over its 784 pixels and largely cancels. Measured as the mean over images of
# |NLL under autocast - NLL in float32|: below 1e-4 bits/dim at initialisation, and at most 1.6e-3 after
# 300 to 400 training steps, on the CPU and on an H200 (docs/configs.md). The tolerance is about twice that.
# A log-probability computed in bfloat16 instead is a bfloat16 number per image: at initialisation
# (~8 bits/dim, ~4400 nats per image) its step is 32 nats, so it is off by ~8 nats (0.015 bits/dim) on
# average, whatever the CPU: the control must exceed twice the tolerance.
TOLERANCE_BPD = 3e-3


@pytest.fixture(scope="module")
def held_out_images(fmnist_dir):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=64)
    data.setup("test")
    return torch.stack([data.test_set[i][0] for i in range(64)])  # (64, 1, 28, 28) in [0, 1]


def _bits_per_dim(nll_of, x: torch.Tensor, precision: str) -> torch.Tensor:
    """-log p(x) in bits/dim ``[N]``: ``float32``, ``bf16-mixed`` (autocast, as Lightning runs a step), or
    ``bf16-likelihood`` (autocast with the float32 regions off: the control)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):
        if precision == "bf16-likelihood":
            with float32_regions_disabled():
                nll = nll_of(x)
        else:
            nll = nll_of(x)
    return nll.float() / (x[0].numel() * math.log(2))


def test_vae_nll_under_bf16_autocast_agrees_with_float32(held_out_images):
    torch.manual_seed(0)
    vae = VAE().eval()  # the config's architecture: conv nets, 16-d latent, discretised logistic
    nll = lambda x: -vae.log_likelihood(x, k=4, generator=torch.Generator().manual_seed(0))  # noqa: E731
    reference, mixed = _bits_per_dim(nll, held_out_images, "float32"), _bits_per_dim(nll, held_out_images, "bf16-mixed")
    assert (mixed - reference).abs().mean() < TOLERANCE_BPD, float((mixed - reference).abs().mean())
    # the closed-form KL is in float32 too: it is a sum of squares and exponentials of the encoder's output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, logvar = vae.posterior(held_out_images)
        terms = vae._elbo_terms(held_out_images, mean, logvar, torch.Generator().manual_seed(0))
    assert mean.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in terms)


def test_pixelcnn_nll_under_bf16_autocast_agrees_with_float32_and_a_bf16_likelihood_does_not(held_out_images):
    torch.manual_seed(0)
    model = PixelCNN(hidden=32, layers=6).eval()  # a config-sized network, at initialisation
    images = held_out_images[:32]
    reference = _bits_per_dim(model.log_likelihood, images, "float32")
    mixed = _bits_per_dim(model.log_likelihood, images, "bf16-mixed")
    control = _bits_per_dim(model.log_likelihood, images, "bf16-likelihood")
    error, control_error = (mixed - reference).abs().mean(), (control - reference).abs().mean()
    print(f"PixelCNN |bf16-mixed - float32| {float(error):.2e} bits/dim, bf16 likelihood {float(control_error):.2e}")
    assert error < TOLERANCE_BPD, float(error)
    assert control_error > 2 * TOLERANCE_BPD, float(control_error)  # the regions are what keeps the bits


@pytest.mark.parametrize("native", [False, True], ids=["emulated", "native"])
def test_bf16_mixed_on_a_cpu_without_bfloat16_instructions_warns_with_the_fix(native, monkeypatch, tiny_idx_dir,
                                                                               tmp_path, recwarn):
    from lightning_gen.data import MNISTDataModule

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    model = PixelCNN(data_shape=(1, 28, 28), hidden=8, layers=1, kernel_size=3)
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", precision="bf16-mixed", logger=False,
                         enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(tiny_idx_dir), batch_size=16))
    warned = [str(w.message) for w in recwarn if "bf16-mixed on this CPU" in str(w.message)]
    if native:
        assert not warned
    else:
        assert len(warned) == 1 and "--trainer.precision 32-true" in warned[0]


def test_the_discretised_logistic_mean_image_under_bf16_autocast():
    """``decode``'s mean sums 255 survival probabilities: accumulated in bfloat16 (step 1 or 2 near 255/2)
    it drifts by levels, in float32 it is off by the rounding of the decoder's output only."""
    torch.manual_seed(0)
    vae = VAE().eval()
    z = torch.randn(16, vae.latent_dim)
    with torch.no_grad():
        reference = vae.decode(z) * 255
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = vae.decode(z) * 255
            with float32_regions_disabled():
                control = vae.decode(z).float() * 255
    assert (mixed - reference).abs().max() < 1.0  # within one 8-bit level
    assert (control - reference).abs().max() > 4.0


# --- the GAN's penalties and guard under a grad scaler ----------------------------------------------------
class _FixedScale:
    """A grad scaler's ``scale`` at a fixed power of two (exact in floating point)."""

    def __init__(self, scale: float):
        self.factor = scale

    def scale(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs * self.factor


def _critic(output_scale: float = 1.0):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 64),
                              torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 1), torch.nn.Flatten(0))
    return lambda x: mlp(x) * output_scale


@pytest.mark.parametrize("scaler", [_FixedScale(2.0**12), torch.amp.GradScaler("cpu", init_scale=2.0**16)],
                         ids=["fixed-scale", "GradScaler"])
def test_penalties_of_a_scaled_backward_pass_are_unscaled(scaler):
    critic, real, fake = _critic(), torch.randn(64, 2), torch.randn(64, 2)
    for penalty in (lambda s: gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0), s),
                    lambda s: r1_penalty(critic, real, s)):
        plain, scaled = penalty(None), penalty(scaler)
        assert float(plain) > 1e-3
        assert float(scaled) == pytest.approx(float(plain), rel=1e-5)  # a scaled one would be 2^24x or more


def test_scaling_keeps_small_float16_input_gradients_from_underflowing():
    """R1 of a critic whose input gradients are ~1e-7: float16's smallest step is 6e-8 (subnormal), so the
    unscaled backward pass underflows; at scale 2^16 it runs in float16's normal range."""
    critic, real = _critic(output_scale=2.0**-22), torch.randn(64, 2)
    reference = r1_penalty(critic, real)
    with torch.autocast("cpu", dtype=torch.float16):
        unscaled = r1_penalty(critic, real)
        scaled = r1_penalty(critic, real, torch.amp.GradScaler("cpu", init_scale=2.0**16))
    assert float(scaled) == pytest.approx(float(reference), rel=1e-2)
    assert abs(float(unscaled) / float(reference) - 1) > 0.1  # the control: what the scaler is for


def _toy_gan(**kwargs) -> GAN:
    torch.manual_seed(0)
    return GAN(data_shape=(2,), latent_dim=4, hidden=16, ema_decay=0.0, **kwargs)


def _fit_16_mixed(model: GAN, scaler: torch.amp.GradScaler, batches: int = 8) -> pl.Trainer:
    pl.seed_everything(0)
    trainer = pl.Trainer(accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
                         max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1)
    trainer.fit(model, datamodule=ToyMixtureDataModule(num_train=1000, batch_size=64))
    return trainer


def test_an_overflow_of_the_scaled_penalty_is_skipped_by_the_scaler_not_called_a_divergence(monkeypatch):
    # at scale 2^24 the penalty's backward pass starts at 2^24 / 64 per sample, past float16's 65504
    model = _toy_gan(objective="wasserstein")
    initial = [p.detach().clone() for p in model.discriminator.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    _fit_16_mixed(model, scaler)
    assert scaler.get_scale() < 2.0**24  # the scaler found overflows and skipped those steps
    trained = list(model.discriminator.parameters())
    assert all(torch.isfinite(p).all() for p in trained)
    assert any(not torch.equal(p, q) for p, q in zip(trained, initial))  # later steps went through

    # the control: a guard that counts the penalty as a loss stops this very run at its first batch
    guard = GenerativeModule.guard_finite
    monkeypatch.setattr(GAN, "guard_finite", lambda self, gradient_terms=None, **losses:
                        guard(self, **losses, **(gradient_terms or {})))
    with pytest.raises(DivergenceError, match="gp=nan|gp=inf"):
        _fit_16_mixed(_toy_gan(objective="wasserstein"), torch.amp.GradScaler("cpu", init_scale=2.0**24))


@pytest.mark.parametrize("scale, diverged", [(None, True), (1.0, True), (1024.0, False)])
def test_a_non_finite_penalty_is_a_divergence_without_a_scaler_or_at_scale_one(scale, diverged):
    model = _toy_gan()
    scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
    model._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), current_epoch=0, global_step=3,
                                     checkpoint_callback=None)
    inf = torch.tensor(float("inf"))
    if diverged:
        with pytest.raises(DivergenceError, match="gp=inf"):
            model.guard_finite(d_loss=torch.tensor(0.5), gradient_terms={"gp": inf})
    else:
        model.guard_finite(d_loss=torch.tensor(0.5), gradient_terms={"gp": inf})
    with pytest.raises(DivergenceError, match="d_loss=inf"):  # a non-finite objective always is
        model.guard_finite(d_loss=inf, gradient_terms={"gp": torch.tensor(1.0)})


def test_logged_gradient_norms_are_unscaled_with_a_fused_optimizer_too():
    """A fused Adam unscales inside its own step, so Lightning hands on_before_optimizer_step scaled
    gradients; the logged norm must still be the unscaled one (here: the same as without AMP)."""
    fused = lambda params: torch.optim.Adam(params, lr=1e-3, fused=True)  # noqa: E731
    plain = _toy_gan(generator_optimizer=fused, discriminator_optimizer=fused)
    pl.seed_everything(0)
    pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               log_every_n_steps=1).fit(plain, datamodule=ToyMixtureDataModule(num_train=1000, batch_size=64))
    scaled = _toy_gan(generator_optimizer=fused, discriminator_optimizer=fused)
    _fit_16_mixed(scaled, torch.amp.GradScaler("cpu", init_scale=1024.0), batches=1)
    for player in ("d", "g"):
        # float16 autocast rounds the forward pass: a few percent, where a scaled norm would be 1024x
        assert float(scaled._grad_norms[player]) == pytest.approx(float(plain._grad_norms[player]), rel=0.05)
