"""DINOv2 features for FD-DINOv2 (Stein et al., "Exposing flaws of generative model evaluation metrics and their
unfair treatment of diffusion models", NeurIPS 2023): the Fréchet distance in the features of a DINOv2 ViT-L/14
(1024-d CLS token), the space that paper found to agree best with human judgement of sample quality.

The pipeline is torch-fidelity's ``FeatureExtractorDinoV2`` (tested equal, given the same backbone): images as
8-bit levels, gray repeated to RGB, resized to 224x224 with the TensorFlow-1-compatible bilinear of
``torch_fidelity.interpolate_compat_tensorflow``, normalised with the ImageNet mean and std (in 0..255 units),
then the backbone. The backbone comes from, in order:

- ``weights_path``: a TorchScript file of the backbone (normalised ``[N, 3, 224, 224]`` -> ``[N, D]``), e.g.
  exported once on a machine with internet by ``torch.jit.trace(torch.hub.load("facebookresearch/dinov2",
  "dinov2_vitl14"), torch.zeros(1, 3, 224, 224)).save("dinov2_vitl14.pt")``; its SHA-256 goes into the protocol;
- else ``torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")``: online, or offline from torch hub's cache.

No registry package ships DINOv2 weights, so offline without a file this is a ``FeatureError`` that says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_gen.data.pixels import to_uint8_levels

HUB_REPO, HUB_MODEL = "facebookresearch/dinov2", "dinov2_vitl14"
INPUT_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINOV2_ENV = "LIGHTNING_GEN_DINOV2_WEIGHTS"


def dinov2_fix() -> str:
    return (f"Export the backbone once on a machine with internet: torch.jit.trace(torch.hub.load('{HUB_REPO}', "
            f"'{HUB_MODEL}'), torch.zeros(1, 3, 224, 224)).save('{HUB_MODEL}.pt'), then pass "
            f"`--features_weights /path/{HUB_MODEL}.pt` or set ${DINOV2_ENV}")


def load_backbone(weights_path: str | Path | None) -> nn.Module:
    """The DINOv2 backbone from a TorchScript file, else from torch hub (online or its cache). Raises what
    it meets; ``DinoV2Features`` turns it into a ``FeatureError`` naming the fix."""
    if weights_path is not None:
        return torch.jit.load(str(weights_path), map_location="cpu")
    return torch.hub.load(HUB_REPO, HUB_MODEL, trust_repo=True, verbose=False)


def preprocess(images: Tensor) -> Tensor:
    """``[N, 1 or 3, H, W]`` in [0, 1] -> ``[N, 3, 224, 224]`` as torch-fidelity's DINOv2 extractor feeds its
    backbone: 8-bit levels, gray -> RGB, TF1-compatible bilinear resize, ImageNet normalisation."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    levels = to_uint8_levels(images).float()
    if levels.shape[1] == 1:
        levels = levels.expand(-1, 3, -1, -1)
    resized = interpolate_bilinear_2d_like_tensorflow1x(levels, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (resized - mean) / std
