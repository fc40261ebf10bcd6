"""AE and VAE: the shared contract, plus what is particular to each."""

import pytest
import torch

from lightning_gen.errors import ConfigValueError
from lightning_gen.models import AE, VAE
from tests.support.contract import GenerativeModelContract, fake_image_batches

VAE_TEST_METRICS = ("test/elbo", "test/nll_bpd", "test/recon", "test/kl")
PREDICTIONS = ("z", "reconstruction")
SMALL_VAE = dict(latent_dim=4, channels=8, hidden=32, test_importance_samples=8)  # k=8 keeps `test` quick


class TestVAE(GenerativeModelContract):
    other_model_class = AE
    config, test_metrics, predictions = "vae_fmnist.yaml", VAE_TEST_METRICS, PREDICTIONS

    def make_model(self):
        return VAE(data_shape=(1, 28, 28), **SMALL_VAE)


class TestBernoulliVAE(GenerativeModelContract):
    other_model_class = AE
    config, test_metrics, predictions = "vae_fmnist.yaml", VAE_TEST_METRICS, PREDICTIONS

    def make_model(self):
        return VAE(data_shape=(1, 28, 28), likelihood="bernoulli", **SMALL_VAE)


class TestRGBVAE(GenerativeModelContract):
    other_model_class = AE
    config, test_metrics, predictions = "vae_fmnist.yaml", VAE_TEST_METRICS, PREDICTIONS  # no RGB data offline

    def make_model(self):
        return VAE(data_shape=(3, 32, 32), **SMALL_VAE)


class TestMLPVAEWithPosteriorMixture(GenerativeModelContract):
    """The default config's combination: MLP nets, samples from the mixture fitted to training codes
    (which the checkpoint must carry for the round trip to give identical samples)."""

    other_model_class = AE
    config, test_metrics, predictions = "vae_fmnist.yaml", VAE_TEST_METRICS, PREDICTIONS

    def make_model(self):
        return VAE(data_shape=(1, 28, 28), latent_dim=4, hidden=32, test_importance_samples=8, net="mlp",
                   sample_latents="posterior_mixture", mixture_components=3)


class TestAE(GenerativeModelContract):
    other_model_class = VAE
    config, test_metrics, predictions = "ae_fmnist.yaml", ("test/recon",), PREDICTIONS

    def make_model(self):
        return AE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32)


class TestMedianDecodingAE(GenerativeModelContract):
    """The configs' ``decode_statistic: median``."""

    other_model_class = VAE
    config, test_metrics, predictions = "ae_fmnist.yaml", ("test/recon",), PREDICTIONS

    def make_model(self):
        return AE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32, decode_statistic="median")


def test_median_decoding_returns_8_bit_levels_and_an_unknown_statistic_is_refused():
    torch.manual_seed(0)
    vae = VAE(data_shape=(1, 28, 28), decode_statistic="median", **SMALL_VAE)
    images = vae.sample(8)
    assert torch.equal(images * 255, (images * 255).round())
    vae.decode_statistic = "mean"
    means = vae.sample(8)
    assert not torch.equal(means * 255, (means * 255).round())  # the control: expectations fall between levels
    with pytest.raises(ConfigValueError, match="decode_statistic must be one of mean, median, got 'mode'"):
        AE(data_shape=(1, 28, 28), decode_statistic="mode")


def test_ae_samples_from_the_gaussian_fitted_to_its_training_codes(tmp_path):
    """With a frozen encoder (learning rate 0) the codes do not move during the epoch, so the fitted
    Gaussian must equal the empirical mean and covariance of the training codes."""
    import lightning.pytorch as pl

    frozen = lambda params: torch.optim.SGD(params, lr=0.0)  # noqa: E731
    model = AE(data_shape=(1, 28, 28), latent_dim=3, channels=8, hidden=32, optimizer=frozen)
    loader = fake_image_batches((1, 28, 28), n=48, batch_size=16)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, loader)
    with torch.no_grad():
        codes = torch.cat([model.encode(x) for x, _ in loader]).double()
    torch.testing.assert_close(model.code_mean.double(), codes.mean(0), rtol=0, atol=1e-5)
    covariance = model.code_scale_tril.double() @ model.code_scale_tril.double().T
    torch.testing.assert_close(covariance, torch.cov(codes.T, correction=0), rtol=0, atol=1e-4)
    # and samples really come from that Gaussian: re-encoding is not needed, check the latent draws
    eps = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(0))
    z = model.code_mean + eps @ model.code_scale_tril.T
    torch.testing.assert_close(z.double().mean(0), codes.mean(0), rtol=0, atol=0.05 * codes.std(0).max().item())


def test_vae_reports_the_true_elbo_at_validation_while_training_is_warmed_up(tmp_path):
    import csv

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    model = VAE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32, kl_warmup_steps=4, beta=2.0)
    loader = fake_image_batches((1, 28, 28), n=64, batch_size=16)
    trainer = pl.Trainer(max_epochs=2, logger=CSVLogger(tmp_path), log_every_n_steps=1, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, loader, loader)
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    weights = [float(r["train/kl_weight"]) for r in rows if r.get("train/kl_weight")]
    assert weights == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]  # beta * min(1, step / 4), steps 0..7
    val = [r for r in rows if r.get("val/elbo")][-1]
    elbo, recon, kl = float(val["val/elbo"]), float(val["val/recon"]), float(val["val/kl"])
    assert abs(elbo - (-recon - kl)) < 1e-2 * abs(elbo)  # beta = 1 in the reported ELBO


@pytest.mark.parametrize("k", [1, 4])
def test_validation_nll_with_one_importance_sample_is_the_negative_elbo(k):
    import lightning.pytorch as pl

    torch.manual_seed(0)
    model = VAE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32, val_importance_samples=k)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(model, fake_image_batches((1, 28, 28), n=64, batch_size=32), verbose=False)[0]
    if k == 1:  # L_1 is the ELBO: the same number, from the same pass
        assert metrics["val/nll"] == pytest.approx(-metrics["val/elbo"], rel=1e-6)
    else:  # L_4 is another bound (a tighter one in expectation: an untrained decoder barely uses z, so by little)
        assert metrics["val/nll"] != pytest.approx(-metrics["val/elbo"], rel=1e-6)
