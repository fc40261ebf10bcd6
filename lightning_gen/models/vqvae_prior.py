"""A PixelCNN prior over a frozen VQ-VAE's code grid: the second stage of van den Oord et al. 2017.

    p(z) = prod_t p(z_t | z_<t [, y])       z: the h x w grid of codes in raster order, K codes a cell
    sample: z ~ p(z), x = decode(z)          (a 7x7 grid: 49 steps of the cached sampler, then one decoding)

The network is the gated PixelCNN of ``nets/pixelcnn.py`` with one-hot codes as its K input channels and
K logits per cell (``losses.autoregressive.CategoricalCodes``); the code indices have no order, so a code
enters as its one-hot vector, never as a level. Class-conditional on the data's labels when it has them.

Likelihood. The prior's NLL of a code grid is exact (``code_log_likelihood``: nats per grid). For images
there is only a bound: the VQ-VAE's encoder is deterministic, so its posterior q(z | x) is a point mass
at z_q(x) and the ELBO of the generative model p(x) = sum_z p(z) p(x | z) is

    log p(x) >= log p(x | z_q(x)) + log p(z_q(x))        (KL(q || p) = -log p(z_q(x)): log q = 0)

true for every x (a sum of non-negative terms is at least one of them), tight when the model's posterior
p(z | x) puts all its mass on z_q(x). It is the ``elbo`` metric (``elbo_terms``), not ``nll_bpd``: the
model has no ``log_likelihood`` surface, so the registry refuses ``nll_bpd`` for it.

The frozen VQ-VAE is a submodule: its weights are saved in the prior's checkpoints, which therefore sample
and score on their own, wherever the VQ-VAE's checkpoint has gone since. The checkpoint's path and
SHA-256 are recorded (``vqvae_file``, ``vqvae_sha256``) as provenance, and resuming or testing a
prior with data encoded by another VQ-VAE file is refused.

Units: ``*/code_nll`` nats per grid, ``*/code_bpc`` bits per code (per cell of the grid).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightning_gen.checkpoints import model_hyperparameters
from lightning_gen.data.base import batch_images
from lightning_gen.errors import CheckpointError, ConfigValueError, check_range
from lightning_gen.losses.autoregressive import CategoricalCodes
from lightning_gen.models.autoencoder import EVAL_SEED
from lightning_gen.models.base import GenerativeModule
from lightning_gen.models.vqvae import VQVAE
from lightning_gen.nets.pixelcnn import GatedPixelCNN
from lightning_gen.samplers.autoregressive import check_autoregressive_sampler, draw_autoregressively


def bits_per_code(nats_per_grid: Tensor, cells: int) -> Tensor:
    return nats_per_grid / (cells * math.log(2))


class VQVAEPrior(GenerativeModule):
    """Gated PixelCNN prior over the code grid of a frozen VQ-VAE, trained by maximum likelihood of codes.

    Built from the data: with ``lightning_gen.data.VQCodesDataModule``, ``setup`` takes the VQ-VAE, K and
    the classes from it and records them in ``vqvae``, ``num_classes``, ``vqvae_file`` and
    ``vqvae_sha256``, which checkpoints keep, so that a checkpoint rebuilds the model by itself. Give them
    yourself only to build a model outside a Trainer (tests).

    Args:
        data_shape: (C, H, W) of the images, linked from the DataModule (the VQ-VAE's).
        hidden, layers, kernel_size: width, number of gated layers and kernel size of the PixelCNN.
        conditional: condition on the data's class labels when it has them.
        sampler: "fast" (cached activations, one cell per step) or "reference" (a full pass per cell).
        vqvae: the VQ-VAE's ``__init__`` arguments (set by ``setup``).
        num_classes: classes conditioned on (set by ``setup``; None: unconditional).
        vqvae_file, vqvae_sha256: where the VQ-VAE came from (set by ``setup``; provenance).
    """

    speed_samplers = ("reference",)  # compare measures it beside the default: the cost caching saves

    def __init__(
        self,
        data_shape: tuple[int, int, int] | None = None,
        hidden: int = 64,
        layers: int = 6,
        kernel_size: int = 3,
        conditional: bool = True,
        sampler: str = "fast",
        optimizer: OptimizerCallable = torch.optim.Adam,
        vqvae: dict[str, Any] | None = None,
        num_classes: int | None = None,
        vqvae_file: str | None = None,
        vqvae_sha256: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        check_autoregressive_sampler(sampler)
        check_range(at_least=1, hidden=hidden, layers=layers, num_classes=num_classes)
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        self.sampler, self.conditional = sampler, conditional
        self.optimizer_factory = optimizer
        self.vqvae: VQVAE | None = None
        self.net: GatedPixelCNN | None = None
        if vqvae is not None:
            self._build(vqvae, num_classes)

    def _build(self, vqvae_args: dict[str, Any], num_classes: int | None) -> None:
        """The frozen VQ-VAE (weights still to load) and the prior network over its K codes."""
        self.vqvae = VQVAE(**vqvae_args).requires_grad_(False).eval()
        if self.data_shape is not None and tuple(self.data_shape) != tuple(self.vqvae.data_shape):
            raise ConfigValueError(f"the data's images are {tuple(self.data_shape)} but the VQ-VAE's are "
                                   f"{tuple(self.vqvae.data_shape)}")
        self.data_shape = tuple(self.vqvae.data_shape)
        self.num_codes = self.vqvae.quantizer.num_codes  # K
        self.code_shape = tuple(self.vqvae.grid_shape)  # (h, w)
        self.num_classes = num_classes
        self.codes = CategoricalCodes(self.num_codes)
        # one-hot codes in, K logits out per cell; one channel group (a cell is one categorical draw)
        self.net = GatedPixelCNN((self.num_codes, *self.code_shape), self.num_codes, 1, self.hparams.hidden,
                                 self.hparams.layers, self.hparams.kernel_size, num_classes)

    def configure_optimizers(self):
        return self.optimizer_factory(self.net.parameters())  # the VQ-VAE stays frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vqvae is not None:
            self.vqvae.eval()
        return self

    def setup(self, stage: str) -> None:
        """Take the VQ-VAE, K and the classes from a ``VQCodesDataModule`` (and its weights: the codes the
        data holds are that VQ-VAE's). Runs before optimizers are made and a checkpoint is restored."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "require_vqvae"):
            if self.vqvae is None:
                raise ConfigValueError("VQVAEPrior trains on the code grids of a VQ-VAE: use "
                                       "lightning_gen.data.VQCodesDataModule with --data.init_args.vqvae_checkpoint")
            return
        datamodule.require_vqvae()
        num_classes = datamodule.num_classes if self.conditional else None
        if self.vqvae is None:
            self._build(datamodule.vqvae_hparams, num_classes)
        elif (_normalised(self.hparams.vqvae) != _normalised(datamodule.vqvae_hparams)
              or num_classes != self.num_classes):
            raise ConfigValueError(
                f"this prior was built for a VQ-VAE with {self.hparams.vqvae} and num_classes {self.num_classes}, "
                f"but the data's VQ-VAE ({datamodule.vqvae_checkpoint}) has {datamodule.vqvae_hparams} and its "
                f"data {num_classes} classes: leave model.init_args.vqvae and num_classes unset")
        self.vqvae.load_state_dict(datamodule.vqvae.state_dict())
        self.vqvae.to(self.device)
        self.hparams.update(vqvae=datamodule.vqvae_hparams, num_classes=num_classes,
                            vqvae_file=datamodule.vqvae_checkpoint, vqvae_sha256=datamodule.vqvae_sha256)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = model_hyperparameters(checkpoint).get("vqvae_sha256")
        current = self.hparams.get("vqvae_sha256")
        if saved and current and saved != current:
            raise CheckpointError(
                f"this prior was trained on the codes of the VQ-VAE checkpoint with SHA-256 {saved[:12]}…, but the "
                f"data now encodes with {self.hparams.vqvae_file} (SHA-256 {current[:12]}…): its codes mean "
                "other things. Point --data.init_args.vqvae_checkpoint at the VQ-VAE the prior was trained with.")

    # --- the code grid ---------------------------------------------------------------------------------
    def _one_hot(self, codes: Tensor) -> Tensor:
        """Codes ``[N, h, w]`` -> the network's input ``[N, K, h, w]`` (one-hot, in [0, 1])."""
        return F.one_hot(codes, self.num_codes).permute(0, 3, 1, 2).to(next(self.net.parameters()).dtype)

    def code_logits(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits ``[N, K, h, w]`` of p(z_t | z_<t [, y]) for every cell t of the grids ``codes`` ``[N, h, w]``."""
        return self.net(self._one_hot(codes), labels)

    def code_log_likelihood(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact log p(z [| y]) = sum_t log p(z_t | z_<t [, y]): ``[N]`` nats per grid, differentiable.

        A class-conditional prior without ``labels`` gives the marginal
        log p(z) = logsumexp_y log p(z | y) - log C under a uniform prior over its C classes.
        """
        if self.num_classes is None or labels is not None:
            return self.codes.log_prob(self.code_logits(codes, labels), codes)
        per_class = [self.code_log_likelihood(codes, torch.full((len(codes),), y, device=codes.device))
                     for y in range(self.num_classes)]
        return torch.logsumexp(torch.stack(per_class), dim=0) - math.log(self.num_classes)

    def encode_indices(self, x: Tensor) -> Tensor:
        """The frozen VQ-VAE's code grid ``[N, h, w]`` of ``x = prepare_input(images)``."""
        return self.vqvae.encode_indices(x)

    # --- the common surface (images) -------------------------------------------------------------------
    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.vqvae.prepare_input(images, generator)

    def encode(self, x: Tensor) -> Tensor:
        """The VQ-VAE's flat quantised code (reconstructions and interpolations in pictures)."""
        return self.vqvae.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.vqvae.decode(z)

    @property
    def latent_dim(self) -> int:
        return self.vqvae.latent_dim

    @torch.no_grad()
    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(log p(x | z_q(x)), KL(q || p) = -log p(z_q(x))), each ``[N]`` nats, for ``x = prepare_input(images)``:
        the ELBO of a deterministic encoder (module docstring). A class-conditional prior uses the marginal
        over a uniform class prior (no labels here, as for every model's likelihood)."""
        z_e = self.vqvae.encoder(x)
        codes = self.vqvae.quantizer.nearest(z_e)
        log_px_z = self.vqvae.likelihood.log_prob(self.vqvae.decoder(self.vqvae.quantizer.lookup(codes)), x)
        return log_px_z, -self.code_log_likelihood(codes)

    def likelihood_protocol(self) -> dict:
        return {"estimator": "ELBO of a deterministic encoder: log p(x | z_q(x)) + log p(z_q(x)), a lower bound "
                             "on log p(x) = log sum_z p(z) p(x | z); exact prior NLL of the code grid",
                "likelihood": f"VQ-VAE decoder {self.vqvae.likelihood.name}, PixelCNN prior, {self.num_codes} codes",
                "dequantization": ("none: discrete likelihood of binarised pixels" if self.vqvae.likelihood.name ==
                                   "bernoulli" else "none: discrete likelihood over the 256 levels of 8-bit pixels"),
                "class_prior": "uniform" if self.num_classes else "unconditional"}

    def sampling_protocol(self) -> dict:
        """How ``sample`` draws: the code grid autoregressively, one step per code, then one decoder pass."""
        height, width = self.code_shape
        return {"order": "autoregressive", "step": f"code of the {height}x{width} grid", "steps": height * width,
                "sampler": self.sampler, "then": "one decoder pass"}

    # --- training and evaluation -----------------------------------------------------------------------
    def _codes_and_labels(self, batch, stage: str, batch_idx: int) -> tuple[Tensor, Tensor | None]:
        """The batch's code grids (cached ones from ``VQCodesDataModule``'s third element, else encoded
        here from its images) and its labels when conditional."""
        labels = None
        if self.num_classes is not None:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ConfigValueError("a class-conditional prior needs (images, labels[, codes]) batches")
            labels = batch[1]
        if isinstance(batch, (tuple, list)) and len(batch) >= 3:
            return batch[2], labels
        x = batch_images(batch)
        generator = (self.training_rng if stage == "train"
                     else torch.Generator(device=x.device).manual_seed(EVAL_SEED + batch_idx))
        with torch.no_grad():
            return self.vqvae.encode_indices(self.vqvae.prepare_input(x, generator)), labels

    def _cells(self) -> int:
        return self.code_shape[0] * self.code_shape[1]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        codes, labels = self._codes_and_labels(batch, "train", batch_idx)
        loss = -self.code_log_likelihood(codes, labels).mean()
        self.guard_finite(loss=loss)
        if self.logging_this_batch():
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/code_bpc", bits_per_code(loss, self._cells()), prog_bar=True)
        return loss

    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        codes, labels = self._codes_and_labels(batch, stage, batch_idx)
        nll = -self.code_log_likelihood(codes, labels)
        self.log(f"{stage}/code_nll", nll.mean(), sync_dist=True)
        self.log(f"{stage}/code_bpc", bits_per_code(nll, self._cells()).mean(), prog_bar=stage == "val",
                 sync_dist=True)

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """The test set's code grids ``codes`` ``[N, h, w]`` and their ``code_nll`` ``[N]`` (nats per grid)."""
        codes, labels = self._codes_and_labels(batch, "predict", batch_idx)
        return {"codes": codes, "code_nll": -self.code_log_likelihood(codes, labels)}

    # --- sampling --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None,
                     sampler: str | None = None, progress: bool = False) -> Tensor:
        """``n`` code grids ``[n, h, w]`` drawn cell by cell from the prior.

        Every random number is drawn up front from ``generator`` (labels, then uniforms ``[n, h, w]``), so
        the fast and the reference sampler draw the same grids (up to rounding of the logits).
        """
        sampler = check_autoregressive_sampler(sampler or self.sampler)
        if self.num_classes is not None and labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        uniform = torch.rand(n, *self.code_shape, generator=generator, device=self.device)

        def picker(uniform: Tensor):
            def pick(i: int, j: int, group: int, logits: Tensor) -> Tensor:  # -> the one-hot of the drawn code
                return F.one_hot(self.codes.sample(logits, uniform[:, i, j]), self.num_codes).to(logits.dtype)
            return pick

        shape = (self.num_codes, *self.code_shape)
        if sampler == "fast":  # the CUDA-graph replay is checked on the GPU for the PixelCNN only: cached, eager
            sampler = "fast_eager"
        one_hot = draw_autoregressively(self.net, shape, uniform, picker, labels, sampler, progress)
        return one_hot.argmax(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None,
               sampler: str | None = None, progress: bool = False) -> Tensor:
        """``n`` images ``[n, C, H, W]`` in [0, 1]: code grids from the prior, decoded by the VQ-VAE."""
        return self.vqvae.decode_indices(self.sample_codes(n, generator, labels, sampler, progress))


def _normalised(hparams: dict[str, Any] | None) -> dict[str, Any] | None:
    """Hyperparameters compared as the command line writes them (tuples and lists alike)."""
    return None if hparams is None else {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()}
