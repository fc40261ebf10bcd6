"""The ``evaluate`` and ``sample`` subcommands, as methods LightningCLI turns into command-line options
(``EvaluateAndSample``, a base of ``LightningGenTrainer``), and what they need: loading a checkpoint's
weights, a scatter plot of points, and the help that lists only the Trainer options they use.

``python -m lightning_gen evaluate --ckpt_path X --metrics fid,nll_bpd --num_samples 5000`` and
``python -m lightning_gen sample --ckpt_path X --num_samples 64 --out DIR --seed 0`` work with or
without a config: without one, the model and data are rebuilt from what the checkpoint records.
"""

from __future__ import annotations

import argparse
import inspect
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image
from tqdm import tqdm

from lightning_gen.boundary import check_output_folder
from lightning_gen.callbacks.progress import progress_enabled
from lightning_gen.checkpoints import CheckpointFile, check_model_class
from lightning_gen.data.pixels import to_uint8_levels
from lightning_gen.errors import LightningGenError, check_range
from lightning_gen.metrics.finite import check_finite_samples
from lightning_gen.metrics.registry import EvaluationSettings, MetricResult, evaluate_model
from lightning_gen.metrics.results import format_table, write_metrics_json


def _load_weights(model, ckpt_path: str | None, command: str, given: CheckpointFile | None):
    """The weights of ``ckpt_path``, from the file the command line's boundary read (``given``) when it is that
    one; read here when the command comes from Python (``trainer.evaluate(model, ckpt_path=...)``)."""
    if not ckpt_path:
        raise LightningGenError(f"`{command}` needs a trained model: pass --ckpt_path path/to/checkpoint.ckpt")
    checkpoint = given if given is not None and given.is_of(ckpt_path) else CheckpointFile.read(ckpt_path)
    check_model_class(checkpoint.contents, type(model), ckpt_path)
    model.load_state_dict(checkpoint.contents["state_dict"])
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


class EvaluateAndSample:
    """The ``evaluate`` and ``sample`` commands of a Trainer (they use its device and progress setting)."""

    command_checkpoint: CheckpointFile | None = None  # the --ckpt_path file the CLI read at its boundary

    def evaluate(self, model, datamodule=None, ckpt_path: str | None = None, **settings) -> list[MetricResult]:
        """Evaluate a checkpoint with the metric registry; print a table, write metrics.json beside it.

        Args:
            ckpt_path: the checkpoint to evaluate.
            settings: the protocol, one option per field of ``EvaluationSettings`` (``--metrics fid,nll_bpd
                --num_samples 5000 --split test ...``) with its defaults; progress bars follow the Trainer's.
        """
        _load_weights(model, ckpt_path, "evaluate", self.command_checkpoint)
        protocol = replace(EvaluationSettings(**settings), progress=progress_enabled(self))
        check_output_folder(Path(ckpt_path).parent, "metrics.json is written beside --ckpt_path, in",
                            fix="evaluate a copy of the checkpoint in a writable folder")
        if datamodule is None:
            raise LightningGenError("`evaluate` needs the real data: pass --config or --data, "
                                    "or a checkpoint that records it")
        model.to(self.strategy.root_device)
        results = evaluate_model(model, datamodule, protocol, self.strategy.root_device)
        path = write_metrics_json(ckpt_path, results, protocol.for_model(model))
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
        _load_weights(model, ckpt_path, "sample", self.command_checkpoint)
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
