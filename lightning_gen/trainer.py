"""``LightningGenTrainer``: Lightning's Trainer with lightning-gen's run policy, plus the ``evaluate`` and
``sample`` subcommands (``commands.py``).

The run policy is what every run gets, built from Python as from ``python -m lightning_gen``: checkpoint files
that appear whole or not at all (``AtomicCheckpointIO``), a stop on SIGTERM or Ctrl-C after the running step
with a checkpoint of it (``GracefulStop``), a ``last.ckpt`` that always holds the newest state
(``CurrentLastModelCheckpoint``), DDP that detects unused parameters for a model trained in phases, checks of
the run folder before any training time is spent, ``ckpt_path="last"`` that finds the newest ``last.ckpt`` of
the experiment, ``run.json`` after ``fit`` and a closing summary after ``fit``, ``validate`` and ``test``.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info

from lightning_gen.callbacks.checkpoint import keep_last_checkpoint_current
from lightning_gen.callbacks.progress import LogFileProgressBar
from lightning_gen.callbacks.stop import GracefulStop
from lightning_gen.checkpoints import AtomicCheckpointIO
from lightning_gen.commands import EvaluateAndSample
from lightning_gen.errors import DivergenceError, check_range
from lightning_gen.runs import (
    check_writable,
    checkpoint_space_needed,
    newest_last_checkpoint,
    run_folder,
    run_summary,
    scalar_metrics,
    write_run_record,
)


def _given(arguments: dict, *names: str) -> dict:
    """The numbers among ``arguments[names]`` (``val_check_interval`` may also be a duration)."""
    return {name: arguments[name] for name in names
            if isinstance(arguments.get(name), (int, float)) and not isinstance(arguments[name], bool)}


def _then_summary(lightning_method):
    """``lightning_method`` (Lightning's ``validate`` or ``test``), then the closing summary of what it measured."""

    @functools.wraps(lightning_method)
    def run(self, *args, **kwargs):
        return self._summarised(lightning_method(self, *args, **kwargs))

    return run


class LightningGenTrainer(EvaluateAndSample, Trainer):
    def __init__(self, **kwargs):
        # counts Lightning takes without a check and then divides by (or silently ignores)
        check_range(at_least=1, **_given(kwargs, "check_val_every_n_epoch", "accumulate_grad_batches",
                                         "log_every_n_steps"))
        check_range(above=0, **_given(kwargs, "val_check_interval"))  # a number of batches or a share of them
        check_range(at_least=-1, **_given(kwargs, "num_sanity_val_steps"))  # -1: the whole validation set
        super().__init__(**kwargs)
        self._install_run_policy()

    def _install_run_policy(self) -> None:
        # a crash or a full disk never leaves a half-written .ckpt (unless the user chose their own I/O)
        if type(self.strategy.checkpoint_io) is TorchCheckpointIO:
            self.strategy.checkpoint_io = AtomicCheckpointIO()
        if not any(isinstance(callback, GracefulStop) for callback in self.callbacks):
            self.callbacks.append(GracefulStop())
        if not any(isinstance(callback, Timer) for callback in self.callbacks):
            self.callbacks.append(Timer())  # no limit: it keeps the training time in checkpoints, for run.json
        keep_last_checkpoint_current(self.callbacks)
        if not sys.stdout.isatty():  # a log file: Lightning's default bar would write a frame per batch
            self.callbacks[:] = [LogFileProgressBar() if type(callback) is TQDMProgressBar else callback
                                 for callback in self.callbacks]
        self._metrics_of_last_fit: dict[str, float] = {}

    def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None,
            weights_only=None) -> None:
        """Lightning's ``fit`` inside the run policy: checks before it, ``run.json`` and a summary after it.

        Args:
            ckpt_path: a checkpoint to resume from; ``last`` resumes from the newest ``last.ckpt`` of this
                experiment (in any version folder of its logger), or starts afresh when there is none.
            weights_only: passed to ``torch.load`` when the checkpoint is read (Lightning's default when None).
        """
        self.adapt_strategy(model)
        # a read-only or full run folder fails here, before any training time is spent
        folders = {run_folder(self)} | {Path(callback.dirpath) for callback in self.checkpoint_callbacks
                                        if isinstance(callback, ModelCheckpoint) and callback.dirpath}
        for folder in folders:
            check_writable(folder, needed_bytes=checkpoint_space_needed(model))
        if ckpt_path == "last":  # Lightning looks in this run's new version folder only, where there is none
            found = newest_last_checkpoint(self)
            if found is not None:
                rank_zero_info(f"ckpt_path last: resuming from {found}")
                ckpt_path = str(found)
        started = time.perf_counter()
        try:
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)
        except DivergenceError as error:  # the run's record says why it stopped (compare counts it as failed)
            if self.is_global_zero:
                write_run_record(self, time.perf_counter() - started, diverged=str(error))
            raise
        self._metrics_of_last_fit = scalar_metrics(self.callback_metrics)
        if self.is_global_zero:
            write_run_record(self, time.perf_counter() - started)
            print(run_summary(self, self._metrics_of_last_fit), flush=True)

    # Lightning's ``validate`` and ``test`` (their signatures and docstrings, which LightningCLI reads for the
    # options), then the closing summary
    validate = _then_summary(Trainer.validate)
    test = _then_summary(Trainer.test)

    def _summarised(self, results):
        """Print the closing summary after ``validate`` or ``test``: what they measured, over the metrics of
        an earlier ``fit`` of this Trainer (``fit --test_after_fit`` shows both)."""
        if self.is_global_zero:
            measured = scalar_metrics(self.callback_metrics)
            print(run_summary(self, {**self._metrics_of_last_fit, **measured}), flush=True)
        return results

    def adapt_strategy(self, model) -> None:
        """``strategy="ddp"`` works for every model: a model whose training phases each reach only part of its
        parameters (the GAN: D's step leaves G without gradients and vice versa) declares
        ``ddp_find_unused_parameters = True`` and gets DDP's unused-parameter detection, unless the strategy
        was given that setting explicitly."""
        wants = getattr(model, "ddp_find_unused_parameters", False)
        # DDPStrategy has no public setter; its keyword arguments reach DistributedDataParallel at setup
        ddp_kwargs = self.strategy._ddp_kwargs if isinstance(self.strategy, DDPStrategy) else None
        if wants and ddp_kwargs is not None and "find_unused_parameters" not in ddp_kwargs:
            ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info(f"{type(model).__name__} trains its parameters in separate phases: DDP detects "
                           "unused parameters (as strategy ddp_find_unused_parameters_true)")
