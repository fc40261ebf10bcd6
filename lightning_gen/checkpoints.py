"""Checkpoints at the boundary: reading (a missing, corrupt or foreign checkpoint is a clear error) and
writing (atomically: a crash never leaves a half-written ``.ckpt``)."""

from __future__ import annotations

import importlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_gen.errors import CheckpointError, RunFolderError
from lightning_gen.faults import kill_point
from lightning_gen.files import atomic_write

MODEL_CLASS_KEY = "lightning_gen_model_class"
DATAMODULE_KEY = "lightning_gen_datamodule"  # {"class_path": ..., "init_args": {...}} of the training data
# The layout of what we store in a checkpoint. Raise it when a change makes old readers misread new files;
# a reader refuses a newer format rather than guessing. Checkpoints without the key are format 1.
FORMAT_KEY = "lightning_gen_format"
FORMAT_VERSION = 1
WRITER_KEY = "lightning_gen_version"


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str) -> type:
    """The class a ``class_path`` names (``lightning_gen.models.VAE``)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU (tensors and plain data only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; "
                              "pass the path of a .ckpt file from a run's checkpoints/ folder")
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
    check_format(checkpoint, path)
    return checkpoint


def check_format(checkpoint: dict[str, Any], path: str | Path | None = None) -> None:
    """Refuse a checkpoint written in a newer layout than this version of lightning-gen reads."""
    saved = checkpoint.get(FORMAT_KEY, 1)
    if not isinstance(saved, int) or saved > FORMAT_VERSION:
        from lightning_gen import __version__

        writer = checkpoint.get(WRITER_KEY, "an unknown version")
        raise CheckpointError(
            f"checkpoint {path or ''} uses checkpoint format {saved!r} (written by lightning-gen {writer}); "
            f"this lightning-gen {__version__} reads format {FORMAT_VERSION} and older. Upgrade lightning-gen "
            "(pip install --upgrade lightning-gen) or use a checkpoint written by this version."
        )


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files appear whole or not at all, even if the process is killed mid-save.

    Lightning's own save writes through a temporary file in the system temp folder and then moves it,
    which is a copy (not atomic) when that folder is on another file system. Here the bytes go to a
    hidden ``.<name>.partial-<pid>`` beside the target, are flushed to disk, and the file is renamed into
    place (atomic within one file system). A partial file never ends in ``.ckpt``, so ``--ckpt_path last``
    cannot pick it. A write that fails (full disk, read-only folder) leaves the checkpoints already
    there untouched and stops the run with the folder and the fix.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec transaction is the right tool there
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()

        def write(partial: Path) -> None:
            with open(partial, "wb") as file:
                file.write(data[: len(data) // 2])
                file.flush()
                kill_point("checkpoint_half_written")
                file.write(data[len(data) // 2:])
                file.flush()
                os.fsync(file.fileno())
            kill_point("checkpoint_before_rename")

        try:
            _remove_stale_partials(path.parent)  # a folder that does not exist yet holds none
            atomic_write(path, write, fsync=True)
        except OSError as error:
            kept = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
            raise RunFolderError(
                f"cannot write checkpoint {path} ({error.strerror or error}). Nothing was half-written: "
                + (f"the checkpoints already in {path.parent} ({', '.join(kept)}) are unchanged. " if kept else "")
                + "Free disk space or make the folder writable, or point --trainer.default_root_dir and the "
                "logger's save_dir at another folder; then resume with --ckpt_path "
                + (str(path.parent / "last.ckpt") if "last.ckpt" in kept else "<a checkpoint>") + "."
            ) from error


def _remove_stale_partials(folder: Path) -> None:
    """Partial files of processes that no longer run (killed mid-save) are garbage."""
    for partial in folder.glob(".*.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            partial.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


