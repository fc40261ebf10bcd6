"""``LightningGenTrainer``: Lightning's Trainer with lightning-gen's run policy, plus the ``evaluate`` and
``sample`` subcommands.

The run policy is what every run gets, built from Python as from ``python -m lightning_gen``: checkpoint files
that appear whole or not at all (``AtomicCheckpointIO``), a stop on SIGTERM or Ctrl-C after the running step
with a checkpoint of it (``GracefulStop``), a ``last.ckpt`` that always holds the newest state
(``CurrentLastModelCheckpoint``), DDP that detects unused parameters for a model trained in phases, checks of
the run folder before any training time is spent, ``ckpt_path="last"`` that finds the newest ``last.ckpt`` of
the experiment, ``run.json`` after ``fit`` and a closing summary after ``fit``, ``validate`` and ``test``.

LightningCLI turns each method's arguments into command-line options, so
``python -m lightning_gen evaluate --ckpt_path X --metrics fid,nll_bpd --num_samples 5000`` and
``python -m lightning_gen sample --ckpt_path X --num_samples 64 --out DIR --seed 0`` work with or
without a config: without one, the model and data are rebuilt from what the checkpoint records.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torchvision.utils import save_image
from tqdm import tqdm

from lightning_gen.boundary import check_output_folder
from lightning_gen.callbacks.checkpoint import keep_last_checkpoint_current
from lightning_gen.callbacks.progress import LogFileProgressBar, progress_enabled
from lightning_gen.callbacks.stop import GracefulStop
from lightning_gen.checkpoints import AtomicCheckpointIO, check_model_class, read_checkpoint
from lightning_gen.data.pixels import to_uint8_levels
from lightning_gen.errors import DivergenceError, LightningGenError, check_range
from lightning_gen.metrics.finite import check_finite_samples
from lightning_gen.metrics.registry import (
    SAMPLE_METRICS,
    EvaluationSettings,
    MetricResult,
    evaluate_model,
    parse_metric_names,
    supported_metrics,
)
from lightning_gen.metrics.results import format_table, write_metrics_json
from lightning_gen.runs import (
    check_writable,
    checkpoint_space_needed,
    newest_last_checkpoint,
    run_folder,
    run_summary,
    scalar_metrics,
    write_run_record,
)


def _load_weights(model, ckpt_path: str | None, command: str):
    if not ckpt_path:
        raise LightningGenError(f"`{command}` needs a trained model: pass --ckpt_path path/to/checkpoint.ckpt")
    checkpoint = read_checkpoint(ckpt_path)
    check_model_class(checkpoint, type(model), ckpt_path)
    model.load_state_dict(checkpoint["state_dict"])
    return model


def save_scatter(points: torch.Tensor, path: Path) -> None:
    """A scatter plot of the first two coordinates of ``points`` ``[N, D]``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 4))
    axes.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
    axes.set_aspect("equal")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


GRID_SAMPLES = 64  # samples.png shows this many; samples.npz holds all
# what `evaluate` and `sample` use of the Trainer: its device, and whether they draw progress bars
SHOWN_TRAINER_OPTIONS = {"trainer.accelerator", "trainer.devices", "trainer.enable_progress_bar"}


def hide_unused_options(parser) -> None:
    """``evaluate --help``/``sample --help`` list only the Trainer options they use. The others stay
    accepted (a fit config names them) and ignored."""
    for action in parser._actions:
        if (action.dest.startswith("trainer.") and action.dest not in SHOWN_TRAINER_OPTIONS
                or action.dest == "test_after_fit"):
            action.help = argparse.SUPPRESS
    for group in parser._action_groups:
        if any(action.dest in SHOWN_TRAINER_OPTIONS for action in group._group_actions):
            group.title = "The Trainer options this command uses (the others are accepted, e.g. from a fit config)"


def _given(arguments: dict, *names: str) -> dict:
    """The numbers among ``arguments[names]`` (``val_check_interval`` may also be a duration)."""
    return {name: arguments[name] for name in names
            if isinstance(arguments.get(name), (int, float)) and not isinstance(arguments[name], bool)}


