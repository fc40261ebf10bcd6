"""``last.ckpt`` that always holds the newest state, whether or not the monitored metric improved.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when a top-k
checkpoint was written at the same step (``on_validation_end``/``on_train_epoch_end``: "only save last
checkpoint if a checkpoint was actually saved in this step"). A run whose final epochs do not improve
``val/elbo`` therefore ends with a ``last.ckpt`` from an earlier epoch, and ``--ckpt_path last``
silently resumes from there, dropping the later epochs. This subclass takes the same arguments and,
after Lightning's own saving, brings ``last.ckpt`` up to the current step when it is behind.

``LightningGenTrainer`` upgrades every stock ``ModelCheckpoint`` it is given to this class (it adds no state).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class CurrentLastModelCheckpoint(LightningModelCheckpoint):
    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._bring_last_up_to_date(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._bring_last_up_to_date(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # the final epochs may have had no validation (check_val_every_n_epoch > 1) or no improvement
        super().on_train_end(trainer, pl_module)
        self._bring_last_up_to_date(trainer)

    def _bring_last_up_to_date(self, trainer) -> None:
        # _should_skip_saving_checkpoint is true during sanity checks, fast_dev_run, outside fit, and
        # when something (top-k, or last itself) was already saved at this global step
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def keep_last_checkpoint_current(callbacks: list) -> None:
    """Give every stock ``ModelCheckpoint`` among ``callbacks`` the behaviour above, in place."""
    for callback in callbacks:
        if type(callback) is LightningModelCheckpoint:
            callback.__class__ = CurrentLastModelCheckpoint
