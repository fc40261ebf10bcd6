"""Where a run's files go, found without talking to the other processes.

``Trainer.log_dir`` broadcasts its answer from rank 0, a collective call: asked on rank 0 alone (where
every file is written under DDP) it waits for the other ranks, which are busy elsewhere, and either
hangs or pairs with an unrelated collective. ``run_folder`` applies the same rule locally.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


def run_folder(trainer: pl.Trainer) -> Path:
    """The first logger's version folder (CSV/TensorBoard), its save_dir (others), else default_root_dir."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = logger.log_dir if isinstance(logger, (CSVLogger, TensorBoardLogger)) else logger.save_dir
        if folder:
            return Path(folder)
    return Path(trainer.default_root_dir)
