"""DINOv2 features (FD-DINOv2): no DINOv2 weights can be fetched here, so a small stand-in backbone, exported to
TorchScript as a user would export the real one, proves the pipeline equals torch-fidelity's and that the
registry scores FID in that space; without weights offline the error names the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics.features import DinoV2Features, FeatureError, file_sha256
from lightning_gen.metrics.registry import EvaluationSettings, evaluate_model
from tests.support.image_bank import ImageBankModel


class StandInBackbone(nn.Module):
    """Normalised ``[N, 3, 224, 224]`` -> ``[N, 16]``, in place of the ViT-L/14."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 7, stride=4)
        self.head = nn.Linear(8, 16)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dinov2") / "stand_in.pt"
    torch.jit.trace(StandInBackbone().eval(), torch.zeros(1, 3, 224, 224)).save(str(path))
    return path


def _torch_fidelity_with(backbone: nn.Module) -> FeatureExtractorDinoV2:
    """torch-fidelity's extractor around ``backbone`` (its constructor would fetch the real one from torch hub)."""
    reference = FeatureExtractorDinoV2.__new__(FeatureExtractorDinoV2)
    FeatureExtractorBase.__init__(reference, "dinov2-vit-l-14", ["dinov2"])
    reference.feature_extractor_internal_dtype = torch.float32
    reference.model = backbone
    return reference.eval()


def test_our_pipeline_gives_torch_fidelitys_features_for_the_same_backbone(backbone_file):
    ours = DinoV2Features(str(backbone_file))
    reference = _torch_fidelity_with(torch.jit.load(str(backbone_file)))
    levels = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference(levels.expand(-1, 3, -1, -1))[0]
        actual = ours(levels.float() / 255)  # the project's convention: [0, 1], grayscale
        resized_otherwise = ours.net(nn.functional.interpolate(levels.float().expand(-1, 3, -1, -1), 224,
                                                               mode="bilinear", antialias=True))
    assert ours.num_features == 16 and actual.shape == (6, 16)
    assert torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(resized_otherwise, expected, atol=1e-2)  # the control: another resize, no mean/std
    assert ours.protocol()["weights_sha256"] == file_sha256(str(backbone_file))


def test_the_registry_scores_fid_in_dinov2_features(backbone_file, fmnist_dir):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=200)
    data.setup("test")
    real = torch.stack([data.test_set[i][0] for i in range(64)])
    settings = EvaluationSettings(metrics=["fid"], num_samples=64, max_real=64, features="dinov2",
                                  features_weights=str(backbone_file), progress=False)
    (same,) = evaluate_model(ImageBankModel(real), data, settings, "cpu")
    (noise,) = evaluate_model(ImageBankModel(torch.rand_like(real)), data, settings, "cpu")
    assert same.name == "fid_dinov2" and same.protocol["features"] == "dinov2"
    assert same.value < 1e-3 < noise.value  # the test images against themselves, then uniform noise


def test_without_weights_offline_the_error_names_the_export_and_the_option(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load", offline)
    monkeypatch.delenv("LIGHTNING_GEN_DINOV2_WEIGHTS", raising=False)
    with pytest.raises(FeatureError, match="cannot load the DINOv2 backbone.*torch.jit.trace.*--features_weights"):
        DinoV2Features()
    with pytest.raises(FeatureError, match="missing.pt do not exist"):
        DinoV2Features(str(tmp_path / "missing.pt"))
