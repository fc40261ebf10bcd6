"""Flow matching: a velocity field v(x, t) whose ODE carries N(0, I) (t = 0) to the data (t = 1).

    training   x_t = (1 - t) x0 + t x1,  loss = || v(x_t, t) - (x1 - x0) ||^2    (losses/flow_matching.py)
    sampling   x0 ~ N(0, I), integrate dx/dt = v(x, t) from 0 to 1 with NFE evaluations   (samplers/ode.py)
    likelihood log p(x1) = log N(x0) - int_0^1 div v(x_t, t) dt, backwards from 1 to 0     (losses/ode_likelihood.py)

Images are dequantised ((k + u) / 256) and scaled to [-1, 1) for training and likelihoods; samples come
back through ``from_signed``. An EMA copy of the network (``ema_net``) is what ``sample`` and
``log_likelihood`` use; the raw network is what the optimizer trains.

Classifier-free guidance (Ho & Salimans 2022): a class-conditional network trained with label dropout
also learns the unconditional field (the null label), and sampling uses

    v = v_uncond + w (v_cond - v_uncond)       (w = guidance_scale; w = 1: the conditional field alone).

Units: ``*/loss`` is the per-dimension mean squared velocity error (``val/`` and ``test/``: of the EMA
network); ``test/nll`` nats per image and ``test/nll_bpd`` bits per dimension of the 8-bit data (a lower
bound on the likelihood, estimated).
"""

from __future__ import annotations

import copy
import math

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightning_gen.data.base import batch_images
from lightning_gen.data.pixels import NUM_LEVELS, dequantize, from_signed, to_signed
from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.losses.flow_matching import RectifiedFlowLoss
from lightning_gen.losses.ode_likelihood import ode_log_likelihood
from lightning_gen.models.base import GenerativeModule, nats_to_bits_per_dim
from lightning_gen.nets.unet import TimeConditionedUNet
from lightning_gen.samplers.ode import ODE_SAMPLERS, ODESolution, check_sampler


