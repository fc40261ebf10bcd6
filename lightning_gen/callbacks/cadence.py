"""When an every-n-epochs callback acts at the end of a validation epoch."""

from __future__ import annotations

import lightning.pytorch as pl


def due_after_validation(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """After every ``every_n_epochs``-th validation epoch, and after the validation of the fit's last epoch
    (``max_epochs``), so a run shorter than the cadence still ends with pictures and metrics of its final
    model; never during the sanity check."""
    if trainer.sanity_checking:
        return False
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last
