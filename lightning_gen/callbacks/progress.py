"""Whether our own tqdm bars (sampling, real features, likelihood batches) are drawn: one switch, the
Trainer's progress bar (``--trainer.enable_progress_bar false`` turns every bar off)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


def progress_enabled(trainer: pl.Trainer) -> bool:
    """Bars of a command that runs no Lightning loop (``sample``, ``evaluate``): shown when the Trainer has
    a progress bar, on process 0 only."""
    return trainer.progress_bar_callback is not None and trainer.is_global_zero


def inner_progress_enabled(trainer: pl.Trainer) -> bool:
    """Bars drawn inside Lightning's loop (evaluation callbacks during ``fit``/``test``): only under
    Lightning's tqdm bar, which they nest below. A ``RichProgressBar`` (or any other) redraws its live
    display over them and a tqdm line written into it garbles both, so there they stay off."""
    return progress_enabled(trainer) and isinstance(trainer.progress_bar_callback, TQDMProgressBar)
