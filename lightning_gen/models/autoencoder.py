"""Autoencoders: a plain deterministic AE (the baseline) and a VAE (Kingma & Welling 2014).

Both reconstruct through the same decoder and pixel likelihood p(x | z) (``lightning_gen.losses``).
Units: every loss and bound is in nats per image unless its name ends in ``_bpd`` (bits per dim).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightning_gen.data.base import batch_images
from lightning_gen.errors import CheckpointError, ConfigValueError, check_range
from lightning_gen.losses import build_likelihood, gaussian_kl_to_standard, log_normal, reparameterize
from lightning_gen.losses.gaussian import log_standard_normal
from lightning_gen.models.base import GenerativeModule, nats_to_bits_per_dim
from lightning_gen.models.latent_mixture import LatentMixture
from lightning_gen.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from lightning_gen.nets.conv import check_image_shape

SAMPLE_LATENTS = ("prior", "posterior_mixture")
NETS = ("conv", "mlp")
DECODE_STATISTICS = ("mean", "median")
EVAL_SEED = 1234  # seeds the held-out binarisation and posterior noise so val/test numbers repeat
CODES_KEY = "lightning_gen_latent_codes"  # a VAE checkpoint's remembered codes (the posterior mixture's data)


def linear_warmup(step: int, warmup_steps: int, final: float) -> float:
    """final * min(1, step / warmup_steps); ``final`` from the start when ``warmup_steps`` is 0."""
    return final if warmup_steps == 0 else final * min(1.0, step / warmup_steps)


class _Autoencoder(GenerativeModule):
    """Encoder producing ``encoder_outputs`` numbers per image, decoder + pixel likelihood.

    ``compile: true`` compiles the encoder's and decoder's forward with ``torch.compile``.
    ``decode_statistic``: which point estimate of p(x|z) ``decode`` (and so ``sample`` and the
    reconstructions) returns per pixel: "mean" (E[x|z]) or "median". With the discretised logistic the
    median is markedly sharper: E[x|z] of a wide logistic near 0 or 1 is pulled inward by its clipped
    tails, a grey veil that a feature-based metric punishes (benchmarks/history.md: FID in fmnist_clf
    features 305 -> 146).
    """

    encoder_outputs_per_latent: int

    def __init__(
        self,
        data_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 16,
        likelihood: str = "discretized_logistic",
        binarization: str = "dynamic",
        channels: int = 32,
        hidden: int = 256,
        optimizer: OptimizerCallable = torch.optim.Adam,
        net: str = "conv",
        compile: bool = False,
        decode_statistic: str = "mean",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        if net not in NETS:
            raise ConfigValueError(f"net must be one of {', '.join(NETS)}, got {net!r}")
        if decode_statistic not in DECODE_STATISTICS:
            raise ConfigValueError(f"decode_statistic must be one of {', '.join(DECODE_STATISTICS)}, "
                                   f"got {decode_statistic!r}")
        self.data_shape = check_image_shape(tuple(data_shape), multiple_of=4 if net == "conv" else 1)
        check_range(at_least=1, latent_dim=latent_dim, channels=channels, hidden=hidden)
        self.latent_dim = latent_dim
        self.likelihood = build_likelihood(likelihood, binarization)
        self.decode_statistic = decode_statistic
        codes, params = self.encoder_outputs_per_latent * latent_dim, self.likelihood.params_per_channel
        if net == "conv":
            self.encoder = ConvEncoder(self.data_shape, codes, channels, hidden)
            self.decoder = ConvDecoder(self.data_shape, latent_dim, params, channels, hidden)
        else:  # channels is unused
            self.encoder = MLPEncoder(self.data_shape, codes, hidden)
            self.decoder = MLPDecoder(self.data_shape, latent_dim, params, hidden)
        self.optimizer_factory = optimizer
        self.compile_networks = compile

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def networks_to_compile(self):
        return [self.encoder, self.decoder]

    def decode(self, z: Tensor) -> Tensor:
        """Latent codes ``[N, latent_dim]`` -> images ``[N, C, H, W]`` in [0, 1]: the mean or median of
        p(x|z) (``decode_statistic``)."""
        params = self.decoder(z)
        return self.likelihood.median(params) if self.decode_statistic == "median" else self.likelihood.mean(params)

    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.likelihood.prepare(images, generator)

    def _eval_generator(self, device: torch.device, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(EVAL_SEED + offset)

    def _prepare_batch(self, batch, stage: str, batch_idx: int) -> Tensor:
        x = batch_images(batch)
        generator = self.training_rng if stage == "train" else self._eval_generator(x.device, batch_idx)
        return self.prepare_input(x, generator)

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Codes and reconstructions of the predict split (the test set)."""
        x = self._prepare_batch(batch, "predict", batch_idx)
        z = self.encode(x)
        return {"z": z, "reconstruction": self.decode(z)}


