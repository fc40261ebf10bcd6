"""Shared by the fixed-budget benchmarks: stop a Lightning fit after a wall-clock budget of training."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class StopAfter(pl.Callback):
    """Counts training images and stops the fit once ``seconds`` of training have passed."""

    def __init__(self, seconds: float):
        self.budget, self.images, self.seconds, self._start = seconds, 0, 0.0, 0.0

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += len(batch[0])
        self.seconds = time.perf_counter() - self._start
        if self.seconds >= self.budget:
            trainer.should_stop = True
