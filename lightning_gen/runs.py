"""A run's files: where they go (found without talking to the other processes), whether they can go there,
and what a finished fit leaves behind (``run.json`` and the closing summary).

``Trainer.log_dir`` broadcasts its answer from rank 0, a collective call: asked on rank 0 alone (where
every file is written under DDP) it waits for the other ranks, which are busy elsewhere, and either
hangs or pairs with an unrelated collective. ``run_folder`` applies the same rule locally.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import RunningStage

from lightning_gen.checkpoints import RUN_RECORD
from lightning_gen.errors import RunFolderError
from lightning_gen.files import atomic_write


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


def scalar_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}





def write_run_record(trainer, fit_seconds: float, diverged: str | None = None) -> None:
    """``<run folder>/run.json``: what ``compare`` needs that no logger keeps (wall time, processes).

    ``fit_seconds`` is this process's ``fit`` call, start-up included; ``train_seconds_total`` is the time in
    the training loop summed over every resume (Lightning's ``Timer`` keeps it in the checkpoints).
    ``diverged``: the message of the non-finite loss that stopped the fit, if one did."""
    folder = run_folder(trainer)
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    record = {"fit_seconds": round(fit_seconds, 2),
              "train_seconds_total": round(timer.time_elapsed(RunningStage.TRAINING), 2) if timer is not None else None,
              "epochs": trainer.current_epoch,
              "global_step": trainer.global_step, "processes": trainer.world_size,
              "resumed_from": str(trainer.ckpt_path) if trainer.ckpt_path else None,
              "model_class": f"{type(trainer.lightning_module).__module__}.{type(trainer.lightning_module).__name__}"}
    if diverged is not None:
        record["diverged"] = diverged
    atomic_write(folder / RUN_RECORD, lambda temporary: temporary.write_text(json.dumps(record, indent=1)))


def run_summary(trainer, metrics: dict[str, float]) -> str:
    """The closing lines of a run: where its files are and its final metrics."""
    folder = run_folder(trainer)
    lines = ["", f"run folder: {folder}"]
    if (folder / "config.yaml").is_file():
        lines.append(f"  config:      {folder / 'config.yaml'}")
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            score = callback.best_model_score
            score_text = f" ({callback.monitor}={float(score):.4f})" if score is not None else ""
            lines.append(f"  best ckpt:   {callback.best_model_path}{score_text}")
        if isinstance(callback, ModelCheckpoint) and (last := _last_checkpoint(callback)):
            lines.append(f"  last ckpt:   {last}")
    for name in ("metrics.csv",):
        if (folder / name).is_file():
            lines.append(f"  metrics:     {folder / name}")
    if (folder / "images").is_dir():
        lines.append(f"  pictures:    {folder / 'images'} ({len(list((folder / 'images').glob('*.png')))} PNG)")
    for callback in trainer.callbacks:
        share = callback.share_of_fit_time() if hasattr(callback, "share_of_fit_time") else None
        if share is not None:
            lines.append(f"  evaluation:  {callback.seconds_spent:.1f} s, {100 * share:.1f}% of the fit time")
    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith(("val/", "test/"))}
    if shown:
        lines.append("final metrics (nats per image unless _bpd = bits/dim):")
        lines += [f"  {key:<16} {value:.4f}" for key, value in shown.items()]
    return "\n".join(lines)


def _last_checkpoint(callback: ModelCheckpoint) -> str:
    # test_after_fit restores the callback's state from the best checkpoint, written when last_model_path was
    # still empty or older: the file on disk is the truth
    if callback.last_model_path:
        return callback.last_model_path
    saved = callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST) if callback.save_last else ""
    return saved if saved and Path(saved).is_file() else ""