class AE(_Autoencoder):
    """Deterministic autoencoder: z = f(x), loss = -log p(x | g(z)) (nats per image).

    Nothing shapes its latent space, which is why it has holes: decoding an arbitrary z rarely gives
    an image. To sample anyway, ``sample`` draws z from a full-covariance Gaussian fitted (by its
    mean and covariance) to the codes of the training images seen during the last training epoch,
    and decodes it.
    """

    encoder_outputs_per_latent = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.latent_dim
        self.register_buffer("code_mean", torch.zeros(d))
        self.register_buffer("code_scale_tril", torch.eye(d))  # Cholesky factor of the code covariance
        self._code_sums: list[Tensor] | None = None

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def _reconstruction_nll(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encode(x)
        return -self.likelihood.log_prob(self.decoder(z), x), z

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = self._prepare_batch(batch, "train", batch_idx)
        nll, z = self._reconstruction_nll(x)
        self._accumulate_codes(z.detach())
        loss = nll.mean()
        self.guard_finite(loss=loss)
        if self.logging_this_batch():
            self.log_dict({"train/loss": loss, "train/recon": loss}, prog_bar=True)
        return loss

    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        x = self._prepare_batch(batch, stage, batch_idx)
        nll, _ = self._reconstruction_nll(x)
        self.log(f"{stage}/recon", nll.mean(), prog_bar=stage == "val", sync_dist=True)

    # --- the Gaussian fitted to training codes -------------------------------------------------
    def on_train_epoch_start(self) -> None:
        d = self.latent_dim
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.device)  # noqa: E731
        self._code_sums = [zeros(()), zeros(d), zeros(d, d)]  # count, sum z, sum z z^T

    def _accumulate_codes(self, z: Tensor) -> None:
        if self._code_sums is None:
            self.on_train_epoch_start()
        z = z.double()
        count, total, outer = self._code_sums
        self._code_sums = [count + len(z), total + z.sum(0), outer + z.T @ z]

    def on_train_epoch_end(self) -> None:
        count, total, outer = (self.trainer.strategy.reduce(s, reduce_op="sum") for s in self._code_sums)
        mean = total / count
        covariance = outer / count - torch.outer(mean, mean)
        covariance += 1e-6 * torch.eye(self.latent_dim, dtype=covariance.dtype, device=covariance.device)
        self.code_mean.copy_(mean.float())
        self.code_scale_tril.copy_(torch.linalg.cholesky(covariance).float())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        return self.decode(self.code_mean + eps @ self.code_scale_tril.T)


