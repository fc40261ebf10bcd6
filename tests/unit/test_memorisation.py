"""The memorisation check flags a "model" that returns training images and not one that returns unseen test
images, on real Fashion-MNIST in the fmnist_clf features; its threshold and pairs match a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, MetricError, evaluate_model
from lightning_gen.metrics.memorisation import memorisation
from tests.support.image_bank import ImageBankModel

NUM_REAL = 1000  # training images (the reference) and held-out test images (the yardstick): max_real


def test_threshold_share_and_pairs_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    train, held_out, fake = rng.normal(size=(300, 6)), rng.normal(size=(200, 6)), rng.normal(size=(100, 6))
    fake[:7] = train[[5, 50, 9, 11, 200, 3, 1]] + np.arange(1, 8)[:, None] * 1e-3  # seven near-copies, nearest first

    def nearest(queries):
        distances = np.sqrt(((queries[:, None] - train[None]) ** 2).sum(-1))  # (Q, T)
        return distances.min(1), distances.argmin(1)

    threshold = np.percentile(nearest(held_out)[0], 1)  # numpy's linear interpolation, as torch.quantile's
    fake_distances, fake_index = nearest(fake)
    found = memorisation(*(torch.from_numpy(a) for a in (train, held_out, fake)), keep=7)
    assert found.threshold == pytest.approx(threshold, rel=1e-12)
    assert found.share == pytest.approx((fake_distances < threshold).mean(), abs=1e-12)
    assert 0.07 <= found.share < 0.1  # the copies, and perhaps a sample close by chance
    assert sorted(pair["train"] for pair in found.closest_pairs) == sorted([5, 50, 9, 11, 200, 3, 1])
    assert [pair["sample"] for pair in found.closest_pairs] == list(range(7)) == list(np.argsort(fake_distances)[:7])
    assert all(pair["train"] == fake_index[pair["sample"]] for pair in found.closest_pairs)


@pytest.fixture(scope="module")
def fmnist(fmnist_dir, tmp_path_factory):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    train = data.split_dataloader("train").dataset
    test = data.split_dataloader("test").dataset
    trained_on = torch.stack([train[i][0] for i in range(500)])  # among the NUM_REAL reference images
    unseen = torch.stack([test[i][0] for i in range(NUM_REAL, NUM_REAL + 500)])  # not among the held-out ones
    settings = EvaluationSettings(metrics=["memorisation"], num_samples=500, split="test", max_real=NUM_REAL,
                                  cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False)

    def score(images: torch.Tensor, **changes):
        chosen = EvaluationSettings(**{**settings.__dict__, **changes})
        (result,) = evaluate_model(ImageBankModel(images), data, chosen, "cpu")
        return result

    return score, trained_on, unseen


def test_a_model_that_returns_training_images_is_flagged(fmnist):
    score, trained_on, _ = fmnist
    result = score(trained_on)
    assert result.name == "memorised_share_fmnist_clf" and result.value > 0.99
    assert result.protocol["num_train"] == NUM_REAL and result.protocol["threshold"] > 0
    pairs = result.protocol["closest_pairs"]
    assert len(pairs) == 16 and all(pair["distance"] == 0 for pair in pairs)
    for pair in pairs:  # each pair is a sample and the training image it copies
        assert torch.equal(trained_on[pair["sample"]], trained_on[pair["train"]])


def test_a_model_that_returns_unseen_test_images_is_not(fmnist):
    """The threshold is the 1st percentile of held-out images' distances, so new images fall below it about 1%
    of the time: measured 1.2% here (500 images); a model that copies 30% of its samples scores about
    0.3 + 0.7 x 1%: measured 0.312."""
    score, trained_on, unseen = fmnist
    assert score(unseen).value < 0.03
    mixed = torch.cat([trained_on[:150], unseen[150:]])
    assert 0.29 < score(mixed).value < 0.34


def test_the_training_split_cannot_be_its_own_yardstick(fmnist):
    score, trained_on, _ = fmnist
    with pytest.raises(MetricError, match="evaluate against split val or test, not train"):
        score(trained_on, split="train")
