"""Sample grids, reconstructions and latent interpolations as pictures, for any logger.

Every picture is written as a PNG under ``<run folder>/images/`` (the CSV logger has no images),
and also handed to each logger that can show images: ``log_image`` (W&B) or
``experiment.add_image`` (TensorBoard).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lightning_gen.callbacks.cadence import due_after_validation
from lightning_gen.data.base import batch_images
from lightning_gen.errors import check_range
from lightning_gen.faults import kill_point
from lightning_gen.files import atomic_write
from lightning_gen.models.base import has_surface
from lightning_gen.runs import run_folder, writing


def log_picture(trainer: pl.Trainer, key: str, images: Tensor, nrow: int) -> Path:
    """Write ``images`` ``[N, C, H, W]`` in [0, 1] as one grid PNG and send it to every image-capable logger."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    path = run_folder(trainer) / "images" / f"{key.replace('/', '_')}_epoch{trainer.current_epoch:04d}.png"
    with writing(path, "picture"):  # whole or absent: a full disk or a crash leaves no truncated PNG
        atomic_write(path, lambda partial: save_image(grid, partial, format="png"))
    # the x-position Lightning logs scalars at: batches that stepped, not global_step (which a GAN
    # advances once per optimizer, i.e. twice or more per batch)
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    for logger in trainer.loggers:
        if callable(getattr(logger, "log_image", None)):  # W&B
            logger.log_image(key=key, images=[str(path)], step=step)  # the PNG: wandb.Image reads arrays as 0..255
        elif callable(getattr(getattr(logger, "experiment", None), "add_image", None)):  # TensorBoard
            logger.experiment.add_image(key, grid, global_step=step)
    return path


class PictureLogger(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, after the last epoch's validation, and once after testing, log:

    - ``<stage>/samples``: ``num_samples`` draws of ``model.sample`` with a fixed seed, so grids of
      successive epochs show the same latent draws;
    - ``<stage>/reconstructions``: held-out inputs (top row) above their reconstructions (bottom row);
    - ``<stage>/interpolations``: one row per pair of held-out images, decoding
      z = (1 - t) z_a + t z_b for ``interpolation_steps`` values of t in [0, 1], between the two inputs.

    Held-out images are the first ones of the validation set during ``fit``/``validate`` and of the
    test set during ``test``. Reconstructions and interpolations need ``encode``/``decode``; a model
    without them gets only samples.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 64,
        num_reconstructions: int = 8,
        num_interpolations: int = 4,
        interpolation_steps: int = 8,
        seed: int = 0,
    ):
        super().__init__()
        check_range(at_least=1, every_n_epochs=every_n_epochs)
        self.every_n_epochs = every_n_epochs
        self.num_samples, self.num_reconstructions = num_samples, num_reconstructions
        self.num_interpolations, self.interpolation_steps = num_interpolations, interpolation_steps
        self.seed = seed
        self._held_out: Tensor | None = None
        self.written: list[Path] = []

    def _keep_first_batch(self, batch, batch_idx: int, dataloader_idx: int) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            x = batch_images(batch)
            self._held_out = x[: max(self.num_reconstructions, 2 * self.num_interpolations)].detach()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep_first_batch(batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep_first_batch(batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not due_after_validation(trainer, self.every_n_epochs):
            return
        self.log_pictures(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self.log_pictures(trainer, pl_module, "test")

    @torch.no_grad()
    def log_pictures(self, trainer: pl.Trainer, model: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero or len(getattr(model, "data_shape", ())) != 3:
            return  # one writer under DDP; non-image data (toy 2-D points) has its own plots
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=model.device).manual_seed(self.seed)
        held_out = None if self._held_out is None else self._held_out.to(model.device)
        grids = picture_grids(model, held_out, generator, self.num_samples, self.num_reconstructions,
                              self.num_interpolations, self.interpolation_steps)
        for kind, (images, nrow) in grids.items():
            self.written.append(log_picture(trainer, f"{stage}/{kind}", images, nrow))
            kill_point("pictures")
        model.train(was_training)


@torch.no_grad()
def picture_grids(model, held_out: Tensor | None, generator: torch.Generator, num_samples: int = 64,
                  num_reconstructions: int = 8, num_interpolations: int = 4,
                  interpolation_steps: int = 8) -> dict[str, tuple[Tensor, int]]:
    """The pictures a model can show, as ``{kind: (images [N, C, H, W] in [0, 1], images per row)}``:
    ``samples`` (any model with ``sample``; a VAE that samples its posterior mixture also shows
    ``prior_samples``, the same decoder at z ~ N(0, I)), ``reconstructions`` and ``interpolations`` (models that can
    ``encode`` and ``decode``; from ``held_out`` images). Shared by the callback and ``compare``."""
    grids = {}
    if num_samples and has_surface(model, "sample"):
        grids["samples"] = (model.sample(num_samples, generator=generator), 8)
        if getattr(model, "sample_latents", "prior") != "prior":  # a VAE sampling its posterior mixture
            grids["prior_samples"] = (model.sample_prior(num_samples, generator=generator), 8)  # the same decoder
    if held_out is None or not (has_surface(model, "encode") and has_surface(model, "decode")):
        return grids
    if num_reconstructions:
        inputs = held_out[:num_reconstructions]
        outputs = model.decode(model.encode(model.prepare_input(inputs, generator)))
        grids["reconstructions"] = (torch.cat([inputs, outputs]), len(inputs))
    pairs = min(num_interpolations, len(held_out) // 2)
    if pairs and interpolation_steps >= 2:
        a, b = held_out[:pairs], held_out[pairs: 2 * pairs]
        z_a = model.encode(model.prepare_input(a, generator))
        z_b = model.encode(model.prepare_input(b, generator))
        t = torch.linspace(0, 1, interpolation_steps, device=z_a.device).view(1, -1, 1)  # (1, T, 1)
        z = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)  # (P, T, d)
        decoded = model.decode(z.flatten(0, 1)).view(pairs, interpolation_steps, *a.shape[1:])
        rows = torch.cat([a.unsqueeze(1), decoded, b.unsqueeze(1)], dim=1)  # (P, T + 2, C, H, W)
        grids["interpolations"] = (rows.flatten(0, 1), interpolation_steps + 2)
    return grids
