"""The small surface every lightning-gen model offers to callbacks, the CLI and the evaluation code.

- ``sample(n, generator=None)`` -> ``[n, *data_shape]`` images in [0, 1] (every model)
- ``encode(x)`` -> latent codes, ``decode(z)`` -> images in [0, 1] (models with a latent space)
- ``log_likelihood(x)`` -> ``[N]`` nats per image (models with an explicit likelihood), where ``x`` is
  ``prepare_input(images)``: the data in the model's support (e.g. binarised for a Bernoulli decoder)

Callbacks ask ``has_surface(model, "encode")`` rather than checking classes.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_gen import __version__
from lightning_gen.checkpoints import (
    DATAMODULE_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    MODEL_CLASS_KEY,
    WRITER_KEY,
    check_format,
    check_model_class,
    class_path,
    model_from_checkpoint,
    read_checkpoint,
)
from lightning_gen.errors import ConfigValueError, DivergenceError, LightningGenError
from lightning_gen.faults import kill_point

RNG_KEY = "lightning_gen_rng"  # checkpoint entry: the global torch RNG and every process's training generator


def has_surface(model: Any, name: str) -> bool:
    """Whether ``model`` offers the surface method ``name`` (e.g. "encode", "log_likelihood")."""
    return callable(getattr(model, name, None))


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here (None when it can): TorchDynamo's platform check, and on the
    CPU the C++ compiler that inductor's generated kernels need (found on first use, not at compile time,
    so it is checked up front)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python/platform"
    if device.type == "cpu":
        candidates = [os.environ.get("CXX"), "g++", "clang++", "c++"]
        if not any(shutil.which(name) for name in candidates if name):
            return "no C++ compiler on PATH (inductor builds CPU kernels with one; set CXX or install g++)"
    return None


def emulated_bfloat16_reason(precision: str, device: torch.device) -> str | None:
    """Why ``bf16-mixed`` would likely train slower than 32-bit here: a CPU without bfloat16 instructions
    (oneDNN then converts every operand in software). None on other devices and on CPUs that have them."""
    if not str(precision).startswith("bf16") or device.type != "cpu":
        return None
    has = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731 (private, x86 only)
    if has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported"):
        return None
    return "this CPU reports neither avx512_bf16 nor AMX instructions"


def nats_to_bits_per_dim(nats_per_image: Tensor, num_dims: int) -> Tensor:
    """bits/dim = nats / (D ln 2), where D is the number of sub-pixels of one image."""
    return nats_per_image / (num_dims * math.log(2))


class GenerativeModule(pl.LightningModule):
    """Base of every model: records its class in checkpoints and refuses a checkpoint of another."""

    data_shape: tuple[int, ...]
    _training_rng: torch.Generator | None = None

    @property
    def training_rng(self) -> torch.Generator:
        """This process's generator for training noise (GAN latents, VAE reparameterisation, binarisation).

        ``seed_everything`` gives every process the same seed, so noise drawn from the global RNG would be
        the same on every DDP rank; this generator adds the rank to the seed. Checkpoints keep every
        rank's state, so a resumed run continues each rank's stream.
        """
        if self._training_rng is None or self._training_rng.device != self.device:
            seed = (torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63
            self._training_rng = torch.Generator(device=self.device).manual_seed(seed)
        return self._training_rng

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    # --- held-out evaluation: validation and test log the same measures, each under its stage's prefix ---------
    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        """Log this held-out batch's measures as ``<stage>/<name>`` (``stage``: ``val`` or ``test``), e.g.
        ``val/nll_bpd``; ``validation_step`` and ``test_step`` both call it."""
        raise NotImplementedError(f"{type(self).__name__} defines no evaluation_step (or validation_step/test_step)")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "test")

    def logging_this_batch(self) -> bool:
        """Whether Lightning writes this training batch's step metrics (every ``log_every_n_steps``
        batches; always outside a Trainer). Training steps log only then: the logger would drop the
        other batches' values, and each ``self.log`` call has a cost that is not small against a small
        model's step on a CPU."""
        return self._trainer is None or self.trainer._logger_connector.should_update_logs

    def on_fit_start(self) -> None:
        reason = emulated_bfloat16_reason(self.trainer.precision, self.device)
        if reason is not None:
            rank_zero_warn(f"precision {self.trainer.precision} on this CPU is likely slower than 32-bit ({reason}); "
                           "pass --trainer.precision 32-true")

    # --- compiled networks (``compile: true``) -----------------------------------------------------
    compile_networks: bool = False  # set from each model's ``compile`` argument

    def networks_to_compile(self) -> list[nn.Module]:
        """The networks whose ``forward`` ``compile: true`` compiles (never the LightningModule itself)."""
        raise NotImplementedError

    def configure_model(self) -> None:
        """Compile the networks in place (``nn.Module.compile``) when ``compile`` is set.

        In place, so parameter names and state-dict keys stay those of the eager networks: checkpoints of
        compiled and eager runs load into each other. Compilation itself happens lazily, on the first
        batch (its time counts in the run's budget). Where compilation is unavailable the run goes on
        eagerly after a warning that says why.
        """
        if not self.compile_networks:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        reason = compile_unavailable_reason(device)
        if reason is not None:
            rank_zero_warn(f"compile: true was asked for but torch.compile is unavailable here ({reason}); "
                           "training with eager networks")
            return
        for network in self.networks_to_compile():
            if not getattr(network, "_lightning_gen_compiled", False):
                network.compile()
                network._lightning_gen_compiled = True

    def check_data_classes(self) -> None:
        """A class-conditional model (``num_classes`` set) must have as many classes as its data; call it
        from ``setup``. Raises ``ConfigValueError`` naming the setting to change."""
        wanted = getattr(self, "num_classes", None)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if wanted is not None and data_classes is not None and data_classes != wanted:
            raise ConfigValueError(f"the model is conditioned on {wanted} classes but the data has "
                                   f"{data_classes}; set model.init_args.num_classes: {data_classes}")

    def batch_labels(self, batch) -> Tensor | None:
        """The labels ``[N]`` of an ``(images, labels)`` batch for a class-conditional model (``num_classes``
        set), else None; a conditional model given images alone is a ``ConfigValueError``."""
        if getattr(self, "num_classes", None) is None:
            return None
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ConfigValueError(f"a class-conditional {type(self).__name__} needs (images, labels) batches")
        return batch[1]

    def guard_finite(self, gradient_terms: dict[str, Tensor] | None = None, **losses: Tensor) -> None:
        """Stop training with a clear message on a non-finite loss, before it reaches the weights.

        Raising here (not stepping) leaves weights, optimizer states and every checkpoint already
        written untouched: the last good checkpoint stays the one to resume from.

        ``gradient_terms``: loss terms computed from gradients (a GAN's gradient penalty, R1). Under an AMP
        grad scaler (``16-mixed``) their gradients come from a scaled backward pass, and a non-finite value
        is an overflow of that scaling: the training backward carries it into the weights' gradients, the
        scaler skips the step and halves its scale. That is no divergence while the scale is above 1; at
        scale 1 or below the unscaled gradient itself overflows, and it is one.
        """
        bad = {name: float(value.detach().sum()) for name, value in losses.items() if not torch.isfinite(value).all()}
        overflowed = {name: float(value.detach().sum()) for name, value in (gradient_terms or {}).items()
                      if not torch.isfinite(value).all()}
        if overflowed:
            plugin = self._trainer.precision_plugin if self._trainer is not None else None
            scaler = getattr(plugin, "scaler", None)
            if scaler is None or not scaler.is_enabled() or scaler.get_scale() <= 1:
                bad.update(overflowed)
        if not bad:
            return
        trainer = self._trainer
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}" if trainer else "outside training"
        last = ""
        if trainer is not None and trainer.checkpoint_callback is not None:
            last = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
        raise DivergenceError(
            f"training diverged: {', '.join(f'{k}={v}' for k, v in bad.items())} at {where}. "
            + (f"The last good checkpoint is {last}; resume from it with --ckpt_path and " if last else "Try ")
            + "lower learning rates, another objective, or gradient clipping."
        )

    def on_before_optimizer_step(self, optimizer) -> None:
        kill_point("optimizer_step")  # the crash tests' seam: gradients computed, weights not yet updated

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Per-image outputs for the ``predict`` command (the AE's codes, the PixelCNN's likelihoods); a
        model with none (the GAN) refuses, pointing at ``sample``, instead of Lightning's call of ``forward``."""
        raise LightningGenError(
            f"{type(self).__name__} has no per-image output for `predict`. Draw samples with "
            "`python -m lightning_gen sample --ckpt_path CKPT --num_samples N --out DIR`, or score the test split "
            "with `test`.")

    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [0, 1] -> what ``encode`` and ``log_likelihood`` take (identity unless overridden)."""
        return images

    @property
    def num_dims(self) -> int:
        return math.prod(self.data_shape)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning builds the checkpoint on every process (and writes it on rank 0), so gathering here is safe
        state = self.training_rng.get_state()
        states = [state]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
        checkpoint[RNG_KEY] = {
            "torch": torch.get_rng_state(),  # orders the data of a single-process run
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "training": states,  # one per process, by rank
            "training_device": str(self.training_rng.device),
        }
        checkpoint[MODEL_CLASS_KEY] = class_path(type(self))
        checkpoint[FORMAT_KEY], checkpoint[WRITER_KEY] = FORMAT_VERSION, __version__
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None and getattr(datamodule, "hparams", None) is not None:
            init_args = {k: v for k, v in datamodule.hparams.items() if not k.startswith("_")}
            checkpoint[DATAMODULE_KEY] = {"class_path": class_path(type(datamodule)), "init_args": init_args}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # runs before the state dict is loaded, both for `fit --ckpt_path` and `load_from_checkpoint`
        check_format(checkpoint)
        check_model_class(checkpoint, type(self))
        states = checkpoint.get(RNG_KEY)
        if not states or self._trainer is None:
            return  # plain loading for sampling: leave the caller's RNG alone
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        saved, rank = states["training"], self.global_rank
        if torch.device(states["training_device"]).type != self.device.type:
            # generator states do not carry over between device types
            rank_zero_warn(f"the checkpoint's training noise came from {states['training_device']}; on "
                           f"{self.device} it restarts from the per-process seeds")
            self._training_rng = None
            return
        self._training_rng = torch.Generator(device=self.device)
        if len(saved) == self.trainer.world_size:
            self._training_rng.set_state(saved[rank])
        else:  # resumed on another number of processes: continue rank 0's stream, offset per rank
            rank_zero_warn(f"the checkpoint was written by {len(saved)} process(es) and is resumed on "
                           f"{self.trainer.world_size}: training noise continues from new per-process seeds")
            self._training_rng.set_state(saved[0])
            draw = torch.randint(2**62, (1,), generator=self._training_rng, device=self.device)
            self._training_rng.manual_seed(int(draw) + rank)

    @classmethod
    def load_checkpoint(cls, path: str | Path, map_location: Any = "cpu", **overrides: Any) -> "GenerativeModule":
        """``load_from_checkpoint`` with clear errors for a missing, corrupt or foreign checkpoint (one read)."""
        checkpoint = read_checkpoint(path)
        check_model_class(checkpoint, cls, path)
        return model_from_checkpoint(checkpoint, cls, **overrides).to(map_location)
