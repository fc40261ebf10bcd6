"""GAN: objectives, step balance, EMA, exact resume, divergence guard, and mode coverage on the ring."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_gen.cli import main
from lightning_gen.data import ToyMixtureDataModule
from lightning_gen.errors import DivergenceError
from lightning_gen.losses.gan import OBJECTIVES, build_objective, gradient_penalty, minimax_value, r1_penalty
from lightning_gen.models import GAN, VAE
from tests.support.contract import GenerativeModelContract, check_every_command
from tests.support.paths import CONFIGS

GAN_TEST_METRICS = ("test/value", "test/d_real", "test/d_fake")


class TestImageGAN(GenerativeModelContract):
    other_model_class = VAE
    config, test_metrics, predictions = "gan_fmnist.yaml", GAN_TEST_METRICS, ()

    def make_model(self):
        return GAN(data_shape=(1, 28, 28), latent_dim=8, width=8)


class TestRGBGAN(GenerativeModelContract):
    other_model_class = VAE
    config, test_metrics, predictions = "gan_fmnist.yaml", GAN_TEST_METRICS, ()  # no RGB data offline

    def make_model(self):
        return GAN(data_shape=(3, 32, 32), latent_dim=8, width=8, objective="hinge", spectral_norm=True)


def test_a_gan_has_no_likelihood():
    assert not hasattr(GAN(data_shape=(2,)), "log_likelihood")


def test_objectives_at_known_scores():
    zero = torch.zeros(4)
    log2 = math.log(2)
    assert float(build_objective("minimax").discriminator_loss(zero, zero)) == pytest.approx(2 * log2)
    assert float(build_objective("minimax").generator_loss(zero)) == pytest.approx(-log2)  # E[log(1 - 1/2)]
    assert float(build_objective("non_saturating").generator_loss(zero)) == pytest.approx(log2)  # -E[log 1/2]
    assert float(minimax_value(zero, zero)) == pytest.approx(-2 * log2)  # the value at D = 1/2
    sure = torch.full((4,), 2.0)
    assert float(build_objective("hinge").discriminator_loss(sure, -sure)) == 0.0
    assert float(build_objective("hinge").generator_loss(-sure)) == 2.0
    assert float(build_objective("least_squares").discriminator_loss(torch.ones(4), zero)) == 0.0
    assert float(build_objective("wasserstein").discriminator_loss(sure, -sure)) == -4.0
    # the saturating generator's gradient vanishes where D rejects fakes; the non-saturating one does not
    rejected = torch.full((1,), -8.0, requires_grad=True)
    (saturating,) = torch.autograd.grad(build_objective("minimax").generator_loss(rejected), rejected)
    (non_saturating,) = torch.autograd.grad(build_objective("non_saturating").generator_loss(rejected), rejected)
    assert abs(float(saturating)) < 1e-3 < abs(float(non_saturating))
    assert set(OBJECTIVES) == {"minimax", "non_saturating", "hinge", "least_squares", "wasserstein"}


def test_penalties_of_a_linear_critic():
    w = torch.tensor([3.0, 4.0])  # ||w|| = 5: grad_x (w . x) = w everywhere
    critic = lambda x: x @ w  # noqa: E731
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    assert float(gradient_penalty(critic, real, fake)) == pytest.approx((5 - 1) ** 2)
    assert float(r1_penalty(critic, real)) == pytest.approx(0.5 * 25)


def _toy_trainer(**kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0)
    return pl.Trainer(**{**options, **kwargs})


def test_discriminator_steps_per_generator_step_are_honoured():
    pl.seed_everything(0)
    model = GAN(data_shape=(2,), latent_dim=4, hidden=16, n_disc_steps=3)
    trainer = _toy_trainer(max_epochs=1, limit_train_batches=7)
    trainer.fit(model, datamodule=ToyMixtureDataModule(num_train=1000, batch_size=64))
    opt_g, opt_d = (o.optimizer for o in model.optimizers())
    d_steps = opt_d.state[next(model.discriminator.parameters())]["step"]
    g_steps = opt_g.state[next(model.generator.parameters())]["step"]
    assert (int(d_steps), int(g_steps)) == (21, 7)
    assert trainer.global_step == 28  # Lightning counts every optimizer step: 4 per batch


def test_each_player_has_its_own_optimizer_and_scheduler():
    pl.seed_everything(0)
    halve = lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # noqa: E731
    model = GAN(data_shape=(2,), latent_dim=4, hidden=16,
                generator_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                discriminator_optimizer=lambda p: torch.optim.Adam(p, lr=0.4),
                generator_scheduler=halve, discriminator_scheduler=halve)
    trainer = _toy_trainer(max_epochs=2, limit_train_batches=3)
    trainer.fit(model, datamodule=ToyMixtureDataModule(num_train=1000, batch_size=64))
    opt_g, opt_d = (o.optimizer for o in model.optimizers())
    assert isinstance(opt_g, torch.optim.SGD) and isinstance(opt_d, torch.optim.Adam)
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.025) and opt_d.param_groups[0]["lr"] == pytest.approx(0.1)


def test_ema_update_is_the_exponential_moving_average():
    model = GAN(data_shape=(2,), latent_dim=4, hidden=8, ema_decay=0.9)
    assert model.ema_decay_now() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): follows G at first
    model.ema_updates.fill_(1000)
    assert model.ema_decay_now() == 0.9
    before = [p.clone() for p in model.generator_ema.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    model.update_ema()
    for old, new, current in zip(before, model.generator_ema.parameters(), model.generator.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * current)


def test_ema_batch_norm_statistics_are_re_estimated_for_the_averaged_weights():
    model = GAN(data_shape=(1, 28, 28), latent_dim=8, width=8)
    with torch.no_grad():
        for p in model.generator_ema.parameters():
            p.mul_(1.5)  # averaged weights that differ from G's
    model.sample(2)
    seeded = torch.Generator().manual_seed(0)
    latents = torch.cat([torch.randn(256, 8, generator=seeded) for _ in range(10)])
    with torch.no_grad():
        pre_norm = model.generator_ema.net[0](latents)  # the first Linear, before its BatchNorm1d
    batch_norm = model.generator_ema.net[1]
    torch.testing.assert_close(batch_norm.running_mean, pre_norm.mean(0), rtol=1e-4, atol=1e-5)
    per_batch_variance = torch.stack([chunk.var(0) for chunk in pre_norm.split(256)]).mean(0)  # BN's estimate
    torch.testing.assert_close(batch_norm.running_var, per_batch_variance, rtol=1e-4, atol=1e-5)
    assert not model.generator_ema.training


def _state(model: GAN, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    for name, optimizer in zip(("g", "d"), trainer.optimizers):
        for index, param_state in optimizer.state_dict()["state"].items():
            for key, value in param_state.items():
                state[f"opt_{name}.{index}.{key}"] = torch.as_tensor(value).clone()
    return state


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    def run(max_epochs: int, ckpt_path=None, folder=None):
        pl.seed_everything(0)
        data = ToyMixtureDataModule(num_train=900, batch_size=100)
        model = GAN(data_shape=(2,), latent_dim=4, hidden=16, objective="wasserstein", n_disc_steps=2, ema_decay=0.9)
        checkpoint = ModelCheckpoint(dirpath=folder, save_last=True) if folder else None
        trainer = _toy_trainer(max_epochs=max_epochs, enable_checkpointing=bool(folder),
                               callbacks=[checkpoint] if checkpoint else [])
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return model, trainer

    straight_model, straight_trainer = run(4)
    run(2, folder=tmp_path)
    resumed_model, resumed_trainer = run(4, ckpt_path=tmp_path / "last.ckpt")
    assert resumed_trainer.global_step == straight_trainer.global_step == 4 * 9 * 3
    expected, actual = _state(straight_model, straight_trainer), _state(resumed_model, resumed_trainer)
    assert expected.keys() == actual.keys()
    assert any(k.startswith("model.generator_ema") for k in expected) and any(k.startswith("opt_d") for k in expected)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


class _PoisonDiscriminator(pl.Callback):
    def on_train_epoch_start(self, trainer, model):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                next(model.discriminator.parameters()).fill_(float("nan"))


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    pl.seed_everything(0)
    model = GAN(data_shape=(2,), latent_dim=4, hidden=16)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = _toy_trainer(max_epochs=3, enable_checkpointing=True, callbacks=[checkpoint, _PoisonDiscriminator()])
    data = ToyMixtureDataModule(num_train=500, batch_size=100)
    with pytest.raises(DivergenceError) as error:
        trainer.fit(model, datamodule=data)
    assert "d_loss=nan" in str(error.value) and str(tmp_path / "last.ckpt") in str(error.value)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and all(torch.isfinite(v).all() for v in saved["state_dict"].values()
                                       if v.is_floating_point())


def test_fit_test_validate_and_predict_of_a_toy_gan_through_the_command_line(in_tmp_dir, monkeypatch, capsys):
    """The contract's command-line test for point data (the contract's pixel-range tests do not apply)."""
    check_every_command(in_tmp_dir, monkeypatch, capsys, "gan_toy_ring.yaml", [],
                        (*GAN_TEST_METRICS, "test/modes_covered"), ())


def test_sample_and_evaluate_of_a_toy_gan_speak_in_points_and_modes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONFIGS / "gan_toy_ring.yaml"), "--trainer.max_epochs", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.callbacks",
          '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]'])
    (ckpt,) = tmp_path.glob("runs/gan_toy_ring/version_0/checkpoints/last.ckpt")
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "50", "--out", "drawn", "--seed", "3"])
    saved = np.load(tmp_path / "drawn" / "samples.npz")
    assert list(saved) == ["points"] and saved["points"].shape == (50, 2) and saved["points"].dtype == np.float32
    model = GAN.load_checkpoint(ckpt).eval()
    expected = model.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.from_numpy(saved["points"]), expected)  # the coordinates, not clamped pixel levels
    assert (tmp_path / "drawn" / "samples.png").stat().st_size > 1000
    capsys.readouterr()
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "500"])  # default metrics for points
    printed = capsys.readouterr().out
    assert "modes_covered" in printed and "high_quality_fraction" in printed and "None" not in printed
