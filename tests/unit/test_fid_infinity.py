"""FID∞ (Chong & Forsyth 2020): on two known Gaussians it lands nearer the closed-form Fréchet distance than FID
at the smallest N, and near 0 for two samples of one distribution; in the registry its FID at the full N is
the FID metric's value, and its protocol carries the fit and the bootstrap spread."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.image.fid import _compute_fid

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.metrics.frechet import FrechetReference, fid_infinity, gaussian_statistics
from tests.support.image_bank import ImageBankModel

DIM = 32


def _fake_distribution() -> tuple[torch.Tensor, torch.Tensor]:
    """N(mu, cov) with a full, known covariance; the real distribution is N(0, I)."""
    generator = torch.Generator().manual_seed(123)
    a = torch.randn(DIM, DIM, generator=generator, dtype=torch.float64) / math.sqrt(DIM)
    return torch.full((DIM,), 0.2, dtype=torch.float64), 0.5 * torch.eye(DIM, dtype=torch.float64) + 0.5 * a @ a.T


def _closed_form(mu: torch.Tensor, cov: torch.Tensor) -> float:
    """d²(N(0, I), N(mu, cov)) = |mu|² + tr I + tr cov − 2 tr cov^{1/2}: with I, (I cov)^{1/2} = cov^{1/2}."""
    return float(mu.square().sum() + DIM + cov.trace() - 2 * torch.linalg.eigvalsh(cov).sqrt().sum())


def test_the_frechet_distance_equals_torchmetrics_formula():
    mu, cov = _fake_distribution()
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(500, DIM, generator=generator, dtype=torch.float64) * 1.5 + 0.1
    fake = torch.randn(400, DIM, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + mu
    (m1, c1), (m2, c2) = gaussian_statistics(real), gaussian_statistics(fake)
    assert torch.allclose(c1, torch.cov(real.T)) and torch.allclose(m2, fake.mean(0))
    ours = FrechetReference(m1, c1).distance(m2, c2)
    assert ours == pytest.approx(float(_compute_fid(m1, c1, m2, c2)), rel=1e-9)
    assert FrechetReference(mu, cov).distance(mu, cov) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fid_infinity_removes_the_bias_in_n(seed):
    """Measured (seeds 0, 1, 2): closed form 3.024; FID at N/5 = 500 samples 3.75, 3.76, 3.37, at N = 2500
    3.19, 3.20, 3.06; FID∞ 3.03, 3.05, 2.97. Same distribution: FID at 500 samples 0.59, 0.61, 0.54; FID∞ 0.007,
    -0.011, 0.026."""
    mu, cov = _fake_distribution()
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(50_000, DIM, generator=generator, dtype=torch.float64)  # many: its own bias is small
    fake = torch.randn(2500, DIM, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + mu
    same = torch.randn(2500, DIM, generator=generator, dtype=torch.float64)
    reference = FrechetReference(*gaussian_statistics(real))
    true = _closed_form(mu, cov)
    fit = fid_infinity(reference, fake, torch.Generator().manual_seed(seed))
    assert fit.sizes == [500, 1000, 1500, 2000, 2500] and fit.slope > 0  # FID falls as N grows
    assert abs(fit.intercept - true) < 0.5 * abs(fit.fids[0] - true)
    control = fid_infinity(reference, same, torch.Generator().manual_seed(seed))
    assert abs(control.intercept) < 0.1 * control.fids[0] and abs(control.intercept) < 0.05


def test_the_registry_reports_fid_infinity_with_its_fit_and_spread(fmnist_dir, tmp_path):
    """600 training images against 1000 test images: FID 11.5 at N = 600, FID∞ 2.9 (what is left: the bias of
    the 1000 real images, which the fit over N does not remove, and the train/test difference)."""
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    pool = data.split_dataloader("train").dataset
    images = torch.stack([pool[i][0] for i in range(600)])
    settings = EvaluationSettings(metrics=["fid", "fid_infinity"], num_samples=600, split="test", max_real=1000,
                                  cache_dir=str(tmp_path), progress=False)
    fid, infinity = evaluate_model(ImageBankModel(images), data, settings, "cpu")
    assert infinity.name == "fid_infinity_fmnist_clf"
    sizes, fids = zip(*infinity.protocol["fid_at_n"])
    assert sizes == (120, 240, 360, 480, 600)
    assert fids[-1] == pytest.approx(fid.value, rel=1e-6)  # all N samples: the FID metric's own value
    assert infinity.value < 0.5 * fid.value and infinity.protocol["fid_slope"] > 0
    assert 0 < infinity.protocol["fid_std"] < fid.value and infinity.protocol["bootstrap_draws"] == 10