class VAE(_Autoencoder):
    """Variational autoencoder with a diagonal-Gaussian encoder q(z|x) and prior p(z) = N(0, I).

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) <= log p(x), with the KL in closed form and the
    expectation estimated with one reparameterised sample. Training minimises
    -(E_q[log p(x|z)] - beta_t * KL), where beta_t = beta * min(1, step / kl_warmup_steps) (linear KL
    warm-up, Bowman et al. 2016; beta-VAE, Higgins et al. 2017). Validation and test report the true
    ELBO (beta = 1). ``log_likelihood`` is the importance-weighted bound (IWAE, Burda et al. 2016).

    Args:
        beta: weight of the KL term after warm-up (1 is the ELBO).
        kl_warmup_steps: optimizer steps over which the KL weight rises linearly from 0 to beta (0: none).
        val_importance_samples: k of the IWAE bound behind ``val/nll_bpd``.
        test_importance_samples: k of the IWAE bound behind ``test/nll`` and ``test/nll_bpd``.
        sample_latents: where ``sample`` draws z: "prior" (N(0, I)) or "posterior_mixture", a Gaussian
            mixture fitted by EM to the posterior means of the latest ``mixture_codes`` training images
            (ex-post density estimation, Ghosh et al. 2020; ``latent_mixture``). The mixture is refitted
            when samples are drawn and new codes arrived since the last fit (not at every epoch end:
            a fit costs ~1.5 s on 2 CPU cores); checkpoints hold the remembered codes, so a loaded
            checkpoint samples from the mixture of its own latest codes. Before any training batch it
            falls back to the prior. Under DDP each process fits to its own shard's codes (checkpoints
            keep rank 0's). The likelihood and its bounds always use the prior N(0, I).
        mixture_components / mixture_codes: K of that mixture, and how many recent codes it is fitted to.
    """

    encoder_outputs_per_latent = 2  # mean and log-variance

    def __init__(
        self,
        *args,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        val_importance_samples: int = 8,
        test_importance_samples: int = 128,
        sample_latents: str = "prior",
        mixture_components: int = 10,
        mixture_codes: int = 10_000,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if sample_latents not in SAMPLE_LATENTS:
            raise ConfigValueError(f"sample_latents must be one of {', '.join(SAMPLE_LATENTS)}, got {sample_latents!r}")
        check_range(at_least=1, mixture_components=mixture_components, mixture_codes=mixture_codes)
        self.sample_latents = sample_latents
        if sample_latents == "posterior_mixture":
            self.latent_mixture = LatentMixture(self.latent_dim, mixture_components)
            self._recent_codes = torch.zeros(mixture_codes, self.latent_dim)  # a ring buffer (checkpoints: CODES_KEY)
            self._codes_seen, self._codes_at_fit = 0, 0
        check_range(at_least=0, beta=beta, kl_warmup_steps=kl_warmup_steps)
        check_range(at_least=1, val_importance_samples=val_importance_samples,
                    test_importance_samples=test_importance_samples)
        self.beta, self.kl_warmup_steps = beta, kl_warmup_steps
        self.val_importance_samples, self.test_importance_samples = val_importance_samples, test_importance_samples

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) as (mean, log-variance), each ``[N, latent_dim]``."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean, a deterministic code."""
        return self.posterior(x)[0]

    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One-sample estimate of E_q[log p(x|z)] and the closed-form KL, each ``[N]`` nats."""
        return self._elbo_terms(x, *self.posterior(x), generator)

    def _elbo_terms(self, x: Tensor, mean: Tensor, logvar: Tensor, generator: torch.Generator | None):
        z = reparameterize(mean, logvar, generator)
        return self.likelihood.log_prob(self.decoder(z), x), gaussian_kl_to_standard(mean, logvar)

    def kl_weight(self) -> float:
        return linear_warmup(self.global_step, self.kl_warmup_steps, self.beta)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = self._prepare_batch(batch, "train", batch_idx)
        mean, logvar = self.posterior(x)
        if self.sample_latents == "posterior_mixture":
            self._remember_codes(mean.detach())
        log_px_z, kl = self._elbo_terms(x, mean, logvar, self.training_rng)
        weight = self.kl_weight()
        loss = (-log_px_z + weight * kl).mean()
        self.guard_finite(loss=loss)
        if self.logging_this_batch():
            self.log_dict(
                {"train/loss": loss, "train/recon": -log_px_z.mean(), "train/kl": kl.mean(), "train/kl_weight": weight},
                prog_bar=True,
            )
            self.log("train/elbo", (log_px_z - kl).mean())
        return loss

    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        importance_samples = self.val_importance_samples if stage == "val" else self.test_importance_samples
        x = self._prepare_batch(batch, stage, batch_idx)
        generator = self._eval_generator(x.device, 10_000 + batch_idx)
        log_px_z, kl = self.elbo_terms(x, generator)
        # with k = 1 the IWAE bound is the ELBO: E_q[log p(x|z) + log p(z) - log q(z|x)] = E_q[log p(x|z)] - KL;
        # the closed-form KL of this pass estimates it with less variance and without a second encoder/decoder pass
        nll = -(log_px_z - kl) if importance_samples == 1 else -self.log_likelihood(
            x, importance_samples, generator=generator)
        self.log(f"{stage}/elbo", (log_px_z - kl).mean(), prog_bar=stage == "val", sync_dist=True)
        metrics = {
            f"{stage}/recon": -log_px_z.mean(),
            f"{stage}/kl": kl.mean(),
            f"{stage}/nll": nll.mean(),
            f"{stage}/nll_bpd": nats_to_bits_per_dim(nll, self.num_dims).mean(),
        }
        self.log_dict(metrics, sync_dist=True)

    @torch.no_grad()
    def log_likelihood(
        self, x: Tensor, k: int | None = None, chunk_size: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """IWAE bound log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x): ``[N]`` nats per image.

        A lower bound on log p(x) that is never below the ELBO in expectation, grows with k and
        converges to log p(x) as k -> infinity (default k: ``test_importance_samples``). ``x`` must be
        in the likelihood's support: pass ``prepare_input(images)`` (binarises for Bernoulli).
        The k samples are decoded ``chunk_size`` at a time (default: about 512 images per decoder
        call, which measured fastest on a 2-core CPU; see benchmarks/vae_throughput.py).
        """
        k = k or self.test_importance_samples
        chunk_size = chunk_size or max(1, 512 // len(x))
        mean, logvar = self.posterior(x)
        log_weights = []
        for start in range(0, k, chunk_size):
            m = min(chunk_size, k - start)
            z = reparameterize(mean.expand(m, *mean.shape), logvar.expand(m, *logvar.shape), generator)  # (m, N, d)
            params = self.decoder(z.flatten(0, 1))  # (m*N, C*p, H, W)
            log_px_z = self.likelihood.log_prob(params, x.repeat(m, 1, 1, 1)).view(m, -1)  # (m, N)
            log_weights.append(log_px_z + log_standard_normal(z) - log_normal(z, mean, logvar))
        return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)

    def likelihood_protocol(self) -> dict:
        """How ``log_likelihood`` estimates log p(x), recorded next to every NLL."""
        correction = "none: discrete likelihood of binarised pixels" if self.likelihood.name == "bernoulli" else (
            "none: discrete likelihood over the 256 levels of 8-bit pixels")
        return {"estimator": "IWAE bound", "importance_samples": self.test_importance_samples,
                "likelihood": self.likelihood.name, "dequantization": correction}

    # --- where samples come from ----------------------------------------------------------------
    def _remember_codes(self, codes: Tensor) -> None:
        buffer = self._recent_codes = self._recent_codes.to(codes.device)
        self._codes_seen += len(codes) - len(codes[-len(buffer):])  # a batch larger than the buffer: its last rows
        codes = codes[-len(buffer):]
        rows = torch.arange(self._codes_seen, self._codes_seen + len(codes), device=codes.device) % len(buffer)
        buffer[rows] = codes.to(buffer.dtype)  # bfloat16 codes under bf16-mixed autocast
        self._codes_seen += len(codes)

    def fit_latent_mixture(self) -> None:
        """Refit the mixture to the remembered codes, if new ones arrived since the last fit."""
        if self._codes_seen == self._codes_at_fit:
            return
        self.latent_mixture.fit(self._recent_codes[:min(self._codes_seen, len(self._recent_codes))])
        self._codes_at_fit = self._codes_seen

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.sample_latents == "posterior_mixture":
            checkpoint[CODES_KEY] = {"codes": self._recent_codes.cpu().clone(), "seen": self._codes_seen,
                                     "at_fit": self._codes_at_fit}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        remembered = checkpoint.get(CODES_KEY)
        if self.sample_latents == "posterior_mixture" and remembered is not None:
            if tuple(remembered["codes"].shape) != tuple(self._recent_codes.shape):
                raise CheckpointError(
                    f"the checkpoint remembers {tuple(remembered['codes'].shape)} latent codes but this VAE keeps "
                    f"{tuple(self._recent_codes.shape)} (mixture_codes, latent_dim): load it with the settings it was "
                    "trained with")
            self._recent_codes = remembered["codes"].to(self._recent_codes.device)
            self._codes_seen, self._codes_at_fit = remembered["seen"], remembered["at_fit"]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode z to the mean or median image of p(x|z) (``decode_statistic``), in [0, 1]; z ~ N(0, I)
        or the posterior mixture (``sample_latents``)."""
        if self.sample_latents == "posterior_mixture":
            self.fit_latent_mixture()
            if self.latent_mixture.fitted:
                return self.decode(self.latent_mixture.sample(n, generator))
        return self.sample_prior(n, generator)

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode z ~ N(0, I), whatever ``sample_latents`` says."""
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        return self.decode(z)
