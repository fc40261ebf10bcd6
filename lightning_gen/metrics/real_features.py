"""Features of real images, computed once and cached on disk.

The cache key is everything that defines the numbers: the dataset (class and its arguments that select
images), the split, how many images, the feature extractor and the SHA-256 of its weights. Files are
written atomically (temporary file, then rename), so a crash never leaves a half-written cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from lightning_gen.checkpoints import class_path
from lightning_gen.data.base import batch_images
from lightning_gen.files import atomic_write
from lightning_gen.metrics.features import FeatureExtractor


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIGHTNING_GEN_CACHE", "~/.cache/lightning_gen")).expanduser()


def dataset_identity(datamodule, split: str, max_real: int | None) -> dict:
    """What selects the real images: class, its saved hyperparameters except those that only change how
    batches are loaded (``loader_only_args``), split and count. A value is the attribute of the same
    name where the DataModule resolved one (``data_dir`` None -> the folder actually read)."""
    loader_only = getattr(datamodule, "loader_only_args", frozenset())
    args = {name: str(getattr(datamodule, name, value)) for name, value in dict(datamodule.hparams).items()
            if name not in loader_only}
    return {"dataset": class_path(type(datamodule)), "args": args, "split": split, "max_real": max_real}


def atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda temporary: torch.save(obj, temporary))


@torch.no_grad()
def extract_real_features(datamodule, split: str, extractor: FeatureExtractor, max_real: int | None,
                          device: torch.device, progress: bool = True) -> Tensor:
    features, seen = [], 0
    loader = datamodule.split_dataloader(split)
    total = min(len(loader.dataset), max_real or len(loader.dataset))
    with tqdm(total=total, desc=f"real {split} features ({extractor.name})", disable=not progress, leave=False) as bar:
        for batch in loader:
            images = batch_images(batch)
            images = images[: total - seen].to(device)
            features.append(extractor(images).float().cpu())
            seen += len(images)
            bar.update(len(images))
            if seen >= total:
                break
    return torch.cat(features)


def cached_real_features(datamodule, split: str, extractor: FeatureExtractor, max_real: int | None = None,
                         cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                         progress: bool = True) -> tuple[Tensor, dict, bool]:
    """(features ``[N, D]``, the key that defines them, whether they came from the cache)."""
    key = {**dataset_identity(datamodule, split, max_real), **extractor.protocol()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir or default_cache_dir()) / "real_features" / f"{digest}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("key") == key:
                return stored["features"], key, True
        except Exception:  # an unreadable entry is recomputed, never trusted
            pass
    features = extract_real_features(datamodule, split, extractor, max_real, torch.device(device), progress)
    atomic_save({"key": key, "features": features}, path)
    return features, key, False