class FlowMatching(GenerativeModule):
    """Rectified-flow matching with a time-conditioned U-Net, sampled by an ODE solver.

    Args:
        data_shape: (C, H, W) of the images; linked from the DataModule.
        base_width, channel_multipliers, blocks_per_level, attention: the U-Net (``nets/unet.py``);
            the sides must be divisible by 2^(levels - 1).
        num_classes: class-conditional with this many classes (None: unconditional); must equal the
            DataModule's. ``sample`` draws the classes uniformly unless given ``labels``.
        label_dropout: probability of training on the null label instead of the class (conditional models
            only; must be > 0 there: guidance and ``log_likelihood`` use the unconditional field).
        time_distribution: how training draws t: "uniform" or "logit_normal" (``losses/flow_matching.py``).
        guidance_scale: w of classifier-free guidance (1: plain conditional; 0: unconditional; > 1: guided,
            two network passes per evaluation).
        sampler: ODE solver of ``sample`` and ``log_likelihood``: "euler", "heun" or "dopri5".
        nfe: function evaluations per sample (euler, heun; for dopri5 the most allowed).
        ode_tolerance: rtol and atol of dopri5.
        ema_decay: decay of the weights' exponential moving average used for sampling and likelihoods
            (0: the raw weights), ramped as min(ema_decay, (1 + n) / (10 + n)) over the first n steps.
        likelihood_nfe: function evaluations of the likelihood's backward integration.
        hutchinson_probes: probes of Hutchinson's divergence estimator per image (at least 2, so the estimate
            has a standard error); None: the exact divergence (C*H*W backward passes per evaluation: tiny
            images only).
        test_likelihood: also log ``test/nll`` and ``test/nll_bpd`` in ``test`` (``likelihood_nfe`` evaluations,
            each with ``hutchinson_probes`` backward passes, per image: costly on a CPU).
        optimizer: the optimizer of the network (default: Adam with its defaults).
        compile: compile the network's forward with ``torch.compile`` (training).
    """

    def __init__(
        self,
        data_shape: tuple[int, int, int] = (1, 28, 28),
        base_width: int = 32,
        channel_multipliers: tuple[int, ...] = (1, 2, 2),
        blocks_per_level: int = 1,
        attention: bool = False,
        num_classes: int | None = None,
        label_dropout: float = 0.1,
        time_distribution: str = "uniform",
        guidance_scale: float = 1.0,
        sampler: str = "heun",
        nfe: int = 20,
        ode_tolerance: float = 1e-5,
        ema_decay: float = 0.999,
        likelihood_nfe: int = 32,
        hutchinson_probes: int | None = 4,
        test_likelihood: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        check_sampler(sampler)
        check_range(at_least=1, nfe=nfe, likelihood_nfe=likelihood_nfe, num_classes=num_classes)
        check_range(at_least=2, hutchinson_probes=hutchinson_probes)
        check_range(at_least=0, guidance_scale=guidance_scale)
        check_range(at_least=0, below=1, ema_decay=ema_decay, label_dropout=label_dropout)
        check_range(above=0, ode_tolerance=ode_tolerance)
        if num_classes is not None and label_dropout == 0:
            raise ConfigValueError("a class-conditional flow needs label_dropout > 0 (e.g. 0.1): its null label gives "
                                   "the unconditional velocity that guidance and log_likelihood use")
        self.data_shape = tuple(data_shape)
        self.net = TimeConditionedUNet(self.data_shape, base_width, tuple(channel_multipliers), blocks_per_level,
                                       attention, num_classes)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.objective = RectifiedFlowLoss(label_dropout if num_classes is not None else 0.0, num_classes,
                                           time_distribution=time_distribution)
        self.num_classes, self.guidance_scale, self.ema_decay = num_classes, guidance_scale, ema_decay
        self.sampler, self.nfe, self.ode_tolerance = sampler, nfe, ode_tolerance
        self.likelihood_nfe, self.hutchinson_probes = likelihood_nfe, hutchinson_probes
        self.test_likelihood = test_likelihood
        self.optimizer_factory = optimizer
        self.compile_networks = compile
        self.last_sampling_nfe: int | None = None  # evaluations of the last `sample` call (dopri5 chooses)
        self._likelihood_errors = (0.0, 0)  # (sum of squared standard errors, images) since likelihood_protocol()

    def configure_optimizers(self):
        return self.optimizer_factory(self.net.parameters())

    def networks_to_compile(self):
        return [self.net]  # the EMA copy samples a few times per run, at other batch sizes: left eager

    def train(self, mode: bool = True) -> "FlowMatching":
        super().train(mode)
        self.ema_net.eval()  # never trained (no layer behaves differently today; kept explicit)
        return self

    def setup(self, stage: str) -> None:
        self.check_data_classes()

    # --- the EMA of the weights ------------------------------------------------------------------------
    def ema_decay_now(self) -> float:
        """min(ema_decay, (1 + n) / (10 + n)) after n updates: the average follows the network closely while
        its first weights are noise and settles to ``ema_decay`` (the GAN's schedule)."""
        n = float(self.ema_updates)
        return min(self.ema_decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * net, for every parameter (the net has no buffers to average)."""
        torch._foreach_lerp_(list(self.ema_net.parameters()), list(self.net.parameters()), 1.0 - self.ema_decay_now())
        self.ema_updates += 1

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.update_ema()  # once per optimizer step (not per batch under gradient accumulation)

    # --- the velocity field ----------------------------------------------------------------------------
    def velocity(self, x: Tensor, t: Tensor, labels: Tensor | None = None, guidance_scale: float | None = None,
                 net: torch.nn.Module | None = None) -> Tensor:
        """v(x, t) of ``net`` (default: the EMA network) for ``x`` ``[N, C, H, W]`` in [-1, 1] and ``t`` (a
        scalar or ``[N]``): the unconditional field without ``labels``, else v_u + w (v_c - v_u) with
        w = ``guidance_scale`` (default: the model's). ``[N, C, H, W]``."""
        net = self.ema_net if net is None else net
        w = self.guidance_scale if guidance_scale is None else guidance_scale
        t = t.to(x.dtype).expand(len(x))  # (N,)
        if labels is None or self.num_classes is None:
            return net(x, t, None)
        if w == 1:
            return net(x, t, labels)  # plain conditional: one pass
        null = torch.full_like(labels, self.num_classes)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))  # (2N, C, H, W)
        conditional, unconditional = both.chunk(2)
        return unconditional + w * (conditional - unconditional)

    def _solve(self, field, x: Tensor, nfe: int, sampler: str, t_start: float, t_end: float) -> ODESolution:
        options = {"rtol": self.ode_tolerance, "atol": self.ode_tolerance} if sampler == "dopri5" else {}
        return ODE_SAMPLERS[sampler](field, x, nfe, t_start=t_start, t_end=t_end, **options)

    # --- the common surface ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None,
               nfe: int | None = None, sampler: str | None = None) -> Tensor:
        """``n`` images ``[n, C, H, W]`` in [0, 1]: x0 ~ N(0, I) integrated from t = 0 to 1 through the EMA
        network's (guided) field with ``nfe`` evaluations (default: the model's) of ``sampler``.

        Random draws, all from ``generator``: the labels ``[n]`` (class-conditional, when not given), then
        the noise ``[n, C, H, W]``.
        """
        sampler, nfe = check_sampler(sampler or self.sampler), nfe or self.nfe
        if self.num_classes is not None and labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        x0 = torch.randn(n, *self.data_shape, generator=generator, device=self.device, dtype=self.dtype)
        solution = self._solve(lambda x, t: self.velocity(x, t, labels), x0, nfe, sampler, 0.0, 1.0)
        self.last_sampling_nfe = solution.nfe
        return from_signed(solution.x)

    def sampling_protocol(self) -> dict:
        """How ``sample`` draws: solver, NFE, guidance; report it beside every number made from samples. For
        dopri5, ``nfe`` is what the last ``sample`` call used (the solver chooses) and ``nfe_limit`` the cap."""
        guided = self.num_classes is not None and self.guidance_scale != 1
        protocol = {"solver": self.sampler, "nfe": self.nfe, "weights": "EMA",
                    "guidance_scale": self.guidance_scale if self.num_classes is not None else None,
                    "network_passes_per_evaluation": 2 if guided else 1}
        if self.sampler == "dopri5":
            protocol.update(nfe=self.last_sampling_nfe, nfe_limit=self.nfe, tolerance=self.ode_tolerance)
        return protocol

    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """8-bit images in [0, 1] -> uniformly dequantised (k + u) / 256 in [0, 1), u drawn from ``generator``."""
        return dequantize(images, generator)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """log P(k) of the 8-bit images, lower-bounded through their dequantised version ``x`` =
        ``prepare_input(images)`` in [0, 1): ``[N]`` nats per image (an estimate: Hutchinson's trace).

        With x1 = 2 x - 1 and the flow's density p on [-1, 1]^D (``losses/ode_likelihood.py``, the EMA
        network, ``likelihood_nfe`` evaluations of ``sampler`` backwards from t = 1 to 0):

            log P(k) >= E_u[log p_x(x)] - D log 256 = E_u[log p(x1)] + D log 2 - D log 256,

        the D log 2 being the log-determinant of x -> 2 x - 1 and 1/256 each bin's width (Theis et al.
        2016). Without ``labels`` the unconditional field (a class-conditional model's null label);
        with them log p(x | y). Probes come from ``generator`` (default: the global RNG).
        """
        d = self.num_dims
        result = ode_log_likelihood(lambda z, t: self.velocity(z, t, labels, guidance_scale=1.0), to_signed(x),
                                    nfe=self.likelihood_nfe, solver=self.sampler, probes=self.hutchinson_probes,
                                    generator=generator, **({"rtol": self.ode_tolerance, "atol": self.ode_tolerance}
                                                            if self.sampler == "dopri5" else {}))
        squares, count = self._likelihood_errors
        self._likelihood_errors = (squares + float(result.standard_error.double().square().sum()), count + len(x))
        return result.log_density + d * math.log(2) - d * math.log(NUM_LEVELS)

    def likelihood_protocol(self) -> dict:
        """The estimator behind ``log_likelihood``; ``standard_error_nats`` / ``_bpd`` is the trace estimator's
        standard error of the mean over the images scored since the previous call (then reset)."""
        probes = self.hutchinson_probes
        divergence = ("exact divergence" if probes is None
                      else f"Hutchinson trace estimator ({probes} Rademacher probes)")
        protocol = {
            "estimator": f"ODE instantaneous change of variables, {divergence}",
            "likelihood": "continuous normalising flow of the EMA velocity field; a lower bound on the 8-bit "
                          "likelihood",
            "dequantization": "uniform: (k + u) / 256, u ~ U[0, 1), one draw per image, then 2 y - 1 "
                              "(log-determinants D log 2 - D log 256 included)",
            "solver": self.sampler, "likelihood_nfe": self.likelihood_nfe,
            "class_prior": "unconditional field (null label)" if self.num_classes is not None else "unconditional",
        }
        squares, count = self._likelihood_errors
        if count:
            error = math.sqrt(squares) / count  # of the mean over `count` images with independent probes
            protocol["standard_error_nats"] = error
            protocol["standard_error_bpd"] = error / (self.num_dims * math.log(2))
        self._likelihood_errors = (0.0, 0)
        return protocol

    # --- training and evaluation ---------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.objective(self.net, batch_images(batch), self.batch_labels(batch), self.training_rng).mean()
        self.guard_finite(loss=loss)
        if self.logging_this_batch():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        # held-out noise seeded by the batch: the same checkpoint gives the same numbers
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        images, labels = batch_images(batch), self.batch_labels(batch)
        loss = self.objective(self.ema_net, images, labels, generator).mean()  # the weights that sample
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        if stage == "test" and self.test_likelihood:
            nll = -self.log_likelihood(self.prepare_input(images, generator), generator=generator)  # (N,) nats
            self.log("test/nll", nll.mean(), sync_dist=True)
            self.log("test/nll_bpd", nats_to_bits_per_dim(nll, self.num_dims).mean(), sync_dist=True)

