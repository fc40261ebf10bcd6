"""Evaluation the same for every model: ``val/<metric>`` during training, ``test/<metric>`` at test time,
from the metric registry."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_gen.callbacks.cadence import due_after_validation
from lightning_gen.callbacks.progress import inner_progress_enabled
from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.faults import kill_point
from lightning_gen.metrics.finite import NonFiniteSamplesError
from lightning_gen.metrics.registry import (
    METRICS,
    EvaluationSettings,
    check_model_supports,
    evaluate_model,
    result_names,
)
from lightning_gen.runs import run_folder, writing


class EvaluationCallback(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, compute ``metrics`` with ``evaluate_model`` and log
    them as ``val/<name>`` (e.g. ``val/fid_fmnist_clf``); at the end of every test epoch (``test``,
    ``fit --test_after_fit true``), compute them against the test split and log them as ``test/<name>``.
    Append each result with its stage and protocol to ``<run folder>/evaluation.jsonl``.

    Samples come from ``model.sample(n, generator)`` with one generator per process, so under DDP no two
    processes draw the same samples; real images come from the ``real_split`` (default: validation,
    so model selection never sees the test set), their features cached on disk. Samples with a NaN or inf
    (``metrics/finite.py``) are a logged failure, not a crash: a warning, NaN under each sample metric's name,
    a ``"failure"`` line per metric in ``evaluation.jsonl``; the likelihood metrics are still measured.

    Args:
        every_n_epochs: evaluate after every n-th validation epoch and after the last epoch's (never
            during the sanity check).
        real_split: the real images to compare with during validation (test always uses the test split).
        settings: the protocol, the fields of ``EvaluationSettings`` with its defaults (``metrics``,
            ``num_samples`` over all processes, ``max_real``, ``features``, ``kid_subsets``, ...); training-time
            configs name fewer samples and KID subsets than the defaults, to keep evaluation a small share of
            the budget.
    """

    def __init__(self, every_n_epochs: int = 1, real_split: str = "val", **settings):
        super().__init__()
        check_range(at_least=1, every_n_epochs=every_n_epochs)
        if "split" in settings:
            raise ConfigValueError("EvaluationCallback takes real_split (the real images of validation; test always "
                                   "uses the test split), not split")
        self.every_n_epochs = every_n_epochs
        self.settings = EvaluationSettings(**settings, split=real_split)
        self.seconds_spent = 0.0
        self._fit_started: float | None = None

    def setup(self, trainer, pl_module, stage):
        self.settings = self.settings.for_model(pl_module)  # no metrics named: the registry's default
        check_model_supports(pl_module, self.settings.metrics)  # a GAN asked for nll_bpd fails here, not hours later

    def on_fit_start(self, trainer, pl_module):
        self._fit_started = time.perf_counter()

    def share_of_fit_time(self) -> float | None:
        """Seconds spent evaluating / seconds since ``fit`` started."""
        if self._fit_started is None:
            return None
        return self.seconds_spent / max(time.perf_counter() - self._fit_started, 1e-9)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not due_after_validation(trainer, self.every_n_epochs):
            return
        start = time.perf_counter()
        self._evaluate(trainer, pl_module, "val", self.settings)
        self.seconds_spent += time.perf_counter() - start  # the fit-time share counts validation only

    def on_test_epoch_end(self, trainer, pl_module):
        self._evaluate(trainer, pl_module, "test", replace(self.settings, split="test"))

    def _evaluate(self, trainer, pl_module, stage: str, settings: EvaluationSettings) -> None:
        settings = replace(settings, progress=inner_progress_enabled(trainer))
        try:
            results = evaluate_model(pl_module, trainer.datamodule, settings, pl_module.device)
        except NonFiniteSamplesError as error:  # every process raises it: a failure to record, not a crash
            from_samples = [name for name in settings.metrics if METRICS[name].needs == "sample"]
            self._record_failure(trainer, pl_module, stage, replace(settings, metrics=from_samples), error)
            # the likelihood metrics need no samples: they are still measured
            others = [name for name in settings.metrics if name not in from_samples]
            results = evaluate_model(pl_module, trainer.datamodule, replace(settings, metrics=others),
                                     pl_module.device) if others else []
        kill_point("evaluation")
        for result in results:
            # every process computed the same synced value: the max over processes returns it exactly
            # (and tells Lightning the value is synced, rather than a per-process number)
            pl_module.log(f"{stage}/{result.name}", result.value, sync_dist=True, reduce_fx="max")
        self._append(trainer, stage, [result.to_dict() for result in results])

    def _record_failure(self, trainer, pl_module, stage: str, settings: EvaluationSettings,
                        error: NonFiniteSamplesError) -> None:
        """Non-finite samples: log NaN under the result names of the sample metrics (as a diverged loss is, so
        ``compare`` and early stopping see a failed run), warn with the error's one line, and keep training."""
        names = result_names(pl_module, settings, pl_module.device)
        rank_zero_warn(f"{stage} evaluation at epoch {trainer.current_epoch} refused the samples, its metrics are "
                       f"logged as NaN: {error}")
        for name in names:
            pl_module.log(f"{stage}/{name}", math.nan, sync_dist=True, reduce_fx="max")
        self._append(trainer, stage, [{"name": name, "value": None, "failure": str(error)} for name in names])

    def _append(self, trainer, stage: str, records: list[dict]) -> None:
        """Append ``records`` to the run's ``evaluation.jsonl`` (process 0), each with its stage, epoch and step."""
        if trainer.is_global_zero:
            folder = run_folder(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"stage": stage, "epoch": trainer.current_epoch, "step": trainer.global_step,
                                 **record}) for record in records]
            with writing(folder / "evaluation.jsonl", "evaluation log"), open(folder / "evaluation.jsonl", "a") as log:
                log.write("".join(line + "\n" for line in lines))  # one write: a crash leaves no partial line
