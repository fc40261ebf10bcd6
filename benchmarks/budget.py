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


def train_plain(seconds: float, loader_factory, loss_of, optimizer) -> tuple[int, float]:
    """The hand-written baseline loop: epochs of ``loader_factory()`` until ``seconds`` have passed, each
    batch ``loss_of(x)`` -> zero_grad, backward, step. Returns (training images seen, seconds)."""
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x, _ in loader_factory():
            loss = loss_of(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += len(x)
            if time.perf_counter() - start >= seconds:
                break
    return images, time.perf_counter() - start
