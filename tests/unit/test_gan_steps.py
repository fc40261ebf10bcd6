"""The GAN's optimizer steps under manual optimisation: the same computation as a hand-written DCGAN loop,
gradient norms after AMP unscaling, per-player gradient clipping, and step metrics logged only on the
batches Lightning writes."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from lightning_gen.data import ToyMixtureDataModule
from lightning_gen.errors import ConfigValueError
from lightning_gen.models import GAN


def _fit(model: GAN, plugins=(), batches: int = 1, log_every_n_steps: int = 1) -> pl.Trainer:
    pl.seed_everything(0)
    trainer = pl.Trainer(accelerator="cpu", plugins=list(plugins), max_epochs=1, limit_train_batches=batches,
                         limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=log_every_n_steps)
    trainer.fit(model, datamodule=ToyMixtureDataModule(num_train=1000, batch_size=64))
    return trainer


def _sgd(params):
    return torch.optim.SGD(params, lr=1.0)


def _toy_gan(**kwargs) -> GAN:
    torch.manual_seed(0)
    return GAN(data_shape=(2,), latent_dim=4, hidden=16, ema_decay=0.0,
               generator_optimizer=_sgd, discriminator_optimizer=_sgd, **kwargs)


def test_gradient_norms_are_measured_after_the_grad_scaler_unscales():
    plain = _toy_gan()
    _fit(plain)
    scaled = _toy_gan()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # gradients 1024x larger until unscaled
    _fit(scaled, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    for player in ("d", "g"):
        # float16 autocast rounds the forward pass: a few percent, where a scaled norm would be 1024x
        assert float(scaled._grad_norms[player]) == pytest.approx(float(plain._grad_norms[player]), rel=0.05)


@pytest.mark.parametrize("player", ["generator", "discriminator"])
def test_clipping_limits_that_players_update_and_leaves_the_other_alone(player):
    clip = 1e-4
    model = _toy_gan(**{f"{player}_clip_norm": clip})
    before = {name: [p.detach().clone() for p in getattr(model, name).parameters()]
              for name in ("generator", "discriminator")}
    _fit(model)
    moved = {name: torch.cat([(p.detach() - old).flatten() for p, old in zip(getattr(model, name).parameters(), olds)])
             .norm().item() for name, olds in before.items()}
    other = "discriminator" if player == "generator" else "generator"
    measured = {"generator": float(model._grad_norms["g"]), "discriminator": float(model._grad_norms["d"])}
    assert measured[player] > 10 * clip  # the logged norm is the one before clipping
    assert moved[player] == pytest.approx(clip, rel=1e-3)  # SGD, lr 1: the step is the clipped gradient
    assert moved[other] == pytest.approx(measured[other], rel=1e-3)  # unclipped


def test_clip_norm_must_be_positive():
    with pytest.raises(ConfigValueError, match="discriminator_clip_norm must be greater than 0"):
        GAN(data_shape=(2,), discriminator_clip_norm=0.0)


def test_step_metrics_are_computed_only_on_the_batches_lightning_writes():
    model = _toy_gan()
    logged_at = []
    log_dict = model.log_dict

    def recording_log_dict(metrics, *args, **kwargs):
        if "train/d_loss" in metrics:
            logged_at.append(model.trainer.fit_loop.epoch_loop.batch_idx)
        return log_dict(metrics, *args, **kwargs)

    model.log_dict = recording_log_dict
    _fit(model, batches=10, log_every_n_steps=4)
    assert logged_at == [3, 7]  # batches 4 and 8, counted from 1


def _hand_written_dcgan(generator, discriminator, loader, latent_dim: int, seed: int, reuse_fakes: bool = True):
    """The PyTorch DCGAN tutorial's loop: BCE, Adam 2e-4 (0.5, 0.999), G scores the fakes D just saw."""
    latents = torch.Generator().manual_seed(seed)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for images, _ in loader:
        real = images * 2 - 1
        fake = generator(torch.randn(len(real), latent_dim, generator=latents))
        d_real, d_fake = discriminator(real), discriminator(fake.detach())
        d_loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        if not reuse_fakes:
            fake = generator(torch.randn(len(real), latent_dim, generator=latents))
        scores = discriminator(fake)
        g_loss = bce(scores, torch.ones_like(scores))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()


