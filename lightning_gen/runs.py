"""Where a run's files go (found without talking to the other processes), and whether they can go there.

``Trainer.log_dir`` broadcasts its answer from rank 0, a collective call: asked on rank 0 alone (where
every file is written under DDP) it waits for the other ranks, which are busy elsewhere, and either
hangs or pairs with an unrelated collective. ``run_folder`` applies the same rule locally.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_gen.errors import RunFolderError


def run_folder(trainer: pl.Trainer) -> Path:
    """The first logger's version folder (CSV/TensorBoard), its save_dir (others), else default_root_dir."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = logger.log_dir if isinstance(logger, (CSVLogger, TensorBoardLogger)) else logger.save_dir
        if folder:
            return Path(folder)
    return Path(trainer.default_root_dir)


def checkpoint_space_needed(model: torch.nn.Module) -> int:
    """Bytes a run's checkpoint folder needs at most: three checkpoints at once (best, last and the one
    being written), each about three copies of the parameters (weights and Adam's two moments)."""
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 3 * 3 * state_bytes


def nearest_existing(folder: str | os.PathLike) -> Path:
    """``folder`` if it exists, else the nearest existing path above it (where it would be created)."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    return existing


def probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder`` (``OSError`` if that fails): permissions alone do not show a
    read-only disk."""
    descriptor, probe = tempfile.mkstemp(prefix=".lightning_gen_write_test_", dir=folder)
    os.close(descriptor)
    os.unlink(probe)


def check_writable(folder: Path, needed_bytes: int = 0) -> None:
    """Raise ``RunFolderError`` unless ``folder`` (or the folder it will be created in) takes files and has
    ``needed_bytes`` free."""
    existing = nearest_existing(folder)
    fix = ("point --trainer.default_root_dir and the logger's save_dir (e.g. "
           "--trainer.logger.init_args.save_dir) at a writable folder with enough space")
    if not existing.is_dir():
        raise RunFolderError(f"run folder {folder} cannot be created: {existing} is a file, not a folder; {fix}")
    try:
        probe_write(existing)
    except OSError as error:
        raise RunFolderError(f"run folder {folder} cannot be written ({existing}: {error.strerror}); {fix}") from None
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise RunFolderError(
            f"run folder {folder} is on a disk with {free / 2**20:.1f} MiB free; this model's checkpoints need "
            f"about {needed_bytes / 2**20:.1f} MiB. Free some space, or {fix}"
        )


def newest_last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The newest ``last*.ckpt`` of this experiment: in its checkpoint folders and in every version folder
    of its logger (a resumed run writes to a new version folder, so its predecessor's files are there)."""
    candidates: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            candidates += Path(callback.dirpath).glob("last*.ckpt")
    for logger in trainer.loggers:
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            candidates += Path(logger.root_dir).glob("version_*/checkpoints/last*.ckpt")
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


@contextlib.contextmanager
def writing(path: Path, what: str = "file"):
    """Turn a failed write of a run's file (full disk, read-only folder) into one message naming it."""
    try:
        yield
    except OSError as error:
        raise RunFolderError(
            f"cannot write {what} {path} ({error.strerror or error}). Files already written are unchanged; "
            "free disk space or make the folder writable, or point --trainer.default_root_dir and the logger's "
            "save_dir at another folder; then resume with --ckpt_path last."
        ) from error
