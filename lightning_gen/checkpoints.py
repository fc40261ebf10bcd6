"""Reading checkpoints at the boundary: a missing, corrupt or foreign checkpoint is a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_gen.errors import CheckpointError

MODEL_CLASS_KEY = "lightning_gen_model_class"
DATAMODULE_KEY = "lightning_gen_datamodule"  # {"class_path": ..., "init_args": {...}} of the training data


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU (tensors and plain data only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .ckpt file from a run's checkpoints/ folder")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, pickled code: all unusable here
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "the file is corrupt or not a lightning-gen checkpoint. Use another checkpoint of the run "
            "(e.g. last.ckpt or the best one)."
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def check_model_class(checkpoint: dict[str, Any], expected: type, path: str | Path | None = None) -> None:
    """Raise if ``checkpoint`` was written by a model class other than ``expected``."""
    saved = checkpoint.get(MODEL_CLASS_KEY)
    where = f"checkpoint {path}" if path else "the checkpoint"
    if saved is None:
        raise CheckpointError(
            f"{where} was not written by a lightning-gen model (no {MODEL_CLASS_KEY!r} entry); "
            f"expected one of {class_path(expected)}"
        )
    if saved != class_path(expected):
        raise CheckpointError(
            f"{where} holds a {saved} but this run builds a {class_path(expected)}. Use a checkpoint of a "
            f"{expected.__name__} run, or set the model to {saved} (e.g. the config that trained it)."
        )