def _module_and_loop(module_reuses: bool, loop_reuses: bool,
                     batch_norm: bool = False) -> tuple[GAN, torch.nn.Module, torch.nn.Module]:
    """The GAN module and the hand-written loop from the same initial weights over the same 6 batches
    (in order) and latents: (the trained module, the loop's generator, the loop's discriminator)."""
    pl.seed_everything(0)
    model = GAN(data_shape=(1, 28, 28), latent_dim=8, width=8, objective="non_saturating", ema_decay=0.0,
                reuse_fakes=module_reuses, discriminator_batch_norm=batch_norm)
    generator, discriminator = copy.deepcopy(model.generator), copy.deepcopy(model.discriminator)
    images = torch.rand(6 * 16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=16)
    pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(model, loader)
    # the module draws latents from its training generator, seeded by the global seed on rank 0
    _hand_written_dcgan(generator, discriminator, loader, 8, seed=torch.initial_seed(), reuse_fakes=loop_reuses)
    return model, generator, discriminator


@pytest.mark.parametrize("reuse_fakes, batch_norm", [(True, False), (False, False), (True, True)])
def test_the_gan_trains_exactly_like_a_hand_written_dcgan_loop_on_the_same_batches(reuse_fakes, batch_norm):
    """Same initial weights, batches and latents -> the same weights and batch-norm statistics after 6
    steps, up to float rounding: the Lightning module adds no hidden difference to the computation
    (also with batch norm in D, whose statistics see real and fake batches separately in both)."""
    model, generator, discriminator = _module_and_loop(reuse_fakes, reuse_fakes, batch_norm)
    for ours, theirs in ((model.generator, generator), (model.discriminator, discriminator)):
        for (name, expected), actual in zip(theirs.state_dict().items(), ours.state_dict().values()):
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6, msg=name)


def test_the_check_tells_the_two_loops_apart():
    """The control: fresh latents for G's step is a different computation, and the comparison sees it."""
    model, generator, _ = _module_and_loop(module_reuses=True, loop_reuses=False)
    difference = max((a - b).abs().max().item() for a, b in zip(model.generator.parameters(), generator.parameters()))
    assert difference > 1e-3


def test_reuse_fakes_needs_one_step_of_each_player():
    with pytest.raises(ConfigValueError, match="reuse_fakes needs n_disc_steps 1"):
        GAN(data_shape=(2,), n_disc_steps=2, reuse_fakes=True)


def test_discriminator_batch_norm_is_refused_with_penalties_that_need_per_sample_gradients():
    for options in ({"r1_gamma": 1.0}, {"objective": "wasserstein"}):
        with pytest.raises(ConfigValueError, match="discriminator_batch_norm cannot be combined with R1"):
            GAN(data_shape=(1, 28, 28), discriminator_batch_norm=True, **options)
    with pytest.raises(ConfigValueError, match="applies to image discriminators"):
        GAN(data_shape=(2,), discriminator_batch_norm=True)
    with pytest.raises(ConfigValueError, match="weight_init must be one of default, dcgan"):
        GAN(data_shape=(2,), weight_init="xavier")


def test_a_discriminator_without_batch_norm_keeps_the_state_dict_keys_of_earlier_checkpoints():
    keys = list(GAN(data_shape=(1, 28, 28), width=8).discriminator.state_dict())
    assert keys == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.5.weight", "net.5.bias"]
    with_norm = GAN(data_shape=(1, 28, 28), width=8, discriminator_batch_norm=True).discriminator.state_dict()
    assert "net.3.running_mean" in with_norm and "net.2.bias" not in with_norm  # the norm's shift replaces the bias


def test_dcgan_initialisation_draws_weights_from_n_0_0_02_and_copies_them_to_the_ema():
    torch.manual_seed(0)
    model = GAN(data_shape=(1, 28, 28), width=32, weight_init="dcgan", discriminator_batch_norm=True)
    for name, module in [*model.generator.named_modules(), *model.discriminator.named_modules()]:
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            assert abs(module.weight.std().item() - 0.02) < 0.002 and abs(module.weight.mean().item()) < 0.002, name
        elif isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert abs(module.weight.mean().item() - 1) < 0.01 and module.weight.std().item() < 0.03, name
            assert not module.bias.any(), name
    for ema, raw in zip(model.generator_ema.parameters(), model.generator.parameters()):
        assert torch.equal(ema, raw)
    default = GAN(data_shape=(1, 28, 28), width=32).discriminator.net[0].weight
    assert default.std().item() > 0.05  # PyTorch's default is not that initialisation: the option does something
