"""Whether our own tqdm bars (sampling, real features, likelihood batches) are drawn: one switch, the
Trainer's progress bar (``--trainer.enable_progress_bar false`` turns every bar off). And Lightning's bar for
output that is not a terminal (a log file, CI): a line every few seconds, not a frame per batch."""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


def progress_enabled(trainer: pl.Trainer) -> bool:
    """Bars of a command that runs no Lightning loop (``sample``, ``evaluate``): shown when the Trainer has
    a progress bar, on process 0 only."""
    return trainer.progress_bar_callback is not None and trainer.is_global_zero


def inner_progress_enabled(trainer: pl.Trainer) -> bool:
    """Bars drawn inside Lightning's loop (evaluation callbacks during ``fit``/``test``): only under
    Lightning's tqdm bar, which they nest below. A ``RichProgressBar`` (or any other) redraws its live
    display over them and a tqdm line written into it garbles both, so there they stay off."""
    return progress_enabled(trainer) and isinstance(trainer.progress_bar_callback, TQDMProgressBar)


class ThrottledTqdm(Tqdm):
    """Lightning's tqdm bar, redrawn at most once every ``every`` seconds (tqdm's own clock, ``_time``).
    Lightning redraws its bar after every batch with an explicit ``refresh``, bypassing tqdm's
    ``mininterval``; into a file each redraw is one more carriage-return frame. Closing still writes the
    final frame."""

    every: float = 10.0

    def refresh(self, nolock: bool = False, lock_args=None) -> bool:
        now = self._time()
        if now - getattr(self, "_drawn_at", -math.inf) < self.every:
            return False
        self._drawn_at = now
        return super().refresh(nolock=nolock, lock_args=lock_args)


class LogFileProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose bars redraw at most every ``every_seconds``: what ``LightningGenTrainer`` uses
    in place of Lightning's default bar when standard output is not a terminal."""

    def __init__(self, every_seconds: float = 10.0) -> None:
        super().__init__()
        self.every_seconds = every_seconds

    def _throttled(self, bar: Tqdm) -> Tqdm:
        bar.__class__ = ThrottledTqdm  # the same bar, Lightning's arguments and all, with a throttled redraw
        bar.every = self.every_seconds
        return bar

    def init_sanity_tqdm(self) -> Tqdm:
        return self._throttled(super().init_sanity_tqdm())

    def init_train_tqdm(self) -> Tqdm:
        return self._throttled(super().init_train_tqdm())

    def init_validation_tqdm(self) -> Tqdm:
        return self._throttled(super().init_validation_tqdm())

    def init_test_tqdm(self) -> Tqdm:
        return self._throttled(super().init_test_tqdm())

    def init_predict_tqdm(self) -> Tqdm:
        return self._throttled(super().init_predict_tqdm())
