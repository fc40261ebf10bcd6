"""Where the repository, its configs and the Fashion-MNIST files are, a writer of MNIST-format files and a lean
VAE config for runs that only train."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write a uint8 array as an IDX file (the MNIST format)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def lean_vae_config(folder: Path, **trainer) -> Path:
    """configs/vae_fmnist.yaml with no callbacks (no FID, pictures or checkpoints) and no validation."""
    config = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())
    config["trainer"].update(callbacks=[], enable_checkpointing=False, limit_val_batches=0,
                             enable_progress_bar=False, **trainer)
    path = folder / "vae_resident.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
