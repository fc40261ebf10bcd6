"""Shared by the benchmarks: wall-clock budgets and clocks for Lightning fits, the plain baseline loop and
its step, a printed table of ratios (the machine's description: machine_info.py; the hand-written
baselines: baselines.py)."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch


class StopAfter(pl.Callback):
    """Counts training images and stops the fit at the first batch end once ``seconds`` have passed.

    The clock starts when training starts, or, given ``started`` (a ``time.perf_counter()`` reading), at
    that moment: pass the moment the run was launched to count its start-up too (config parsing, data
    loading, the sanity check). ``seconds`` ends up as the clock's reading at the last training batch.
    """

    def __init__(self, seconds: float, started: float | None = None):
        self.budget, self.images, self.seconds = seconds, 0, 0.0
        self.in_batches = 0.0  # seconds inside training steps (batch start to batch end); the rest of
        # ``seconds`` went to start-up, fetching batches, validation, evaluation, pictures and checkpoints
        self._start, self._fixed_start = (started if started is not None else 0.0), started is not None
        self._batch_started = 0.0

    def on_train_start(self, trainer, pl_module):
        if not self._fixed_start:
            self._start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += len(batch[0])
        now = time.perf_counter()
        self.in_batches += now - self._batch_started
        self.seconds = now - self._start
        if self.seconds >= self.budget:
            trainer.should_stop = True


def batches_until(deadline: float, loader_factory):
    """Training batches, epoch after epoch of ``loader_factory()``, until ``time.perf_counter()`` passes
    ``deadline`` (checked after each batch's work, when the next one is asked for: like ``StopAfter``)."""
    while True:
        for batch in loader_factory():
            yield batch
            if time.perf_counter() >= deadline:
                return


def train_plain(seconds: float, loader_factory, loss_of, optimizer, started: float | None = None) -> tuple[int, float]:
    """The hand-written baseline loop: epochs of ``loader_factory()`` until ``seconds`` have passed, each
    batch ``loss_of(x)`` -> zero_grad, backward, step. The clock starts now or at ``started`` (a
    ``time.perf_counter()`` reading, to count the set-up before the loop). Returns (training images seen,
    seconds on the clock at the end)."""
    images, start = 0, time.perf_counter() if started is None else started
    for x, _ in batches_until(start + seconds, loader_factory):
        descend(optimizer, loss_of(x))
        images += len(x)
    return images, time.perf_counter() - start


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step of a hand-written loop on ``loss``: zero_grad, backward, step."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


class WarmupClock(pl.Callback):
    """Images/s of the training batches after ``warmup`` untimed ones, the start-up time (``called``, the
    moment the fit was called, to its first batch), the warm-up time (``called`` to the end of the untimed
    batches: a compiled network's compilation lands there), and a stop once ``seconds`` of timed training
    passed. On a GPU the clock synchronises where it is read, so queued kernels count where they run."""

    def __init__(self, called: float, warmup: int, seconds: float = float("inf")):
        self.called, self.warmup, self.seconds = called, warmup, seconds
        self.startup, self.warm_up_seconds, self.start, self.seen, self.images, self.rate = 0.0, 0.0, 0.0, 0, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == 0:
            self.startup = time.perf_counter() - self.called

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seen += 1
        if self.seen == self.warmup:
            self.start = time.perf_counter()
            self.warm_up_seconds = self.start - self.called
        elif self.seen > self.warmup:
            self.images += len(batch[0])
            elapsed = time.perf_counter() - self.start
            self.rate = self.images / elapsed
            if elapsed >= self.seconds:
                trainer.should_stop = True


def print_ratios(title: str, columns: tuple[str, str, str], rows: list[tuple[str, float]], reference: float,
                 value_format: str = ".0f") -> None:
    """``title``, then one aligned line per (name, value) with value / ``reference`` beside it."""
    width = max(len(columns[0]), *(len(name) for name, _ in rows)) + 2
    print(f"\n{title}")
    print(f"{columns[0]:<{width}} {columns[1]:>10} {columns[2]:>14}")
    for name, value in rows:
        print(f"{name:<{width}} {value:>10{value_format}} {value / reference:>13.2f}x")
