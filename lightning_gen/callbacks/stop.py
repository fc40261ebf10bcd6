"""SIGTERM and Ctrl-C stop ``fit`` at the next batch boundary with a checkpoint to resume from.

A scheduler (SLURM, Kubernetes, a laptop's shutdown) sends SIGTERM and waits a little before SIGKILL;
a person presses Ctrl-C. Either way the run should end with a checkpoint of the state after a whole
training step, never one taken half-way through an optimizer update. This callback notes the signal
(Lightning already notes SIGTERM as ``trainer.received_sigterm``; Ctrl-C is ours to catch), lets the
running step finish, saves ``last.ckpt`` in the run's checkpoint folder (which ``--ckpt_path last``
then picks, being the newest) and stops with exit code 128 + signal (143, 130). A second Ctrl-C
stops at once, without saving.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_gen.errors import TrainingStopped
from lightning_gen.runs import run_folder


class GracefulStop(pl.Callback):
    # what the launcher prints when Lightning's own SIGTERM stop (a bare SystemExit) ends the process
    last_stop_message: str | None = None

    def __init__(self):
        self._ctrl_c = False
        self._previous_handler = None
        self._saved_path: Path | None = None

    # --- noticing the signal ----------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def on_fit_end(self, trainer, pl_module):
        self._restore_handler()

    def _on_ctrl_c(self, signum, frame):
        if self._ctrl_c:  # the second Ctrl-C: the user does not want to wait
            self._restore_handler()
            raise KeyboardInterrupt
        self._ctrl_c = True
        print("\nCtrl-C: stopping after this training step with a checkpoint (press Ctrl-C again to stop "
              "now, without one)", flush=True)

    def _restore_handler(self):
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _requested_signal(self, trainer) -> int | None:
        if self._ctrl_c:
            return signal.SIGINT
        return signal.SIGTERM if trainer.received_sigterm else None

    # --- stopping ---------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        requested = self._requested_signal(trainer)
        if trainer.world_size > 1:  # every process must stop at the same step: saving is collective
            stop = trainer.strategy.reduce_boolean_decision(requested is not None, all=False)
            requested = requested or (signal.SIGTERM if stop else None)
        if requested is not None:
            self._save_and_stop(trainer, requested)

    def on_exception(self, trainer, pl_module, exception):
        self._restore_handler()
        # Lightning stops on SIGTERM by itself at the end of an epoch or inside validation; the training
        # state is whole there too, so save before the process ends
        if isinstance(exception, SIGTERMException) and self._saved_path is None:
            GracefulStop.last_stop_message = _stop_message(trainer, signal.SIGTERM, self._save(trainer))

    def _save(self, trainer) -> Path:
        folder = _checkpoint_folder(trainer)
        self._saved_path = folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(self._saved_path)
        return self._saved_path

    def _save_and_stop(self, trainer, signal_number: int):
        path = self._save(trainer)
        rank_zero_info(f"{signal.Signals(signal_number).name}: saved {path}")
        raise TrainingStopped(_stop_message(trainer, signal_number, path), signal_number)


def _stop_message(trainer, signal_number: int, path: Path) -> str:
    return (f"stopped by {signal.Signals(signal_number).name} at epoch {trainer.current_epoch}, global step "
            f"{trainer.global_step}; the checkpoint {path} holds this state. Resume with the same command plus "
            f"--ckpt_path {path} (or --ckpt_path last).")


def _checkpoint_folder(trainer) -> Path:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return run_folder(trainer) / "checkpoints"
