"""Learning rates that run down with the training budget.

When training stops at a fixed budget rather than at convergence, a learning rate that falls linearly to
zero by the end of *that* budget reaches a lower loss than a constant rate or a schedule sized for a
longer run (Li, Yumer & Ramanan, "Budgeted Training: Rethinking Deep Neural Network Training Under
Resource Constraints", ICLR 2020). The budget is whichever limit of the Trainer stops it first:
``max_time`` (Lightning's ``Timer``), ``max_steps`` or ``max_epochs``; the schedule follows the share of
it already spent.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, Timer

from lightning_gen.errors import ConfigValueError, check_range

BASE_LR = "budget_base_lr"  # kept in each param group, so a resumed run (optimizer state) decays the same rates


def budget_spent(trainer: pl.Trainer, batch_idx: int) -> float | None:
    """The share of the Trainer's training budget spent before batch ``batch_idx`` of this epoch: the
    largest of elapsed/``max_time``, ``global_step``/``max_steps`` and epochs/``max_epochs`` (``None``
    when the Trainer has no limit). Under ``max_time`` it depends on the machine's speed, as the number of
    steps a timed run takes already does."""
    shares = []
    for timer in (callback for callback in trainer.callbacks if isinstance(callback, Timer)):
        remaining = timer.time_remaining()
        if remaining is not None:
            elapsed = timer.time_elapsed()
            shares.append(elapsed / max(elapsed + remaining, 1e-9))
    if trainer.max_steps is not None and trainer.max_steps > 0:
        shares.append(trainer.global_step / trainer.max_steps)
    batches = trainer.num_training_batches
    if trainer.max_epochs is not None and trainer.max_epochs > 0 and math.isfinite(batches) and batches > 0:
        shares.append((trainer.current_epoch + batch_idx / batches) / trainer.max_epochs)
    return min(max(shares), 1.0) if shares else None


def decay_factor(spent: float, decay_from: float, final_factor: float) -> float:
    """1 until ``decay_from`` of the budget is spent, then linearly down to ``final_factor`` at its end."""
    if spent <= decay_from:
        return 1.0
    return 1.0 - (1.0 - final_factor) * (spent - decay_from) / (1.0 - decay_from)


class BudgetLRDecay(Callback):
    """Scales every optimizer's learning rates before each training batch by
    ``decay_factor(budget spent)``: constant until ``decay_from`` of the budget, then linear down to
    ``final_factor`` times the configured rate. Replaces a learning-rate scheduler (a model with one is
    refused: the two would overwrite each other's rates).

    Args:
        decay_from: the share of the budget after which the rates start to fall, in [0, 1).
        final_factor: the share of each configured rate left at the end of the budget, in [0, 1].
    """

    def __init__(self, decay_from: float = 0.0, final_factor: float = 0.0):
        check_range(at_least=0, below=1, decay_from=decay_from)
        check_range(at_least=0, at_most=1, final_factor=final_factor)
        self.decay_from = decay_from
        self.final_factor = final_factor

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            raise ConfigValueError(
                "BudgetLRDecay sets the learning rates itself, but the model also has a learning-rate scheduler "
                "(the two would overwrite each other): remove the scheduler from the model's options, or the "
                "BudgetLRDecay callback from trainer.callbacks")
        if budget_spent(trainer, 0) is None:
            raise ConfigValueError(
                "BudgetLRDecay decays the learning rates over the training budget, but the Trainer has none: "
                "set trainer.max_time (e.g. 00:00:05:00), trainer.max_steps or trainer.max_epochs")
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault(BASE_LR, group["lr"])  # a resumed run's optimizer state already has it

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        factor = decay_factor(budget_spent(trainer, batch_idx), self.decay_from, self.final_factor)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group[BASE_LR] * factor
