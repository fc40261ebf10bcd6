"""The sharpness metric (``hf_energy_ratio``): power spectra of samples against real images. Blurred copies of
real images must score clearly below 1, noisy copies clearly above, real images against real images near 1."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

import lightning_gen.metrics.compute as compute
import lightning_gen.metrics.registry as registry
from lightning_gen.data.mnist import FashionMNISTDataModule
from lightning_gen.metrics.registry import EvaluationSettings, best_of, evaluate_model
from lightning_gen.metrics.spectrum import PowerSpectrum, high_frequency_ratio
from tests.support.image_bank import ImageBankModel

REAL_IMAGES = 2000


@pytest.fixture(scope="module")
def fmnist(fmnist_dir):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    pool = data.split_dataloader("train").dataset
    return data, torch.stack([pool[i][0] for i in range(2 * REAL_IMAGES)])


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian_blur(images, 2 * math.ceil(3 * sigma) + 1, sigma)  # the kernel holds +-3 sigma


def _spectrum(images: torch.Tensor) -> PowerSpectrum:
    spectrum = PowerSpectrum()
    for batch in images.split(500):
        spectrum.update(batch)
    return spectrum


def test_a_sine_puts_its_power_at_its_own_frequency():
    rows = torch.arange(28.0)
    wave = torch.sin(2 * math.pi * 5 * rows / 28)[None, None, :, None].expand(1, 1, 28, 28)  # 5 cycles down
    radial = _spectrum(wave).radial()
    assert int(radial.argmax()) == 5 and radial[5] > 1e3 * radial[torch.arange(len(radial)) != 5].max()


def test_real_images_against_other_real_images_score_near_one(fmnist):
    _, images = fmnist
    ratio = high_frequency_ratio(_spectrum(images[:REAL_IMAGES]), _spectrum(images[REAL_IMAGES:]))
    assert 0.9 < ratio < 1.1, ratio


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_blurred_copies_score_below_one_and_lower_the_stronger_the_blur(fmnist, sigma):
    _, images = fmnist
    real = _spectrum(images[REAL_IMAGES:])
    ratios = [high_frequency_ratio(_spectrum(_blur(images[:REAL_IMAGES], s)), real) for s in (sigma, 2 * sigma)]
    assert ratios[0] < 0.7 and ratios[1] < ratios[0], ratios


def test_noisy_copies_score_above_one(fmnist):
    _, images = fmnist
    noisy = (images[:REAL_IMAGES] + 0.2 * torch.randn_like(images[:REAL_IMAGES])).clamp(0, 1)
    ratio = high_frequency_ratio(_spectrum(noisy), _spectrum(images[REAL_IMAGES:]))
    assert ratio > 1.5, ratio


def test_the_registry_scores_sharpness_without_a_feature_extractor(fmnist, monkeypatch):
    data, images = fmnist

    def refuse(*args, **kwargs):
        raise AssertionError("sharpness built a feature extractor it does not use")

    for module in (compute, registry):  # the metric must not build the (slow) Inception extractor
        monkeypatch.setattr(module, "build_feature_extractor", refuse)
    settings = EvaluationSettings(metrics=["sharpness"], num_samples=1000, max_real=1000, features="inception",
                                  progress=False)
    sharp = evaluate_model(ImageBankModel(images[:1000]), data, settings, "cpu")
    blurred = evaluate_model(ImageBankModel(_blur(images[:1000], 1.5)), data, settings, "cpu")
    (sharp,), (blurred,) = sharp, blurred
    assert sharp.name == "hf_energy_ratio" and 0.8 < sharp.value < 1.25 and blurred.value < 0.5 * sharp.value
    assert len(sharp.protocol["sample_spectrum"]) == len(sharp.protocol["real_spectrum"]) == 15  # radii 0..14
    assert sharp.protocol["num_real"] == 1000 and sharp.protocol["num_generated"] == 1000


def test_the_best_sharpness_in_a_report_is_the_one_nearest_one():
    assert best_of("hf_energy_ratio", [0.5, 1.3, 3.0]) == 1.3  # |log 1.3| < |log 0.5|
    assert best_of("hf_energy_ratio", [0.8, 1.3]) == 0.8
    assert best_of("fid_fmnist_clf", [0.8, 1.3]) == 0.8 and best_of("recall_fmnist_clf", [0.8, 1.3]) == 1.3
