"""Density and coverage (Naeem et al. 2020) equal the authors' `prdc` package on the same features, and order
real Fashion-MNIST images above degraded copies of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from torchvision.transforms.v2.functional import gaussian_blur

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.metrics.density_coverage import DensityCoverage
from lightning_gen.metrics.features import ClassifierFeatures
from lightning_gen.metrics.real_features import cached_real_features
from tests.support.image_bank import ImageBankModel


@pytest.mark.parametrize("k", [1, 3, 5])
def test_density_and_coverage_equal_prdc_on_gaussian_features(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(400, 8))
    fake = rng.normal(loc=0.4, scale=1.3, size=(300, 8))
    metric = DensityCoverage(k=k)
    metric.update(torch.from_numpy(real[:150]), real=True)  # in pieces, as processes and batches give them
    metric.update(torch.from_numpy(real[150:]), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    density, coverage = metric.compute()
    expected = compute_prdc(real, fake, nearest_k=k)
    assert 0.1 < expected["density"] < 1 and 0.1 < expected["coverage"] < 1  # neither trivial
    assert density == pytest.approx(expected["density"], abs=1e-6)
    assert coverage == pytest.approx(expected["coverage"], abs=1e-6)


@pytest.fixture(scope="module")
def fmnist(fmnist_dir, tmp_path_factory):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    pool = data.split_dataloader("train").dataset
    images = torch.stack([pool[i][0] for i in range(600)])
    return data, images, str(tmp_path_factory.mktemp("cache"))


def _scores(data, images, cache_dir) -> dict[str, float]:
    settings = EvaluationSettings(metrics=["density_coverage"], num_samples=len(images), split="test", max_real=1000,
                                  cache_dir=cache_dir, progress=False)
    return {r.name: r.value for r in evaluate_model(ImageBankModel(images), data, settings, "cpu")}


def test_the_registry_gives_prdcs_values_on_fmnist_features(fmnist):
    data, images, cache_dir = fmnist
    scores = _scores(data, images[:300], cache_dir)
    extractor = ClassifierFeatures()
    real, _, _ = cached_real_features(data, "test", extractor, 1000, cache_dir, progress=False)
    expected = compute_prdc(real.double().numpy(), extractor(images[:300]).double().numpy(), nearest_k=3)
    assert scores["density_fmnist_clf"] == pytest.approx(expected["density"], abs=1e-6)
    assert scores["coverage_fmnist_clf"] == pytest.approx(expected["coverage"], abs=1e-6)


def test_real_images_score_higher_than_blurred_or_noisy_copies(fmnist):
    """600 training images against 1000 test images, density / coverage (k = 3): 0.97 / 0.77; blurred (sigma 1)
    0.24 / 0.085; with Gaussian noise (sigma 0.2) 0.31 / 0.034. For two samples of one distribution density is 1
    in expectation and coverage about 1 - 2^-k = 0.875 for large sets (Naeem et al. 2020)."""
    data, images, cache_dir = fmnist
    generator = torch.Generator().manual_seed(0)
    real = _scores(data, images, cache_dir)
    degraded = [_scores(data, gaussian_blur(images, kernel_size=7, sigma=1.0), cache_dir),
                _scores(data, (images + 0.2 * torch.randn(images.shape, generator=generator)).clamp(0, 1), cache_dir)]
    assert 0.8 < real["density_fmnist_clf"] < 1.25 and real["coverage_fmnist_clf"] > 0.6  # 1 and ~0.8 in theory
    for control in degraded:
        assert control["density_fmnist_clf"] < 0.5 * real["density_fmnist_clf"]
        assert control["coverage_fmnist_clf"] < 0.5 * real["coverage_fmnist_clf"]
