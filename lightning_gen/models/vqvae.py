"""VQ-VAE: an autoencoder with a discrete latent grid (van den Oord et al. 2017, "Neural Discrete
Representation Learning").

    z_e = f(x)                                   (N, D, h, w): a D-vector per cell of an H/4 x W/4 grid
    k   = argmin_j ||z_e - e_j||^2               (N, h, w): the nearest of K codes, per cell
    z_q = e_k                                    decoded through the straight-through estimate
    loss = -log p(x | g(z_e + sg[z_q - z_e])) + beta ||z_e - sg[z_q]||^2       (nats per image)

The codebook is learned by exponential moving averages, not by gradient (``nets/quantize.py`` gives the
equations and why); the commitment term, summed over the grid like the log-likelihood over the pixels,
keeps the encoder close to the codes it chose. Dead codes are revived (``revive_after``).

What this model lacks on purpose: ``log_likelihood``. Without a prior over the codes there is no p(x),
only the reconstruction likelihood p(x | z_q(x)) of an image given its own code, which is logged as
``*/recon_nll`` (nats per image) and ``*/recon_bpd`` and is no bound on -log p(x). Samples decode codes
drawn independently per cell from the code-usage frequencies: the "no prior" baseline that a PixelCNN
prior over the code grid replaces.

Units: ``*/recon_nll`` and ``train/loss``, ``train/commitment`` in nats per image (the commitment as the
loss counts it), ``*_bpd`` in bits per dimension, perplexity in codes.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightning_gen.data.base import batch_images
from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.losses import build_likelihood
from lightning_gen.models.autoencoder import DECODE_STATISTICS, EVAL_SEED
from lightning_gen.models.base import GenerativeModule, nats_to_bits_per_dim
from lightning_gen.nets.conv import check_image_shape
from lightning_gen.nets.grid_conv import GridDecoder, GridEncoder
from lightning_gen.nets.quantize import EMAVectorQuantizer, perplexity, straight_through

DOWNSAMPLING = 4  # two stride-2 convolutions: a 28x28 image has a 7x7 code grid


class VQVAE(GenerativeModule):
    """Vector-quantised autoencoder with an EMA codebook, a pixel likelihood and dead-code revival.

    Args:
        data_shape: (C, H, W), linked from the DataModule; H and W divisible by 4.
        num_codes: K, the codebook size.
        code_dim: D, the size of each code vector (and of the encoder output per grid cell).
        channels: width of the conv nets (``channels`` at H/2, ``2 * channels`` at H/4).
        residual_blocks: residual blocks at the H/4 resolution in the encoder and in the decoder.
        likelihood: the pixel likelihood p(x | z_q) ("discretized_logistic" or "bernoulli"); binarization:
            how a Bernoulli decoder's inputs are binarised.
        decode_statistic: the point estimate of p(x | z_q) that ``decode`` returns: "mean" or "median"
            (sharper with the discretised logistic; see the autoencoder).
        commitment_weight: beta of the commitment term.
        ema_decay, ema_epsilon: gamma and the Laplace smoothing of the codebook's moving averages.
        revive_after: a code chosen by no vector in this many consecutive training batches is dead: it
            is counted in ``train/dead_codes`` and, with ``revive_dead_codes``, reset to a random encoder
            output of the current batch (``EMAVectorQuantizer.revive``).
        optimizer: for the encoder and decoder (the codebook has no parameters).
    """

    def __init__(
        self,
        data_shape: tuple[int, int, int] = (1, 28, 28),
        num_codes: int = 64,
        code_dim: int = 16,
        channels: int = 32,
        residual_blocks: int = 2,
        likelihood: str = "discretized_logistic",
        binarization: str = "dynamic",
        decode_statistic: str = "mean",
        commitment_weight: float = 0.25,
        ema_decay: float = 0.99,
        ema_epsilon: float = 1e-5,
        revive_after: int = 100,
        revive_dead_codes: bool = True,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        if decode_statistic not in DECODE_STATISTICS:
            raise ConfigValueError(f"decode_statistic must be one of {', '.join(DECODE_STATISTICS)}, "
                                   f"got {decode_statistic!r}")
        check_range(at_least=0, commitment_weight=commitment_weight)
        check_range(at_least=1, revive_after=revive_after)
        self.data_shape = check_image_shape(tuple(data_shape), multiple_of=DOWNSAMPLING)
        _, height, width = self.data_shape
        self.grid_shape = (height // DOWNSAMPLING, width // DOWNSAMPLING)  # (h, w)
        self.likelihood = build_likelihood(likelihood, binarization)
        self.encoder = GridEncoder(self.data_shape, code_dim, channels, residual_blocks)
        self.decoder = GridDecoder(self.data_shape, code_dim, self.likelihood.params_per_channel, channels,
                                   residual_blocks)
        self.quantizer = EMAVectorQuantizer(num_codes, code_dim, ema_decay, ema_epsilon)
        self.code_dim, self.decode_statistic = code_dim, decode_statistic
        self.commitment_weight = commitment_weight
        self.revive_after, self.revive_dead_codes = revive_after, revive_dead_codes
        self.latent_dim = code_dim * self.grid_shape[0] * self.grid_shape[1]  # the size of a flat code, D*h*w
        self.register_buffer("revived_codes", torch.zeros((), dtype=torch.long))  # revivals so far
        self.optimizer_factory = optimizer

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    # --- the discrete code grid -------------------------------------------------------------------------
    def encode_continuous(self, x: Tensor) -> Tensor:
        """The encoder output z_e before quantisation, ``[N, D, h, w]``, for ``x = prepare_input(images)``."""
        return self.encoder(x)

    def encode_indices(self, x: Tensor) -> Tensor:
        """The code grid of ``x = prepare_input(images)``: indices ``[N, h, w]`` (long) into the codebook."""
        return self.quantizer.nearest(self.encoder(x))

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code grids ``[N, h, w]`` -> images ``[N, C, H, W]`` in [0, 1] (the mean or median of p(x | z_q))."""
        return self._decode_vectors(self.quantizer.lookup(indices))

    def _decode_vectors(self, z_q: Tensor) -> Tensor:
        params = self.decoder(z_q)
        return self.likelihood.median(params) if self.decode_statistic == "median" else self.likelihood.mean(params)

    # --- the common surface -----------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """The quantised code z_q of ``x = prepare_input(images)`` as one flat vector per image,
        ``[N, D * h * w]`` (the shape reconstructions and interpolations work with)."""
        return self.quantizer.lookup(self.encode_indices(x)).flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        """Flat codes ``[N, D * h * w]`` -> images ``[N, C, H, W]`` in [0, 1].

        Each cell's vector is first snapped to its nearest code, so the decoder only ever sees codebook
        vectors, as in training: a code of ``encode`` decodes unchanged, and a blend of two codes (an
        interpolation, a midpoint) decodes as the grid of codes nearest to the blend, cell by cell.
        """
        grid = z.view(len(z), self.code_dim, *self.grid_shape)  # (N, D, h, w)
        return self.decode_indices(self.quantizer.nearest(grid))

    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.likelihood.prepare(images, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images ``[n, C, H, W]`` in [0, 1] with no prior: every cell of the grid draws its code
        independently from the code-usage frequencies of training (the EMA counts N_i / sum_j N_j, over
        roughly the last 1 / (1 - ema_decay) batches; uniform before training), then the grid is decoded.

        This ignores every dependence between cells, so samples are texture, not objects: the baseline
        that a prior over code grids (a PixelCNN trained on ``encode_indices`` of the data) replaces.
        """
        probs = self.quantizer.ema_counts / self.quantizer.ema_counts.sum()  # (K,)
        cells = n * self.grid_shape[0] * self.grid_shape[1]
        indices = torch.multinomial(probs, cells, replacement=True, generator=generator)  # (n*h*w,)
        return self.decode_indices(indices.view(n, *self.grid_shape))

    # --- training and evaluation -----------------------------------------------------------------------
    def _prepare_batch(self, batch, stage: str, batch_idx: int) -> Tensor:
        x = batch_images(batch)
        generator = (self.training_rng if stage == "train"
                     else torch.Generator(device=x.device).manual_seed(EVAL_SEED + batch_idx))
        return self.prepare_input(x, generator)

    def _forward_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(z_e ``[N, D, h, w]``, indices ``[N, h, w]``, -log p(x | z_q) ``[N]`` nats, ||z_e - sg[z_q]||^2 ``[N]``)."""
        z_e = self.encoder(x)
        indices, z_q = self.quantizer(z_e)
        recon_nll = -self.likelihood.log_prob(self.decoder(straight_through(z_e, z_q)), x)
        commitment = (z_e - z_q).pow(2).flatten(1).sum(1)  # z_q carries no gradient
        return z_e, indices, recon_nll, commitment

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = self._prepare_batch(batch, "train", batch_idx)
        z_e, indices, recon_nll, commitment = self._forward_terms(x)
        loss = (recon_nll + self.commitment_weight * commitment).mean()
        self.guard_finite(loss=loss)
        counts = self.quantizer.update(z_e.detach(), indices)  # the codebook learns from training batches only
        dead = len(self.quantizer.dead_codes(self.revive_after))
        if self.revive_dead_codes and dead:
            self.revived_codes += self.quantizer.revive(z_e.detach(), self.revive_after, self.training_rng)
        if not self.logging_this_batch():
            return loss
        self.log_dict({"train/loss": loss, "train/recon_nll": recon_nll.mean()}, prog_bar=True)
        self.log_dict({
            "train/commitment": commitment.mean(),
            "train/perplexity": perplexity(counts),  # of this batch's codes (all processes')
            "train/dead_codes": float(dead),  # unused for revive_after batches, before this batch's revival
            "train/revived_codes": self.revived_codes.float(),  # reset so far
        })
        return loss

    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        x = self._prepare_batch(batch, stage, batch_idx)
        _, indices, recon_nll, _ = self._forward_terms(x)
        counts = torch.bincount(indices.flatten(), minlength=self.quantizer.num_codes)
        self.log(f"{stage}/recon_nll", recon_nll.mean(), prog_bar=stage == "val", sync_dist=True)
        self.log_dict({f"{stage}/recon_bpd": nats_to_bits_per_dim(recon_nll, self.num_dims).mean(),
                       f"{stage}/perplexity": perplexity(counts)}, sync_dist=True)  # per batch, averaged

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Code grids ``codes`` ``[N, h, w]`` (long: the data a prior over codes trains on) and
        reconstructions ``[N, C, H, W]`` of the predict split (the test set)."""
        x = self._prepare_batch(batch, "predict", batch_idx)
        codes = self.encode_indices(x)
        return {"codes": codes, "reconstruction": self.decode_indices(codes)}
