"""A normalizing flow: an invertible network with an exact change-of-variables likelihood (RealNVP / Glow).

    z = f(v),   log p_V(v) = log N(z; 0, I) + log |det df/dv|        (f: ``nets/flow.py: MultiScaleFlow``)

on continuous data. 8-bit images become continuous by uniform dequantisation, y = (k + u) / 256 with
u ~ U[0, 1)^D (``data/pixels.py: dequantize``), and the flow runs in logit space (RealNVP):

    p = alpha + (1 - 2 alpha) y,   v = logit(p) = log p - log(1 - p),   alpha = 0.05
    log |dv/dy| = sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)]

so log p_Y(y) = log p_V(v) + log |dv/dy|, and for the discrete 8-bit data (Theis et al. 2016)

    log P(k) >= E_u[log p_Y((k + u) / 256)] - D log 256          (nats per image; D = C H W)

``log_likelihood`` returns the one-sample value of that bound (the image of ``prepare_input``'s noise);
its mean over u is a lower bound on log P(k), so ``nll_bpd`` is an upper bound on the true bits/dim.

Sampling is one inverse pass: z = T * eps, eps ~ N(0, I) (temperature T: the prior's std scaled by T,
Glow's trick for smoother samples), v = f^{-1}(z), y = (sigmoid(v) - alpha) / (1 - 2 alpha), and the
8-bit level floor(256 y) (the inverse of the dequantisation), clamped to 0..255.

Units: ``*/nll`` in nats per image, ``*/nll_bpd`` in bits per dimension (the PixelCNN's names).
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightning_gen.data.base import batch_images
from lightning_gen.data.pixels import NUM_LEVELS, dequantize
from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.models.base import GenerativeModule, nats_to_bits_per_dim
from lightning_gen.nets.conv import check_image_shape
from lightning_gen.nets.flow import MultiScaleFlow
from lightning_gen.nets.flow_layers import COUPLINGS

DEQUANTIZATIONS = ("uniform",)
LOGIT_ALPHA = 0.05  # RealNVP's margin: logit space sees [0.05, 0.95], away from the logit's infinities
EVAL_SEED = 4321  # seeds the held-out dequantisation noise, so val/test numbers repeat


def to_logit_space(y: Tensor) -> tuple[Tensor, Tensor]:
    """Dequantised images ``y [N, C, H, W]`` in [0, 1) -> ``(v, log |dv/dy| [N])`` (nats)."""
    p = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * y
    v = torch.log(p) - torch.log1p(-p)  # (N, C, H, W)
    logdet = (math.log(1 - 2 * LOGIT_ALPHA) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
    return v, logdet


def from_logit_space(v: Tensor) -> Tensor:
    """The inverse of ``to_logit_space``: ``v`` -> y = (sigmoid(v) - alpha) / (1 - 2 alpha), unclamped."""
    return (torch.sigmoid(v) - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)


def to_8bit_images(y: Tensor) -> Tensor:
    """Continuous y in [0, 1) -> the 8-bit image floor(256 y) / 255 in [0, 1] (the dequantisation undone)."""
    return torch.floor(y * NUM_LEVELS).clamp(0, NUM_LEVELS - 1) / (NUM_LEVELS - 1)


class Flow(GenerativeModule):
    """A multi-scale normalizing flow over dequantised 8-bit images, trained by maximum likelihood
    (minimising -log p in bits/dim).

    Args:
        data_shape: (C, H, W) of the images; linked from the DataModule. H and W divisible by 2**levels.
        levels: squeeze levels L (each halves the sides; all but the last factor out half the channels).
        steps_per_level: flow steps K per level, each (ActNorm, invertible 1x1 conv, affine coupling).
        hidden: width of the coupling networks.
        coupling: "channel" (Glow's channel split) or "checkerboard" (RealNVP's spatial mask).
        split_prior: each factored-out part gets Glow's learned Gaussian prior given the part that continues
            (False: a fixed N(0, I), RealNVP's; its samples come out in fragments).
        dequantization: "uniform": y = (k + u) / 256, u ~ U[0, 1) (a lower bound on the discrete likelihood).
        temperature: default sampling temperature T: latents z ~ N(0, T^2 I); 0 gives the image of z = 0.
        optimizer: the optimizer (default: Adam with its defaults).
        compile: compile the flow's forward pass with ``torch.compile`` (training and likelihoods).
    """

    def __init__(
        self,
        data_shape: tuple[int, int, int] = (1, 28, 28),
        levels: int = 2,
        steps_per_level: int = 4,
        hidden: int = 64,
        coupling: str = "channel",
        split_prior: bool = True,
        dequantization: str = "uniform",
        temperature: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        if coupling not in COUPLINGS:
            raise ConfigValueError(f"unknown coupling {coupling!r}; choose one of {COUPLINGS}")
        if dequantization not in DEQUANTIZATIONS:
            raise ConfigValueError(f"unknown dequantization {dequantization!r}; choose one of {DEQUANTIZATIONS}")
        check_range(at_least=0, temperature=temperature)
        self.data_shape = check_image_shape(tuple(data_shape), multiple_of=1)
        self.flow = MultiScaleFlow(self.data_shape, levels, steps_per_level, hidden, coupling, split_prior)
        self.temperature = temperature
        self.optimizer_factory = optimizer
        self.compile_networks = compile
        self._actnorm_checked = False  # whether this fit has checked the data-dependent initialisation

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def networks_to_compile(self):
        return [self.flow]  # its forward; the data-dependent initialisation and the inverse stay eager

    # --- likelihood ------------------------------------------------------------------------------------
    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [0, 1] (8-bit levels k / 255) -> y = (k + u) / 256, u ~ U[0, 1) from ``generator``."""
        return dequantize(images, generator)

    def encode(self, y: Tensor) -> Tensor:
        """The latent z ``[N, D]`` of ``y = prepare_input(images)``: the flow itself, exactly invertible."""
        return self.flow(to_logit_space(y)[0])[0]

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Latents ``[N, D]`` -> 8-bit images ``[N, C, H, W]`` in [0, 1]."""
        return to_8bit_images(from_logit_space(self.flow.inverse(z)))

    def continuous_log_likelihood(self, y: Tensor) -> Tensor:
        """log p_Y(y) of dequantised images ``y [N, C, H, W]`` in [0, 1): ``[N]`` nats, differentiable.

        log p_Y(y) = log N(z; 0, I) + log |det dz/dv| + log |dv/dy|,   v = logit space, z = f(v)
        """
        v, logdet_logit = to_logit_space(y)
        z, logdet_flow = self.flow(v)  # (N, D), (N,)
        z = z.float()
        log_prior = -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)  # (N,) nats
        return log_prior + logdet_flow.float() + logdet_logit.float()

    def discrete_log_likelihood(self, y: Tensor) -> Tensor:
        """The dequantisation bound on log P(k), ``[N]`` nats: log p_Y(y) - D log 256 (differentiable)."""
        return self.continuous_log_likelihood(y) - self.num_dims * math.log(NUM_LEVELS)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact log p_Y(x) - D log 256 for ``x = prepare_input(images)``: ``[N]`` nats per image, the
        one-sample estimate of a lower bound on the 8-bit images' discrete log-likelihood."""
        return self.discrete_log_likelihood(x)

    def likelihood_protocol(self) -> dict:
        return {"estimator": "exact change of variables",
                "likelihood": f"multi-scale affine-coupling flow, N(0, I) prior, logit space (alpha={LOGIT_ALPHA})",
                "dequantization": "uniform (k+u)/256, lower bound on the discrete likelihood"}

    # --- training and evaluation -----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._actnorm_checked = False

    def _initialize_actnorm_once(self, y: Tensor) -> None:
        """Glow's data-dependent ActNorm initialisation on the first training batch, unless the flow's
        buffers say it already ran (a resumed run or a restored checkpoint). Under DDP every process runs
        this on its first batch, and the statistics are all-reduced (``nets/flow_layers.py: channel_moments``)."""
        if self._actnorm_checked:
            return
        if not self.flow.is_initialized():
            self.flow.initialize(to_logit_space(y)[0])
        self._actnorm_checked = True

    def _eval_generator(self, device: torch.device, offset: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(EVAL_SEED + offset)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        y = self.prepare_input(batch_images(batch), self.training_rng)
        self._initialize_actnorm_once(y)
        nll = -self.discrete_log_likelihood(y)  # (N,) nats
        loss = nats_to_bits_per_dim(nll, self.num_dims).mean()  # bits/dim: the same scale for any image size
        self.guard_finite(loss=loss)
        if self.logging_this_batch():
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/nll_bpd", loss)
        return loss

    def _held_out_nll(self, batch, batch_idx: int) -> Tensor:
        """-log-likelihood ``[N]`` nats of a held-out batch, its dequantisation noise seeded by ``batch_idx``."""
        x = batch_images(batch)
        return -self.discrete_log_likelihood(self.prepare_input(x, self._eval_generator(x.device, batch_idx)))

    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        nll = self._held_out_nll(batch, batch_idx)
        self.log(f"{stage}/nll", nll.mean(), sync_dist=True)
        self.log(f"{stage}/nll_bpd", nats_to_bits_per_dim(nll, self.num_dims).mean(), prog_bar=stage == "val",
                 sync_dist=True)

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Each image's -log p of the predict split (the test set), dequantised as in ``test``: ``nll``
        ``[N]`` nats and ``nll_bpd`` ``[N]`` bits/dim."""
        nll = self._held_out_nll(batch, batch_idx)
        return {"nll": nll, "nll_bpd": nats_to_bits_per_dim(nll, self.num_dims)}

    # --- sampling --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        """``n`` 8-bit images ``[n, C, H, W]`` in [0, 1] from one inverse pass of z ~ N(0, T^2 I), every
        random number from ``generator``; T is ``temperature`` (None: the model's)."""
        temperature = self.temperature if temperature is None else temperature
        check_range(at_least=0, temperature=temperature)
        z = torch.randn(n, self.flow.num_dims, generator=generator, device=self.device, dtype=self.dtype)  # (n, D)
        return self.decode(temperature * z)
