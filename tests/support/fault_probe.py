"""Callbacks that the fault tests add to a `python -m lightning_gen fit` run
(the repository on PYTHONPATH, class paths `tests.support.fault_probe.*`)."""

from __future__ import annotations

import errno
from pathlib import Path

import lightning.pytorch as pl
import torch


class FillDiskAfterFirstEpoch(pl.Callback):
    """At the start of the second epoch, fill the disk of the current folder up to ``keep_bytes``."""

    def __init__(self, keep_bytes: int = 65536):
        self.keep_bytes = keep_bytes

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != 1:
            return
        block = b"\0" * 65536
        with open(Path.cwd() / "filler", "wb") as filler:
            try:
                while True:
                    filler.write(block)
                    filler.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
        # give back just enough for small files (logs, pictures), far too little for a checkpoint
        filler_path = Path.cwd() / "filler"
        with open(filler_path, "r+b") as filler:
            filler.truncate(max(filler_path.stat().st_size - self.keep_bytes, 0))


class PoisonWeights(pl.Callback):
    """Put a NaN into the model's first parameter before a chosen batch of a chosen epoch."""

    def __init__(self, epoch: int = 1, batch: int = 1):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")
