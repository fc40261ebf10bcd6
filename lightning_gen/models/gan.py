"""Generative adversarial networks with manual optimisation (Goodfellow et al. 2014).

Each training batch runs ``n_disc_steps`` discriminator updates, then ``n_gen_steps`` generator
updates, each player with its own optimizer (and optional scheduler). The objective is chosen by name
(``lightning_gen.losses.gan``); the Wasserstein critic gets the gradient penalty, and any objective can
add R1 on real data and spectral normalisation in D. An exponential moving average of the generator's
weights (``generator_ema``) is what ``sample`` uses.

Step counting: Lightning's ``trainer.global_step`` counts optimizer steps, so one batch advances it by
``n_disc_steps + n_gen_steps``. Budget GAN runs in epochs (``trainer.max_epochs``), like every other
model; loggers plot against batches seen, the same x-axis for every model.

Exact resume: checkpoints hold G, D, EMA-G, both optimizers and schedulers, the loop counters, every
process's training generator (the latents) and the global torch RNG state (which orders the data), so
a run resumed at an epoch boundary continues bit for bit as if it had never stopped.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_gen.data.base import batch_images
from lightning_gen.data.pixels import from_signed, to_signed
from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.losses.gan import build_objective, gradient_penalty, minimax_value, r1_penalty
from lightning_gen.models.base import GenerativeModule
from lightning_gen.nets.gan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, dcgan_init_

WEIGHT_INITS = ("default", "dcgan")


def _adam_for_gans(params):
    """Adam(lr=2e-4, betas=(0.5, 0.999)), the DCGAN setting (Radford et al. 2016)."""
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


class GAN(GenerativeModule):
    """A GAN on images (DCGAN nets) or on low-dimensional points (MLP nets), chosen by ``data_shape``.

    Args:
        objective: minimax, non_saturating, hinge, least_squares or wasserstein (adds the gradient penalty).
        n_disc_steps / n_gen_steps: discriminator and generator updates per batch (e.g. 5:1 for WGAN-GP).
        gp_weight: lambda of the WGAN gradient penalty (used by ``wasserstein``).
        r1_gamma: weight of the R1 penalty on real data (0: off).
        spectral_norm: spectral normalisation on every D layer.
        discriminator_batch_norm: batch norm in the image discriminator, as in DCGAN (not with the gradient
            penalty or R1: a per-sample input gradient is undefined when each score depends on the batch).
        weight_init: "default" (PyTorch's) or "dcgan" (N(0, 0.02) weights, Radford et al. 2016) for both nets.
        ema_decay: decay of the generator EMA used for sampling (0: sample from G itself).
        generator_optimizer / discriminator_optimizer: default Adam(lr=2e-4, betas=(0.5, 0.999)).
        generator_scheduler / discriminator_scheduler: optional, stepped once per epoch.
        generator_clip_norm / discriminator_clip_norm: clip that player's gradient norm to this value
            (None: off). ``--trainer.gradient_clip_val`` is refused under manual optimisation; these are
            applied after AMP unscaling, where Lightning's own clipping would be.
        reuse_fakes: G's step scores the fakes D was just trained on (one G forward per batch instead of two,
            as in the hand-written DCGAN loop); needs one D step and one G step per batch.
        width / hidden / depth: network sizes (conv channels for images; MLP width and hidden layers for points).
        compile: compile G's and D's forward with ``torch.compile`` (D stays eager under R1 or the gradient
            penalty: compiled graphs do not support the double backward those penalties need).
    """

    automatic_optimization = False
    # under DDP, D's update reaches no generator parameter and G's none of D's (frozen by toggling):
    # the CLI turns `--trainer.strategy ddp` into DDP with unused-parameter detection for this model
    ddp_find_unused_parameters = True

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        latent_dim: int = 64,
        objective: str = "non_saturating",
        n_disc_steps: int = 1,
        n_gen_steps: int = 1,
        gp_weight: float = 10.0,
        r1_gamma: float = 0.0,
        spectral_norm: bool = False,
        discriminator_batch_norm: bool = False,
        weight_init: str = "default",
        ema_decay: float = 0.999,
        width: int = 64,
        hidden: int = 128,
        depth: int = 3,
        generator_optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        generator_scheduler: LRSchedulerCallable | None = None,
        discriminator_scheduler: LRSchedulerCallable | None = None,
        generator_clip_norm: float | None = None,
        discriminator_clip_norm: float | None = None,
        reuse_fakes: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=[
            "generator_optimizer", "discriminator_optimizer", "generator_scheduler", "discriminator_scheduler"])
        check_range(at_least=1, latent_dim=latent_dim, n_disc_steps=n_disc_steps, n_gen_steps=n_gen_steps,
                    width=width, hidden=hidden, depth=depth)
        check_range(at_least=0, gp_weight=gp_weight, r1_gamma=r1_gamma)
        check_range(at_least=0, below=1, ema_decay=ema_decay)
        check_range(above=0, generator_clip_norm=generator_clip_norm, discriminator_clip_norm=discriminator_clip_norm)
        self.clip_norms = {"g": generator_clip_norm, "d": discriminator_clip_norm}
        if reuse_fakes and (n_disc_steps, n_gen_steps) != (1, 1):
            raise ConfigValueError(f"reuse_fakes needs n_disc_steps 1 and n_gen_steps 1 (one batch of fakes serves "
                                   f"both steps), got {n_disc_steps} and {n_gen_steps}")
        self.reuse_fakes = reuse_fakes
        if weight_init not in WEIGHT_INITS:
            raise ConfigValueError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {weight_init!r}")
        if discriminator_batch_norm and (r1_gamma > 0 or getattr(build_objective(objective), "needs_gradient_penalty",
                                                                  False)):
            raise ConfigValueError(
                "discriminator_batch_norm cannot be combined with R1 or the Wasserstein gradient penalty: with batch "
                "norm each score depends on the whole batch, so the per-sample input gradient those penalties use is "
                "not defined. Set discriminator_batch_norm false, or r1_gamma 0 and another objective")
        self._grad_norms: dict[str, Tensor] = {}  # per player, measured in on_before_optimizer_step
        self.data_shape = tuple(data_shape)
        self.images = len(self.data_shape) == 3
        self.latent_dim = latent_dim
        self.objective = build_objective(objective)
        self.n_disc_steps, self.n_gen_steps = n_disc_steps, n_gen_steps
        self.gp_weight, self.r1_gamma, self.ema_decay = gp_weight, r1_gamma, ema_decay
        if self.images:
            self.generator = DCGANGenerator(self.data_shape, latent_dim, width)
            self.discriminator = DCGANDiscriminator(self.data_shape, width, spectral_norm, discriminator_batch_norm)
        elif len(self.data_shape) == 1:
            self.generator = MLPGenerator(self.data_shape[0], latent_dim, hidden, depth)
            self.discriminator = MLPDiscriminator(self.data_shape[0], hidden, depth, spectral_norm=spectral_norm)
        else:
            raise ConfigValueError(f"GAN needs images (C, H, W) or points (D,), got data shape {self.data_shape}")
        if discriminator_batch_norm and not self.images:
            raise ConfigValueError("discriminator_batch_norm applies to image discriminators; point data uses MLPs")
        if weight_init == "dcgan":
            self.generator.apply(dcgan_init_)
            self.discriminator.apply(dcgan_init_)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._calibrated_at: int | None = None  # ema_updates when the EMA's batch norm was last re-estimated
        self._optimizer_factories = (generator_optimizer or _adam_for_gans, discriminator_optimizer or _adam_for_gans)
        self._scheduler_factories = (generator_scheduler, discriminator_scheduler)
        self.compile_networks = compile

    def _penalises_input_gradients(self) -> bool:
        return self.r1_gamma > 0 or getattr(self.objective, "needs_gradient_penalty", False)

    def networks_to_compile(self):
        # the EMA copy is used only for sampling, a few times per run: compiling it would cost more than it saves
        if self._penalises_input_gradients():
            return [self.generator]
        return [self.generator, self.discriminator]

    def train(self, mode: bool = True) -> "GAN":
        super().train(mode)
        self.generator_ema.eval()  # never trained; its batch-norm statistics come from calibrate_ema_batch_norm
        return self

    # --- optimizers ----------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizers = [factory(module.parameters()) for factory, module in
                      zip(self._optimizer_factories, (self.generator, self.discriminator))]
        schedulers = [factory(opt) for factory, opt in zip(self._scheduler_factories, optimizers) if factory]
        return optimizers, schedulers

    # --- data ------------------------------------------------------------------------------------
    def _to_model_space(self, batch) -> Tensor:
        x = batch_images(batch)
        return to_signed(x) if self.images else x

    def _latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent_dim, generator=generator or self.training_rng, device=self.device)

    # --- one training batch ----------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real = self._to_model_space(batch)
        if self.reuse_fakes:
            fake = self.generator(self._latents(len(real)))  # keeps G's graph for G's step
            self._discriminator_step(opt_d, real, fake.detach())
            self._generator_step(opt_g, len(real), fake)
            return
        for _ in range(self.n_disc_steps):
            self._discriminator_step(opt_d, real)
        for _ in range(self.n_gen_steps):
            self._generator_step(opt_g, len(real))

    def _discriminator_step(self, opt_d, real: Tensor, fake: Tensor | None = None) -> None:
        if fake is None:
            with torch.no_grad():
                fake = self.generator(self._latents(len(real)))
        with self.toggled_optimizer(opt_d):
            real_scores, fake_scores = self.discriminator(real), self.discriminator(fake)
            loss = self.objective.discriminator_loss(real_scores, fake_scores)
            penalties, scaler = {}, self._grad_scaler()
            if getattr(self.objective, "needs_gradient_penalty", False):
                penalties["gp"] = gradient_penalty(self.discriminator, real, fake, self.training_rng, scaler)
            if self.r1_gamma > 0:
                penalties["r1"] = r1_penalty(self.discriminator, real, scaler)
            # a non-finite penalty under the grad scaler can be an overflow of its scaled backward pass, which
            # the scaler skips; a non-finite objective is a divergence
            self.guard_finite(d_loss=loss, gradient_terms=penalties)
            weights = {"gp": self.gp_weight, "r1": self.r1_gamma}
            for name, penalty in penalties.items():
                loss = loss + weights[name] * penalty
            logs = {f"train/{name}": penalty for name, penalty in penalties.items()}
            opt_d.zero_grad()
            self.manual_backward(loss)
            opt_d.step()  # on_before_optimizer_step measures (and clips) the unscaled gradients
        if not self.logging_this_batch():
            return
        self.log_dict({
            "train/d_loss": loss.detach(),
            "train/grad_norm_d": self._grad_norms["d"],
            "train/value": minimax_value(real_scores.detach(), fake_scores.detach()),  # V(D, G)
            "train/d_real": torch.sigmoid(real_scores.detach()).mean(),  # D(x)
            "train/d_fake": torch.sigmoid(fake_scores.detach()).mean(),  # D(G(z))
            "train/critic_gap": (real_scores.detach().mean() - fake_scores.detach().mean()),
            **{k: v.detach() for k, v in logs.items()},
        }, prog_bar=False)

    def _generator_step(self, opt_g, n: int, fake: Tensor | None = None) -> None:
        with self.toggled_optimizer(opt_g):
            fake_scores = self.discriminator(self.generator(self._latents(n)) if fake is None else fake)
            loss = self.objective.generator_loss(fake_scores)
            self.guard_finite(g_loss=loss)
            opt_g.zero_grad()
            self.manual_backward(loss)
            opt_g.step()
        self.update_ema()
        if self.logging_this_batch():
            self.log_dict({"train/g_loss": loss.detach(), "train/grad_norm_g": self._grad_norms["g"]}, prog_bar=True)

    def _grad_scaler(self):
        """The AMP grad scaler of ``16-mixed`` (None under 32-bit or ``bf16-mixed``, which need none)."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        return scaler if scaler is not None and scaler.is_enabled() else None

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradient norm, and clipping, of the player being stepped. Lightning calls this hook inside
        ``opt.step()`` after the AMP grad scaler unscaled the gradients (clipping before ``step`` in the
        training step would clip scaled gradients)."""
        super().on_before_optimizer_step(optimizer)
        first = optimizer.param_groups[0]["params"][0]
        player, net = ("d", self.discriminator) if any(p is first for p in self.discriminator.parameters()) \
            else ("g", self.generator)
        clip = self.clip_norms[player]
        if clip is None and not self.logging_this_batch():
            return
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads).detach()  # before clipping
        scaler = self._grad_scaler()
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            # a fused optimizer unscales inside its step, so Lightning left these gradients scaled by s
            norm = norm / scaler.scale(torch.ones((), device=norm.device))
        self._grad_norms[player] = norm
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def ema_decay_now(self) -> float:
        """min(ema_decay, (1 + n) / (10 + n)) after n updates: the average follows G closely early on, when
        its first weights are noise, and settles to ``ema_decay`` (TensorFlow's num_updates schedule)."""
        n = float(self.ema_updates)
        return min(self.ema_decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * G, for the weights. Batch-norm statistics are not averaged:
        ``sample`` re-estimates them for the averaged weights (``calibrate_ema_batch_norm``)."""
        ema_params, params = list(self.generator_ema.parameters()), list(self.generator.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - self.ema_decay_now())
        self.ema_updates += 1

    @torch.no_grad()
    def calibrate_ema_batch_norm(self, batches: int = 10, batch_size: int = 256) -> None:
        """Re-estimate the EMA generator's batch-norm statistics on its own outputs for fixed latents.

        G's running statistics belong to G's current weights, not to their average: normalising the averaged
        weights' activations with them draws worse samples. The latents come from a private seeded
        generator, so the result depends only on the EMA weights.
        """
        if self._calibrated_at == int(self.ema_updates):
            return
        seeded = torch.Generator(device=self.device).manual_seed(0)
        latents = [torch.randn(batch_size, self.latent_dim, generator=seeded, device=self.device)
                   for _ in range(batches)]
        torch.optim.swa_utils.update_bn(latents, self.generator_ema)  # cumulative average over the batches
        self.generator_ema.eval()
        self._calibrated_at = int(self.ema_updates)

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()  # None, one scheduler, or a list (manual optimisation steps them)
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if scheduler is not None:
                scheduler.step()

    # --- held-out batches: the game's value on data D was not trained on -----------------------
    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        """Log ``<stage>/value`` (V(D, G_ema) on this batch), ``<stage>/d_real`` and ``<stage>/d_fake``."""
        real = self._to_model_space(batch)
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        self.calibrate_ema_batch_norm()
        fake = self.generator_ema(self._latents(len(real), generator))
        real_scores, fake_scores = self.discriminator(real), self.discriminator(fake)
        self.log_dict({f"{stage}/value": minimax_value(real_scores, fake_scores),
                       f"{stage}/d_real": torch.sigmoid(real_scores).mean(),
                       f"{stage}/d_fake": torch.sigmoid(fake_scores).mean()}, sync_dist=True)

    # --- the common surface --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of the EMA generator: images in [0, 1], or points for point data."""
        self.calibrate_ema_batch_norm()
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        out = self.generator_ema(z)
        return from_signed(out) if self.images else out

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # also restores the RNG states (exact resume)
        self._calibrated_at = None  # new EMA weights: their batch-norm statistics must be re-estimated
