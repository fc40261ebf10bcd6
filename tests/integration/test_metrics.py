"""The metric registry: precision/recall against a brute-force reference, sanity of the metrics on
real Fashion-MNIST (each ordering could fail), the real-feature cache, likelihood units, and errors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms.v2.functional import gaussian_blur

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, MetricError, PrecisionRecall, evaluate_model
from lightning_gen.metrics.features import ClassifierFeatures
from lightning_gen.metrics.real_features import cached_real_features
from lightning_gen.models.base import GenerativeModule
from tests.support.image_bank import ImageBankModel


def _brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(points):
        d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def inside(queries, support, support_radii):
        hits = 0
        for q in queries:
            hits += any(np.linalg.norm(q - s) <= r for s, r in zip(support, support_radii))
        return hits / len(queries)

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 5))
    fake = rng.normal(loc=0.7, scale=1.3, size=(50, 5))
    metric = PrecisionRecall(k=3)
    metric.update(torch.from_numpy(real[:30]), real=True)
    metric.update(torch.from_numpy(real[30:]), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    precision, recall = metric.compute()
    expected = _brute_force_precision_recall(real, fake, 3)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert (float(precision), float(recall)) == pytest.approx(expected, abs=1e-12)


@pytest.fixture(scope="module")
def fmnist(fmnist_dir):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    pool = data.split_dataloader("train").dataset
    images = torch.stack([pool[i][0] for i in range(12_000)])
    labels = torch.stack([pool[i][1] for i in range(12_000)])
    return data, images, labels


@pytest.fixture(scope="module")
def evaluate_images(fmnist, tmp_path_factory):
    data, _, _ = fmnist
    settings = EvaluationSettings(metrics=["fid", "kid", "precision_recall"], num_samples=3000, split="test",
                                  max_real=3000, cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False)

    def run(images: torch.Tensor, metrics: list[str] | None = None) -> dict[str, float]:
        chosen = settings if metrics is None else replace(settings, metrics=metrics)
        results = evaluate_model(ImageBankModel(images), data, chosen, "cpu")
        return {r.name.replace("_fmnist_clf", ""): r.value for r in results}

    return run


def test_train_images_are_close_to_test_images(fmnist, evaluate_images):
    _, images, _ = fmnist
    clean = evaluate_images(images[:3000])
    blurred = evaluate_images(gaussian_blur(images[:3000], kernel_size=7, sigma=0.5))
    assert clean["fid"] < 0.2 * blurred["fid"]
    assert clean["precision"] > 0.8 and clean["recall"] > 0.8
    assert abs(clean["kid"]) < 0.05 * blurred["kid"]


@pytest.mark.parametrize("degrade", ["blur", "noise"])
def test_fid_grows_monotonically_with_degradation_strength(fmnist, evaluate_images, degrade):
    _, images, _ = fmnist
    generator = torch.Generator().manual_seed(0)
    x = images[:3000]
    if degrade == "blur":
        versions = [gaussian_blur(x, kernel_size=9, sigma=s) for s in (0.4, 0.8, 1.6)]
    else:
        versions = [(x + s * torch.randn(x.shape, generator=generator)).clamp(0, 1) for s in (0.03, 0.1, 0.3)]
    fids = [evaluate_images(v, metrics=["fid"])["fid"] for v in [x, *versions]]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_one_class_mode_collapse_has_high_fid_low_recall_high_precision(fmnist, evaluate_images):
    _, images, labels = fmnist
    clean = evaluate_images(images[:3000])
    collapsed = evaluate_images(images[labels == 7][:1000])  # sneakers only
    assert collapsed["fid"] > 20 * clean["fid"]
    assert collapsed["recall"] < 0.3 * clean["recall"]
    assert collapsed["precision"] > 0.8


def test_real_features_are_cached_by_everything_that_defines_them(fmnist, tmp_path):
    data, _, _ = fmnist
    extractor = ClassifierFeatures()
    first, key, cached = cached_real_features(data, "test", extractor, 500, tmp_path, progress=False)
    again, _, cached_again = cached_real_features(data, "test", extractor, 500, tmp_path, progress=False)
    other_split, other_key, cached_other = cached_real_features(data, "val", extractor, 500, tmp_path, progress=False)
    assert not cached and cached_again and not cached_other
    assert torch.equal(first, again) and first.shape == (500, 128)
    assert key["split"] == "test" and other_key["split"] == "val" and not torch.equal(first, other_split)
    files = list((tmp_path / "real_features").iterdir())
    assert len(files) == 2 and not any(f.name.startswith(".") for f in files)
    for f in files:  # a damaged entry is recomputed, never trusted
        f.write_bytes(b"garbage")
    recomputed, _, cached_after_damage = cached_real_features(data, "test", extractor, 500, tmp_path, progress=False)
    assert not cached_after_damage and torch.equal(recomputed, first)


class UniformModel(GenerativeModule):
    """log p(x) = -D log 256: exactly 8 bits per dimension."""

    def __init__(self):
        super().__init__()
        self.data_shape = (1, 28, 28)
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def sample(self, n, generator=None):
        return torch.randint(0, 256, (n, *self.data_shape), generator=generator).float() / 255

    def log_likelihood(self, x):
        return torch.full((len(x),), -math.prod(self.data_shape) * math.log(256), dtype=torch.float64)


def test_the_likelihood_bar_counts_the_batches_max_real_reads_not_the_whole_split(fmnist, tmp_path, capsys):
    data, _, _ = fmnist
    batches = -(-300 // data.split_dataloader("test").batch_size)
    evaluate_model(UniformModel(), data, EvaluationSettings(metrics=["nll_bpd"], max_real=300, progress=True), "cpu")
    bar = capsys.readouterr().err
    assert f"/{batches} " in bar and f"/{len(data.split_dataloader('test'))} " not in bar, bar[-500:]


def test_nll_bpd_converts_nats_per_image_to_bits_per_dim(fmnist, tmp_path):
    data, _, _ = fmnist
    settings = EvaluationSettings(metrics=["nll_bpd"], split="test", max_real=300, cache_dir=str(tmp_path),
                                  progress=False)
    (result,) = evaluate_model(UniformModel(), data, settings, "cpu")
    assert result.name == "nll_bpd" and result.value == pytest.approx(8.0, abs=1e-9)
    assert result.protocol["num_images"] == 300
    assert result.protocol["nll_nats_per_image"] == pytest.approx(784 * math.log(256))


def test_metric_errors_name_the_problem(fmnist):
    data, images, _ = fmnist
    implicit = ImageBankModel(images[:10])  # samples only, like a GAN
    with pytest.raises(MetricError, match="unknown metric.*inception_score.*choose from"):
        evaluate_model(implicit, data, EvaluationSettings(metrics=["inception_score"]), "cpu")
    with pytest.raises(MetricError, match="nll_bpd needs an explicit likelihood.*implicitly"):
        evaluate_model(implicit, data, EvaluationSettings(metrics=["fid", "nll_bpd"]), "cpu")
    with pytest.raises(MetricError, match="importance_samples applies to latent-variable models"):
        evaluate_model(UniformModel(), data, EvaluationSettings(metrics=["nll_bpd"], importance_samples=5), "cpu")
    with pytest.raises(MetricError, match="num_samples"):
        evaluate_model(implicit, data, EvaluationSettings(metrics=["fid"], num_samples=1), "cpu")


def test_the_feature_cache_key_follows_every_image_selecting_argument_but_no_loader_setting(fmnist_dir):
    """A DataModule argument nobody listed (here: which classes to keep) must change the key; batch size,
    workers and the like must not."""
    from lightning_gen.data import FashionMNISTDataModule
    from lightning_gen.metrics.real_features import dataset_identity

    class SomeClasses(FashionMNISTDataModule):
        def __init__(self, classes: tuple[int, ...] = (0, 1), **kwargs):
            super().__init__(**kwargs)
            self.classes = classes

    base = dataset_identity(SomeClasses(data_dir=str(fmnist_dir)), "test", None)
    assert dataset_identity(SomeClasses(classes=(2,), data_dir=str(fmnist_dir)), "test", None) != base
    assert dataset_identity(SomeClasses(data_dir=str(fmnist_dir), subset=100), "test", None) != base
    loaders = SomeClasses(data_dir=str(fmnist_dir), batch_size=7, num_workers=2, eval_batch_size=3)
    assert dataset_identity(loaders, "test", None) == base
    assert base["args"]["data_dir"] == str(fmnist_dir) and base["args"]["classes"] == "(0, 1)"
