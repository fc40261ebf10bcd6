"""Shared by the benchmarks: wall-clock budgets and clocks for Lightning fits, the plain baseline loop."""

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


class WarmupClock(pl.Callback):
    """Images/s of the training batches after ``warmup`` untimed ones, the start-up time (``called``, the
    moment the fit was called, to its first batch), and a stop once ``seconds`` of timed training passed."""

    def __init__(self, called: float, warmup: int, seconds: float = float("inf")):
        self.called, self.warmup, self.seconds = called, warmup, seconds
        self.startup, self.start, self.seen, self.images, self.rate = 0.0, 0.0, 0, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == 0:
            self.startup = time.perf_counter() - self.called

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.warmup:
            self.start = time.perf_counter()
        elif self.seen > self.warmup:
            self.images += len(batch[0])
            elapsed = time.perf_counter() - self.start
            self.rate = self.images / elapsed
            if elapsed >= self.seconds:
                trainer.should_stop = True
