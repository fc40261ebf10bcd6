"""The default Fashion-MNIST recipes learn, judged against crippled controls of themselves, over seeds.

Each test trains the shipped config through the command line on a few thousand images for a few
seconds, then scores samples (FID in the package's Fashion-MNIST classifier features) against test
images. The recipe must beat its own control by a wide margin on every seed: the margins below are
about half of the smallest gap measured over the seeds (printed by each test), so a CPU whose rounding
sends the trajectories elsewhere still passes, while a recipe that stopped learning fails.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings

import pytest
import torch

from lightning_gen.cli import LightningGenCLI
from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from tests.support.paths import CONFIGS

SEEDS = (0, 1)  # fixed before any result was seen
SHORT = ["--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false", "--trainer.logger=false",
         "--trainer.callbacks=[]", "--trainer.limit_val_batches=0"]


def _fit(config: str, fmnist_dir, folder, seed: int, *options: str):
    args = ["fit", "--config", str(CONFIGS / config), f"--seed_everything={seed}", *SHORT,
            f"--data.init_args.data_dir={fmnist_dir}", "--data.init_args.subset=4000", *options]
    with contextlib.chdir(tempfile.mkdtemp(dir=folder)), warnings.catch_warnings():  # a run folder per fit
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return LightningGenCLI(args=args).model


def _fid(model, fmnist_dir) -> float:
    settings = EvaluationSettings(metrics=["fid"], num_samples=1000, max_real=1000, features="fmnist_clf",
                                  progress=False)
    return evaluate_model(model, FashionMNISTDataModule(data_dir=str(fmnist_dir)), settings, "cpu")[0].value


# (config, epochs, the option that freezes what must learn, the largest recipe / control FID ratio allowed)
FROZEN_CONTROLS = {
    "gan": ("gan_fmnist.yaml", 2, "--model.init_args.generator_optimizer.init_args.lr=0", 0.8),  # measured 0.61x
    "ae": ("ae_fmnist.yaml", 3, "--model.init_args.optimizer.init_args.lr=0", 0.5),  # measured 0.20x
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", FROZEN_CONTROLS)
def test_the_recipe_beats_the_same_config_with_a_learning_rate_of_zero(fmnist_dir, tmp_path, family, seed):
    """GAN: the generator cannot learn; AE: nothing can. The ratios were measured on seeds 0 and 1."""
    config, epochs, freeze, max_ratio = FROZEN_CONTROLS[family]
    recipe = _fid(_fit(config, fmnist_dir, tmp_path, seed, f"--trainer.max_epochs={epochs}"), fmnist_dir)
    frozen = _fid(_fit(config, fmnist_dir, tmp_path, seed, f"--trainer.max_epochs={epochs}", freeze), fmnist_dir)
    print(f"{family} seed {seed}: FID recipe {recipe:.1f}, learning rate 0 {frozen:.1f}")
    assert recipe < max_ratio * frozen, (recipe, frozen)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_vae_recipe_samples_better_than_from_the_prior_or_by_decoding_the_mean(fmnist_dir, tmp_path, seed):
    """Two levers of the recipe, each against the same weights with the lever off: z from the Gaussian
    mixture fitted to training codes (control: the prior), and the per-pixel median of p(x|z) as the
    image (control: the mean, whose grey veil over the background the median removes)."""
    vae = _fit("vae_fmnist.yaml", fmnist_dir, tmp_path, seed, "--trainer.max_epochs=3")
    assert (vae.sample_latents, vae.decode_statistic) == ("posterior_mixture", "median")
    recipe = _fid(vae, fmnist_dir)
    vae.sample_latents = "prior"
    prior = _fid(vae, fmnist_dir)
    vae.sample_latents, vae.decode_statistic = "posterior_mixture", "mean"
    mean = _fid(vae, fmnist_dir)
    print(f"seed {seed}: FID recipe {recipe:.1f}, prior {prior:.1f}, mean decoding {mean:.1f}")
    assert recipe < 0.8 * prior, (recipe, prior)  # measured 0.58x (seed 0) and 0.62x (seed 1)
    assert recipe < 0.8 * mean, (recipe, mean)  # measured 0.59x and 0.64x


def test_an_untrained_vae_decodes_its_mixture_no_better_than_the_prior(fmnist_dir, tmp_path):
    """The control of the test above: with no training there are no codes, and the mixture falls back to
    the prior, so the two must agree exactly."""
    torch.manual_seed(0)
    vae = _fit("vae_fmnist.yaml", fmnist_dir, tmp_path, 0, "--trainer.max_steps=0")
    mixture = _fid(vae, fmnist_dir)
    vae.sample_latents = "prior"
    assert _fid(vae, fmnist_dir) == mixture