class LightningGenTrainer(Trainer):
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

    def validate(self, model=None, dataloaders=None, ckpt_path=None, verbose: bool = True, datamodule=None,
                 weights_only=None):
        """Lightning's ``validate``, then the closing summary.

        Args:
            ckpt_path: the checkpoint to validate (``best``, ``last``, or a path).
            verbose: print Lightning's table of results.
            weights_only: passed to ``torch.load`` when the checkpoint is read (Lightning's default when None).
        """
        return self._summarised(super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only))

    def test(self, model=None, dataloaders=None, ckpt_path=None, verbose: bool = True, datamodule=None,
             weights_only=None):
        """Lightning's ``test``, then the closing summary.

        Args:
            ckpt_path: the checkpoint to test (``best``, ``last``, or a path).
            verbose: print Lightning's table of results.
            weights_only: passed to ``torch.load`` when the checkpoint is read (Lightning's default when None).
        """
        return self._summarised(super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only))

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

    def evaluate(
        self,
        model,
        datamodule=None,
        ckpt_path: str | None = None,
        metrics: str | None = None,
        num_samples: int = 10_000,
        split: str = "test",
        max_real: int | None = None,
        features: str | None = None,
        features_weights: str | None = None,
        seed: int = 0,
        batch_size: int = 500,
        importance_samples: int | None = None,
    ) -> list[MetricResult]:
        """Evaluate a checkpoint with the metric registry; print a table, write metrics.json beside it.

        Args:
            ckpt_path: the checkpoint to evaluate.
            metrics: comma-separated names (fid, kid, precision_recall, nll_bpd, elbo); default: the
                sample metrics, plus nll_bpd when the model has a likelihood.
            num_samples: generated samples for fid/kid/precision_recall.
            split: real split to compare with (train, val or test).
            max_real: at most this many real images (default: the whole split).
            features: feature extractor (inception, fmnist_clf or a class path); default by data shape.
            features_weights: weights file for the feature extractor (e.g. Inception offline).
            seed: seed of the sample generator (and of KID's subsets).
            batch_size: images per sampling / feature batch.
            importance_samples: k of the IWAE bound behind nll_bpd (latent-variable models; default: the
                model's ``test_importance_samples``).
        """
        _load_weights(model, ckpt_path, "evaluate")
        check_range(at_least=1, **{"--batch_size": batch_size, "--max_real": max_real,
                                   "--importance_samples": importance_samples})
        check_output_folder(Path(ckpt_path).parent, "metrics.json is written beside --ckpt_path, in",
                            fix="evaluate a copy of the checkpoint in a writable folder")
        if datamodule is None:
            raise LightningGenError("`evaluate` needs the real data: pass --config or --data, "
                                    "or a checkpoint that records it")
        if metrics is None and len(model.data_shape) == 1:  # points of a toy mixture: no image features
            names = ["mode_coverage"]
        elif metrics is None:
            names = supported_metrics(model, [*SAMPLE_METRICS, "nll_bpd"])
        else:
            names = parse_metric_names(metrics)
        settings = EvaluationSettings(metrics=names, num_samples=num_samples, split=split, max_real=max_real,
                                      features=features, features_weights=features_weights, seed=seed,
                                      batch_size=batch_size, importance_samples=importance_samples,
                                      progress=progress_enabled(self))
        model.to(self.strategy.root_device)
        results = evaluate_model(model, datamodule, settings, self.strategy.root_device)
        path = write_metrics_json(ckpt_path, results, settings)
        print(format_table(results))
        print(f"results with protocols -> {path}")
        return results

    @torch.no_grad()
    def sample(
        self,
        model,
        datamodule=None,
        ckpt_path: str | None = None,
        num_samples: int = 64,
        out: str = "samples",
        seed: int = 0,
        batch_size: int = 256,
    ) -> Path:
        """Draw samples from a checkpoint: a PNG grid and an .npz of uint8 images.

        Args:
            ckpt_path: the checkpoint to sample from.
            num_samples: how many samples.
            out: output folder; gets samples.npz (``images``: uint8, NCHW; all samples) and samples.png (a
                grid of the first 64).
            seed: seed of the sample generator; the same seed gives the same images.
            batch_size: samples per call of ``model.sample``.
        """
        _load_weights(model, ckpt_path, "sample")
        check_range(at_least=1, **{"--num_samples": num_samples, "--batch_size": batch_size})
        check_output_folder(out, "--out")
        device = self.strategy.root_device
        model.to(device).eval()
        generator = torch.Generator(device=device).manual_seed(seed)
        batches = []
        show = progress_enabled(self)  # --trainer.enable_progress_bar false: no bar at all
        # models that sample step by step (PixelCNN: row by row) show their own progress within a batch
        stepwise = {"progress": show} if "progress" in inspect.signature(model.sample).parameters else {}
        with tqdm(total=num_samples, desc="sampling", disable=not show) as bar:
            while sum(len(b) for b in batches) < num_samples:
                n = min(batch_size, num_samples - sum(len(b) for b in batches))
                batches.append(model.sample(n, generator=generator, **stepwise).cpu())
                bar.update(n)
        samples = torch.cat(batches)
        check_finite_samples(samples, f"sample --ckpt_path {ckpt_path}", fix="no file was written: the model "
                             "diverged or its sampler overflowed; sample an earlier checkpoint")
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        if samples.dim() == 4:
            np.savez_compressed(folder / "samples.npz", images=to_uint8_levels(samples).to(torch.uint8).numpy())
            shown = samples[:GRID_SAMPLES]
            save_image(shown, folder / "samples.png", nrow=max(1, int(math.sqrt(len(shown)))), padding=2,
                       pad_value=1.0)
            kind = "images: uint8, NCHW"
            picture = f"{folder / 'samples.png'} (the first {len(shown)})"
        else:  # points (toy 2-D data): their coordinates, and a scatter plot
            np.savez_compressed(folder / "samples.npz", points=samples.numpy())
            save_scatter(samples, folder / "samples.png")
            kind = f"points: float32, [N, {samples.shape[1]}]"
            picture = f"{folder / 'samples.png'} (all)"
        print(f"{len(samples)} samples (seed {seed}) -> {folder / 'samples.npz'} ({kind}) and {picture}")
        return folder
