"""Checkpoints at the boundary: reading (a missing, corrupt or foreign checkpoint is a clear error), loading a
finished run (``load_run``: model, data and record from one read of the file) and writing (atomically: a crash
never leaves a half-written ``.ckpt``)."""

from __future__ import annotations

import importlib
import io
import json
import os
from dataclasses import dataclass, field
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
    """Load a checkpoint dict on the CPU (tensors and plain data only: ``weights_only=True``).

    A command reads its checkpoint once, at its boundary (``cli.main``, ``load_run``), and hands the dict
    down; treat it as read-only."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass the path of a .ckpt file"
                              + _checkpoints_inside(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; "
                              "pass the path of a .ckpt file from a run's checkpoints/ folder")
    return _load_checked(path)


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint read once at a command's boundary and handed down: its path and its (read-only) dict."""

    path: Path
    contents: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> "CheckpointFile":
        return cls(Path(path), read_checkpoint(path))

    def is_of(self, path: str | Path | None) -> bool:
        return path is not None and Path(path).resolve() == self.path.resolve()


def _checkpoints_inside(folder: Path, shown: int = 3) -> str:
    """``, e.g. A or B`` naming the newest ``last.ckpt`` files under ``folder`` (a run folder or runs/), or
    where checkpoints live when there are none."""
    found = sorted(folder.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        return " from a run's checkpoints/ folder (runs/<name>/version_<n>/checkpoints/last.ckpt)"
    return ", e.g. " + " or ".join(str(p) for p in found[:shown])


def _load_checked(path: Path) -> dict[str, Any]:
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


RUN_RECORD = "run.json"  # written after `fit` beside config.yaml (runs.write_run_record)


@dataclass
class LoadedRun:
    """A finished run, rebuilt from what its checkpoint records."""

    checkpoint_path: Path
    folder: Path | None  # the run folder (runs/<name>/version_<n>), when the checkpoint sits in one
    model: Any  # a GenerativeModule in eval mode, weights loaded
    datamodule: Any  # the DataModule it trained on (not set up)
    record: dict[str, Any] = field(default_factory=dict)  # run.json, when the folder has one
    saved: dict[str, Any] = field(default_factory=dict)  # the checkpoint's entries but its weights and optimizer


def resolve_run(path: str | Path) -> tuple[Path, Path | None]:
    """A run folder or a checkpoint -> (checkpoint, run folder or None)."""
    path = Path(path)
    if path.is_dir():
        checkpoint = path / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise CheckpointError(f"{path} is not a run folder with checkpoints/last.ckpt; pass a run folder "
                                  "(runs/<name>/version_<n>) or a .ckpt file")
        return checkpoint, path
    if path.is_file():
        return path, path.parent.parent if path.parent.name == "checkpoints" else None
    raise CheckpointError(f"{path} does not exist; pass a run folder (runs/<name>/version_<n>) or a .ckpt file")


def model_hyperparameters(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's ``__init__`` arguments saved in ``checkpoint``, without LightningCLI's bookkeeping entries
    (``_instantiator``, ``_class_path``)."""
    return {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}


def model_from_checkpoint(checkpoint: dict[str, Any], model_class: type | None = None, **overrides: Any):
    """The model a checkpoint dict holds (weights loaded; the mode and device as built), rebuilt from its saved
    hyperparameters, as Lightning's ``load_from_checkpoint`` does but from a dict already read. ``overrides``
    replace hyperparameters that do not change the weights (e.g. a PixelCNN's ``sampler``)."""
    if model_class is None:
        model_class = import_class(checkpoint[MODEL_CLASS_KEY])
    model = model_class(**{**model_hyperparameters(checkpoint), **overrides})
    model.on_load_checkpoint(checkpoint)  # what Lightning's load_from_checkpoint calls: format and class checks
    model.load_state_dict(checkpoint["state_dict"])
    return model


WEIGHTS_KEYS = ("state_dict", "optimizer_states", "lr_schedulers")  # the bulk of a checkpoint: not in LoadedRun.saved


def load_run(path: str | Path, map_location: Any = "cpu", **model_overrides: Any) -> LoadedRun:
    """A run folder or checkpoint -> its model (weights loaded, eval mode), its DataModule and its ``run.json``,
    from one read of the checkpoint. ``model_overrides`` replace hyperparameters that do not change the
    weights (e.g. a PixelCNN's ``sampler``)."""
    checkpoint_path, folder = resolve_run(path)
    return run_from_checkpoint(read_checkpoint(checkpoint_path), checkpoint_path, folder, map_location,
                               **model_overrides)


def run_from_checkpoint(checkpoint: dict[str, Any], checkpoint_path: Path, folder: Path | None = None,
                        map_location: Any = "cpu", **model_overrides: Any) -> LoadedRun:
    """``load_run`` from a checkpoint dict already read (and checked) by the caller."""
    data = checkpoint.get(DATAMODULE_KEY)
    if checkpoint.get(MODEL_CLASS_KEY) is None or data is None:
        raise CheckpointError(f"{checkpoint_path} does not record its model class and data; it was not "
                              "written by `python -m lightning_gen fit`")
    model = model_from_checkpoint(checkpoint, **model_overrides)
    datamodule = import_class(data["class_path"])(**data["init_args"])
    record_path = folder / RUN_RECORD if folder is not None else None
    record = json.loads(record_path.read_text()) if record_path is not None and record_path.is_file() else {}
    saved = {key: value for key, value in checkpoint.items() if key not in WEIGHTS_KEYS}
    return LoadedRun(checkpoint_path, folder, model.to(map_location).eval(), datamodule, record, saved)


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


