"""Sample quality after a fixed wall-clock budget: each family's default config, trained through the CLI,
against plain-PyTorch scripts written as a competent user would write them, on Fashion-MNIST.

    python benchmarks/quality_at_budget.py --family gan --minutes 5 --seeds 3
    python benchmarks/quality_at_budget.py --family all        # 5 min; 3 seeds for gan and vae, 1 for the others
    python benchmarks/quality_at_budget.py --family flow_matching --flow-matching-samples 2000   # + the peer torchcfm
    python benchmarks/quality_at_budget.py --family vae --minutes 15 --seeds 1
    python benchmarks/quality_at_budget.py --report --family all --minutes 15   # only the table of stored results
    python benchmarks/quality_at_budget.py --quick             # 0.5 s per run, tiny evaluation: a crash check

Each run appends one JSON line to ``--results`` (default benchmarks/quality_at_budget.jsonl; ``--quick``
writes to a temporary file): family, contender, setting, seed, budget, images trained, metrics, machine,
library versions, date. Then the script prints a table of every stored result of the chosen families at
the chosen budget: per contender the FID of each seed (the latest run of each), the median and the worst
seed (highest FID), medians of the other metrics, and default / baseline median FID, where "the
baseline" is the better (lower median FID) of the two plain settings, so that it is not a straw man.
The flow families also have a "peer" contender, a peer library's own recipe (``peer-torchcfm``,
``peer-normflows``), with default / peer median FID beside it; the solver and NFE of every sampler that
reports them (flow matching) stand beside its row.

The contenders run one after another on this machine, never two at once, for one seed after another;
each seed seeds every contender the same way (``--seed_everything SEED`` / ``torch.manual_seed(SEED)``).
All use torch's default thread count (printed) and the device the configs' ``accelerator: auto`` picks.

lightning-gen: ``python -m lightning_gen fit --config configs/<family>_fmnist.yaml --seed_everything SEED
--trainer.max_epochs -1 --trainer.max_time <budget> --trainer.enable_progress_bar false``, run in this process through
``LightningGenCLI`` (in a temporary working folder, so ``runs/`` lands there) with one extra callback
that stops training at the first batch end after the budget. Its clock starts before the CLI parses the
config, so the budget pays for everything the config does: parsing, data loading, the sanity check,
every validation epoch with its evaluation callback (FID etc. on 3000 samples), pictures, checkpoints.
(Python's imports happen once, before any clock, for every contender.)
The budget replaces the config's epoch count (max_epochs -1) and is passed as ``max_time``, as a user would, so
that a config's budget-aware callbacks (``BudgetLRDecay``) see it; Lightning's timer starts only when
training starts, so the extra callback above, whose clock started earlier, is what ends the run. The
validation Lightning runs after the stop changes no weight and is not counted (``wall_seconds`` in the
results includes it).
``--quick`` also passes ``--trainer.limit_val_batches 0`` (no validation, so no evaluation callback).

plain PyTorch, two standard settings per family; the nets are defined below in a few lines each, the data
is the configs' split (``FashionMNISTDataModule``, 54k training images, no workers); the clock starts
before the data is loaded and the nets are built:
- gan: DCGAN (Radford et al. 2016) sized for 28x28: G z(100) -> linear 128x7x7 -> BN, ReLU -> 4x4
  stride-2 transposed conv 64 -> BN, ReLU -> transposed conv 1 -> tanh; D 4x4 stride-2 conv 64 ->
  LeakyReLU(0.2) -> conv 128 -> BN, LeakyReLU -> linear logit; weights N(0, 0.02); non-saturating BCE;
  Adam 2e-4, betas (0.5, 0.999). A: batch 64; B: batch 128. Samples from G in eval mode (BN running stats).
- vae: a Bernoulli decoder (BCE with logits against the [0, 1] pixels, summed per image) plus the
  closed-form KL, one reparameterised sample, Adam 1e-3, batch 128, 20 latents. A: the PyTorch example's
  MLP 784-400-20; B: a small conv net (4x4 stride-2 convs 32, 64 channels, then linear; the decoder
  mirrors it). Samples: z ~ N(0, I) through the decoder, its Bernoulli probabilities as the image.
- ae: the vae's nets and loss without the KL (a deterministic 20-d code). Sampled like the package's AE:
  decode draws from a full-covariance Gaussian fitted to training codes (here the codes of the first
  10,000 training images after training; the package's AE uses those of its last training epoch).
- pixelcnn: the classic PixelCNN (van den Oord et al. 2016a): 7x7 mask-A conv, then ReLU + 3x3 mask-B
  convs, then ReLU, 1x1 conv, ReLU, 1x1 conv to a 256-way softmax per pixel; cross-entropy, Adam 1e-3,
  batch 64 (the config's). A: 32 wide, 5 mask-B layers; B: 64 wide, 7 mask-B layers.
- flow_matching and flow (issue 35): the plain scripts and the peer recipes are in baselines.py (its
  docstring has the details): flow matching, a rectified-flow U-Net 32 wide with Euler sampling at NFE 50,
  A batch 64 / B batch 128, and torchcfm's exact-OT CFM recipe of its MNIST example (dopri5); flow, a
  RealNVP (checkerboard and channel couplings, logit preprocessing), A 32 / B 64 hidden channels, and
  normflows' Glow example (L=2, K=16). They need the ``bench`` extra (torchcfm, normflows).

Evaluation, after the budget, the same for every contender and not counted in it: the final in-memory
model (for lightning-gen what ``sample`` uses: the GAN's EMA generator, the AE's fitted code Gaussian),
``lightning_gen.metrics.evaluate_model`` with FID, KID, precision and recall (k=3) in ``fmnist_clf``
features, ``--num-samples`` samples (sample seed 0) vs as many test images (10,000: the whole test split);
pixelcnn ``--pixelcnn-samples`` (default 500: the plain nets sample by 784 network passes, one per pixel,
each over the window the pixel can see; setting B takes minutes for 500 samples on 2 cores); flow_matching
``--flow-matching-samples`` (default 2,000: every sample costs NFE network passes). bits/dim on
the first ``--nll-images`` test images where the model has a discrete likelihood of 8-bit pixels:
lightning-gen's VAE (IWAE bound, the config's 128 importance samples), every PixelCNN (exact) and every
flow (exact density of uniformly dequantised data: a bound on the 8-bit likelihood); the
Bernoulli baselines model [0, 1] intensities, not 8-bit levels, and the GAN and AE have none ("n/a");
flow matching's baselines have none, and lightning-gen's ODE likelihood runs only with
``--flow-matching-nll-images`` > 0 (default 0: it costs ~100 samples' worth per image).
Also: images trained, images trained per second of budget, and for lightning-gen the share of the
training clock spent outside training steps (start-up, fetching batches, validation, the evaluation
callback, pictures, checkpoints), with the evaluation callback's own share in brackets.
FID depends on the number of samples, so compare numbers only within one family and budget.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from baselines import (  # noqa: E402  (benchmarks/ is the script's folder)
    DEVICE,
    SHAPE,
    Trained,
    fashion_mnist,
    train_normflows_glow,
    train_plain_flow,
    train_plain_flow_matching,
    train_torchcfm,
)
from budget import StopAfter, batches_until, train_plain  # noqa: E402
from machine_info import cpu_name  # noqa: E402
from torch import Tensor, nn

import lightning_gen
from lightning_gen.cli import LightningGenCLI
from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.metrics.finite import NonFiniteSamplesError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "benchmarks" / "quality_at_budget.jsonl"
FAMILIES = ("ae", "vae", "gan", "pixelcnn", "flow_matching", "flow")
# without --seeds: the full set of issue 14 (and one seed for issue 35's flow families: sampling is the cost)
SEEDS_BY_FAMILY = {"gan": 3, "vae": 3, "ae": 1, "pixelcnn": 1, "flow_matching": 1, "flow": 1}
FEATURES = "fmnist_clf"
# the peer library of each family that has one: its contender's key is "peer-<library>"
PEERS = {"flow_matching": "torchcfm", "flow": "normflows"}
CONTENDER_KEYS = ("lightning-gen", "plain-A", "plain-B", *(f"peer-{library}" for library in PEERS.values()))

# --quick: 0.5 s budgets (at least one batch); a PixelCNN sampler's cost is 784 network passes whatever the
# batch, and a flow-matching sampler's NFE passes (the peer's adaptive solver picks its own), so few samples
QUICK_MINUTES, QUICK_SAMPLES, QUICK_PIXELCNN_SAMPLES, QUICK_NLL_IMAGES = 0.5 / 60, 50, 8, 10
QUICK_FLOW_MATCHING_SAMPLES = 8
# the flow families' plain and peer contenders train one batch of a few images (lightning-gen: its config's);
# the plain flow-matching sampler takes a few Euler steps (the peer's dopri5 chooses its own)
QUICK_BATCH = 8
QUICK_PLAIN = {"flow_matching": {"batch_size": QUICK_BATCH, "nfe": 4}, "flow": {"batch_size": QUICK_BATCH}}


@dataclass(frozen=True)
class Contender:
    contender: str  # "lightning-gen", "plain" or "peer"
    setting: str  # the config, the plain setting "A" / "B", or the peer's library
    description: str
    train: Callable[[float, int], Trained]  # (budget seconds, seed) -> the trained model

    @property
    def key(self) -> str:
        return self.contender if self.contender == "lightning-gen" else f"{self.contender}-{self.setting}"


# --- lightning-gen: the default config through the CLI --------------------------------------------
def max_time(seconds: float) -> str:
    """Lightning's ``max_time`` string, DD:HH:MM:SS, for a budget rounded up to a whole second."""
    whole = math.ceil(seconds)
    return f"{whole // 86400:02d}:{whole // 3600 % 24:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def train_default(family: str, seconds: float, seed: int, quick: bool = False,
                  overrides: tuple[str, ...] = (), keep_runs: Path | None = None) -> Trained:
    """The family's config through the CLI, in a temporary folder, or with ``keep_runs`` in
    ``keep_runs/<family>-seed<S>-<M>min`` (its ``runs/`` folder and checkpoints, for ``compare``)."""
    started = time.perf_counter()
    clock = StopAfter(seconds, started=started)
    args = ["fit", "--config", str(REPO / "configs" / f"{family}_fmnist.yaml"), f"--seed_everything={seed}",
            "--trainer.max_epochs=-1", f"--trainer.max_time={max_time(seconds)}", "--trainer.enable_progress_bar=false",
            *(["--trainer.limit_val_batches=0"] if quick else []), *(f"--{option}" for option in overrides)]
    # the CLI's run summary goes to stderr: stdout is this benchmark's table
    if keep_runs is None:
        where = tempfile.TemporaryDirectory()
    else:
        kept = Path(keep_runs) / f"{family}-seed{seed}-{seconds / 60:g}min"
        kept.mkdir(parents=True, exist_ok=True)
        where = contextlib.nullcontext(kept)
    with where as folder, contextlib.chdir(folder), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # sys.argv is ours, not the CLI's
        cli = LightningGenCLI(args=args, trainer_defaults={"callbacks": [clock]})
    evaluation = sum(callback.seconds_spent for callback in cli.trainer.callbacks if hasattr(callback, "seconds_spent"))
    return Trained(cli.model, clock.images, clock.seconds, time.perf_counter() - started, clock.in_batches, evaluation)


# --- plain PyTorch: the training loops (the flow families' and the peers': baselines.py) ------------------
# GAN
LATENT_GAN = 100


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: conv and linear weights from N(0, 0.02), batch-norm scales from N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def dcgan_generator() -> nn.Module:
    return nn.Sequential(
        nn.Linear(LATENT_GAN, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (128, 7, 7)),
        nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),  # (N, 64, 14, 14)
        nn.ConvTranspose2d(64, 1, 4, stride=2, padding=1), nn.Tanh(),  # (N, 1, 28, 28) in [-1, 1]
    )


def dcgan_discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # (N, 64, 14, 14)
        nn.Conv2d(64, 128, 4, stride=2, padding=1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),  # (N, 128, 7, 7)
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1), nn.Flatten(0),  # (N,) logits
    )


class GeneratorSamples(nn.Module):
    data_shape = SHAPE

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, LATENT_GAN, generator=generator, device=DEVICE)
        return (self.generator(z) + 1) / 2


def train_plain_gan(batch_size: int, seconds: float, seed: int) -> Trained:
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = fashion_mnist(batch_size)
    g, d = dcgan_generator().to(DEVICE), dcgan_discriminator().to(DEVICE)
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    images = 0
    for x, _ in batches_until(started + seconds, data.train_dataloader):
        real = x.to(DEVICE) * 2 - 1  # the generator's tanh range
        ones, zeros = torch.ones(len(real), device=DEVICE), torch.zeros(len(real), device=DEVICE)
        fake = g(torch.randn(len(real), LATENT_GAN, device=DEVICE))
        loss_d = F.binary_cross_entropy_with_logits(d(real), ones) + \
            F.binary_cross_entropy_with_logits(d(fake.detach()), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(d(fake), ones)  # non-saturating
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        images += len(real)
    seconds_used = time.perf_counter() - started
    return Trained(GeneratorSamples(g), images, seconds_used, seconds_used)


# AE and VAE
LATENT_AE = 20


def mlp_nets(code_size: int) -> tuple[nn.Module, nn.Module]:
    """The PyTorch example's VAE nets: 784-400-code, and 20-400-784 logits."""
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, code_size))
    decoder = nn.Sequential(nn.Linear(LATENT_AE, 400), nn.ReLU(), nn.Linear(400, 784), nn.Unflatten(1, SHAPE))
    return encoder, decoder


def conv_nets(code_size: int) -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(
        nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),  # (N, 32, 14, 14)
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # (N, 64, 7, 7)
        nn.Flatten(), nn.Linear(64 * 7 * 7, code_size),
    )
    decoder = nn.Sequential(
        nn.Linear(LATENT_AE, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # (N, 32, 14, 14)
        nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),  # (N, 1, 28, 28) logits
    )
    return encoder, decoder


class BernoulliAutoencoder(nn.Module):
    """decoder(z) are the logits of p(x|z), one Bernoulli per pixel, fitted to the [0, 1] intensities.

    ``variational``: the encoder gives q(z|x) = N(mean, diag(exp(logvar))) and the prior is N(0, I) (a
    VAE); otherwise the code is deterministic (an AE), sampled from a Gaussian fitted to training codes.
    """

    data_shape = SHAPE

    def __init__(self, nets: Callable[[int], tuple[nn.Module, nn.Module]], variational: bool):
        super().__init__()
        self.variational = variational
        self.encoder, self.decoder = nets(2 * LATENT_AE if variational else LATENT_AE)
        self.register_buffer("code_mean", torch.zeros(LATENT_AE))
        self.register_buffer("code_scale_tril", torch.eye(LATENT_AE))

    def loss(self, x: Tensor) -> Tensor:
        """-ELBO (VAE) or the reconstruction cross-entropy (AE), nats per image, mean over the batch."""
        if self.variational:
            mean, logvar = self.encoder(x).chunk(2, dim=1)  # (N, 20) each
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)  # KL(q(z|x) || N(0, I)), (N,)
        else:
            z, kl = self.encoder(x), 0.0
        reconstruction = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum((1, 2, 3))
        return (reconstruction + kl).mean()

    @torch.no_grad()
    def fit_code_gaussian(self, images: Tensor) -> None:
        codes = torch.cat([self.encoder(chunk) for chunk in images.split(1000)]).double()  # (M, 20)
        covariance = torch.cov(codes.T, correction=0) + 1e-6 * torch.eye(LATENT_AE, dtype=torch.float64,
                                                                         device=codes.device)
        self.code_mean.copy_(codes.mean(0).float())
        self.code_scale_tril.copy_(torch.linalg.cholesky(covariance).float())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(n, LATENT_AE, generator=generator, device=DEVICE)
        z = eps if self.variational else self.code_mean + eps @ self.code_scale_tril.T
        return torch.sigmoid(self.decoder(z))


def train_plain_autoencoder(nets: Callable[[int], tuple[nn.Module, nn.Module]], variational: bool, seconds: float,
                            seed: int) -> Trained:
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = fashion_mnist(128)
    model = BernoulliAutoencoder(nets, variational).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, train_seconds = train_plain(seconds, data.train_dataloader, lambda x: model.loss(x.to(DEVICE)),
                                        optimizer, started=started)
    if not variational:
        first = torch.stack([data.train_set[i][0] for i in range(min(10_000, len(data.train_set)))])
        model.eval().fit_code_gaussian(first.to(DEVICE))
    return Trained(model, images, train_seconds, time.perf_counter() - started)


# PixelCNN
class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only the pixels above and left of the centre; mask "B" also the centre."""

    def __init__(self, mask: str, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        centre = kernel_size // 2
        allowed = torch.ones_like(self.weight)
        allowed[:, :, centre, centre + (mask == "B"):] = 0
        allowed[:, :, centre + 1:] = 0
        self.register_buffer("allowed", allowed)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.allowed, self.bias, padding=self.padding)


class ClassicPixelCNN(nn.Module):
    """images [N, 1, 28, 28] in [0, 1] -> logits [N, 256, 28, 28] of each pixel's 8-bit level."""

    data_shape = SHAPE

    def __init__(self, width: int, b_layers: int):
        super().__init__()
        layers = [MaskedConv2d("A", 1, width, 7)]
        for _ in range(b_layers):
            layers += [nn.ReLU(), MaskedConv2d("B", width, width, 3)]
        layers += [nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, 256, 1)]
        self.net = nn.Sequential(*layers)
        # the receptive field reaches this many rows up and columns to either side: 3 from the 7x7 conv,
        # 1 per 3x3 conv
        self.reach = 3 + b_layers

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return images

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact log p(x), ``[N]`` nats per image."""
        levels = torch.round(x[:, 0] * 255).long()  # (N, 28, 28)
        return -F.cross_entropy(self(x), levels, reduction="none").sum((1, 2))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        x = torch.zeros(n, *SHAPE, device=DEVICE)
        for i in range(SHAPE[1]):
            for j in range(SHAPE[2]):
                # one pass over the window pixel (i, j) sees gives its exact logits, at a fraction of the cost
                top, left = max(0, i - self.reach), max(0, j - self.reach)
                window = x[:, :, top: i + 1, left: j + self.reach + 1]
                logits = self(window)[:, :, -1, j - left]  # (n, 256)
                level = torch.multinomial(logits.softmax(1), 1, generator=generator)  # (n, 1)
                x[:, 0, i, j] = level[:, 0] / 255
        return x


def train_plain_pixelcnn(width: int, b_layers: int, seconds: float, seed: int) -> Trained:
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = fashion_mnist(64)
    model = ClassicPixelCNN(width, b_layers).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_of(x: Tensor) -> Tensor:  # nats per pixel
        x = x.to(DEVICE)
        return F.cross_entropy(model(x), torch.round(x[:, 0] * 255).long())

    images, train_seconds = train_plain(seconds, data.train_dataloader, loss_of, optimizer, started=started)
    return Trained(model, images, train_seconds, time.perf_counter() - started)


def contenders(family: str, quick: bool, overrides: tuple[str, ...] = (), keep_runs: Path | None = None
               ) -> list[Contender]:
    """lightning-gen's default config (with ``overrides``, command-line options without their leading
    dashes, for an ablation), then the two plain settings, then the peer library's recipe where there is one."""
    plain = {
        "gan": [("A", "DCGAN, batch 64", functools.partial(train_plain_gan, 64)),
                ("B", "DCGAN, batch 128", functools.partial(train_plain_gan, 128))],
        "vae": [("A", "MLP 784-400-20, Bernoulli decoder", functools.partial(train_plain_autoencoder, mlp_nets, True)),
                ("B", "conv 32-64, 20 latents, Bernoulli decoder",
                 functools.partial(train_plain_autoencoder, conv_nets, True))],
        "ae": [("A", "MLP 784-400-20, BCE", functools.partial(train_plain_autoencoder, mlp_nets, False)),
               ("B", "conv 32-64, 20-d code, BCE", functools.partial(train_plain_autoencoder, conv_nets, False))],
        "pixelcnn": [("A", "classic, 32 wide, 5 mask-B layers", functools.partial(train_plain_pixelcnn, 32, 5)),
                     ("B", "classic, 64 wide, 7 mask-B layers", functools.partial(train_plain_pixelcnn, 64, 7))],
        "flow_matching": [
            ("A", "rectified flow, U-Net 32 wide, batch 64", functools.partial(train_plain_flow_matching,
                                                                                batch_size=64)),
            ("B", "rectified flow, U-Net 32 wide, batch 128", functools.partial(train_plain_flow_matching,
                                                                                 batch_size=128))],
        "flow": [("A", "RealNVP, 32 hidden channels, batch 64", functools.partial(train_plain_flow, hidden=32)),
                 ("B", "RealNVP, 64 hidden channels, batch 64", functools.partial(train_plain_flow, hidden=64))],
    }[family]
    peer = {"flow_matching": ("their MNIST example: exact-OT CFM, sigma 0, their U-Net 32 wide, batch 128",
                              train_torchcfm),
            "flow": ("their Glow example: L=2, K=16, 256 hidden, Adamax 1e-3, batch 128", train_normflows_glow),
            }.get(family)
    if quick and family in PEERS:  # their nets are heavy for a CPU: a crash check trains one small batch
        plain = [(setting, description, functools.partial(train, **QUICK_PLAIN[family]))
                 for setting, description, train in plain]
        peer = (peer[0], functools.partial(peer[1], batch_size=QUICK_BATCH))
    setting = " ".join([f"configs/{family}_fmnist.yaml", *overrides])
    default = Contender("lightning-gen", setting,
                        "the default config through the CLI" + " with changes" * bool(overrides),
                        functools.partial(train_default, family, quick=quick, overrides=tuple(overrides),
                                          keep_runs=keep_runs))
    return [default, *(Contender("plain", setting, description, train) for setting, description, train in plain),
            *([Contender("peer", PEERS[family], *peer)] if peer else [])]


# --- evaluation, after the budget ---------------------------------------------------------------
def evaluate(model: nn.Module, num_samples: int, nll_images: int, inception_samples: int = 0) -> dict[str, float]:
    """FID, KID, precision, recall (``fmnist_clf``: ``num_samples`` samples vs as many test images);
    where the model has ``log_likelihood`` and ``nll_images`` > 0, ``nll_bpd`` (bits/dim, the first
    ``nll_images`` test images); with ``inception_samples`` > 0, ``fid_inception`` (the field's FID:
    Inception-v3 features of that many samples vs as many test images, ~5 images/s on this CPU)."""
    model.to(DEVICE)
    data = FashionMNISTDataModule()

    def scores(metrics: list[str], real: int, **options) -> dict[str, float]:
        settings = EvaluationSettings(metrics=metrics, split="test", max_real=real, progress=False, **options)
        return {r.name: r.value for r in evaluate_model(model, data, settings, DEVICE)}

    sample_quality = scores(["fid", "kid", "precision_recall"], num_samples, num_samples=num_samples,
                            features=FEATURES)
    values = {name.removesuffix(f"_{FEATURES}"): value for name, value in sample_quality.items()}
    if nll_images > 0 and callable(getattr(model, "log_likelihood", None)):
        values.update(scores(["nll_bpd"], nll_images))
    if inception_samples > 0:
        values.update(scores(["fid"], inception_samples, num_samples=inception_samples, features="inception"))
    return values


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"}


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages: other processes on the machine distort a wall-clock budget."""
    return [round(x, 2) for x in os.getloadavg()]


def run_one(family: str, contender: Contender, seed: int, args) -> dict:
    """Train ``contender`` for the budget, evaluate it, and return its result record."""
    load_before = load_average()
    # the config as it was when training read it, even if the file changes during the run
    digest = config_digest(family) if contender.contender == "lightning-gen" else None
    trained = contender.train(args.minutes * 60, seed)
    evaluation_started = time.perf_counter()
    num_samples = {"pixelcnn": args.pixelcnn_samples, "flow_matching": args.flow_matching_samples}.get(
        family, args.num_samples)
    nll_images = args.flow_matching_nll_images if family == "flow_matching" else args.nll_images
    metrics = evaluate(trained.model, num_samples, nll_images, args.inception_samples)
    # how the samples were drawn (solver, NFE) where the model says: read after evaluate, for an adaptive solver
    sampling = trained.model.sampling_protocol() if callable(getattr(trained.model, "sampling_protocol", None)) \
        else None
    if args.save_samples:
        save_samples(trained.model, args.save_samples / f"{family}-{contender.key}-seed{seed}-{args.minutes:g}min.npz",
                     args.save_samples_count)
    record = {
        "family": family, "contender": contender.contender, "setting": contender.setting,
        **({"config_digest": digest} if digest else {}),
        "description": contender.description, "seed": seed, "minutes": args.minutes,
        "budget_seconds": args.minutes * 60, "train_seconds": round(trained.train_seconds, 2),
        "wall_seconds": round(trained.wall_seconds, 2), "images_trained": trained.images,
        "images_per_budget_second": round(trained.images / (args.minutes * 60), 1), "metrics": metrics,
        **({"seconds_in_training_steps": round(trained.in_batches, 2),
            "evaluation_callback_seconds": round(trained.evaluation_seconds, 2)} if trained.in_batches else {}),
        "evaluation": {"features": FEATURES, "num_samples": num_samples, "num_real": num_samples, "split": "test",
                       "nll_images": nll_images if "nll_bpd" in metrics else None, "sample_seed": 0,
                       **({"inception_samples": args.inception_samples} if args.inception_samples else {}),
                       "seconds": round(time.perf_counter() - evaluation_started, 1),
                       **({"sampling": sampling} if sampling else {})},
        "machine": machine(), "load_average": {"before": load_before, "after": load_average()},
        "torch": torch.__version__, "lightning": lightning.__version__, "lightning_gen": lightning_gen.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": args.quick,
    }
    print(f"{family} seed {seed} {contender.key}: {trained.images:,} images, {trained.train_seconds:.1f} s to the "
          f"stop, {trained.wall_seconds:.1f} s wall; evaluation {record['evaluation']['seconds']:.0f} s, "
          f"FID {metrics['fid']:.1f}", file=sys.stderr, flush=True)
    return record


def save_samples(model: nn.Module, path: Path, n: int = 16) -> None:
    """``n`` samples (sample seed 0) as ``images``, uint8 NCHW, the layout ``sample`` writes."""
    with torch.no_grad():
        images = model.sample(n, torch.Generator(device=DEVICE).manual_seed(0)).clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=torch.round(images * 255).to(torch.uint8).cpu().numpy())


# --- the table ----------------------------------------------------------------------------------
def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config_digest(family: str, folder: Path = REPO / "configs") -> str:
    """The first 8 hex digits of the SHA-256 of the family's config as it is now: of its parsed content
    (canonical JSON), so that editing a comment or the layout keeps the results that the recipe earned,
    while any changed value starts a new row. (Records before 2026-12-03 hashed the file's bytes; their
    digests were converted through the config's git history, one record of an uncommitted variant aside.)"""
    content = yaml.safe_load((folder / f"{family}_fmnist.yaml").read_text())
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]


def setting_label(record: dict) -> str:
    """The setting, marked when a lightning-gen run trained an earlier version of the config file: the
    same name then holds another recipe, and its results must not mix with the current one's."""
    digest = record.get("config_digest")
    if record["contender"] != "lightning-gen" or digest == config_digest(record["family"]):
        return record["setting"]
    return f"{record['setting']} [earlier config{' ' + digest if digest else ''}]"


def latest_per_seed(records: list[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    """(contender, setting) -> seed -> the latest record (later lines of the file win)."""
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for record in records:
        groups.setdefault((record["contender"], setting_label(record)), {})[record["seed"]] = record
    return groups


def summarize(runs: dict[int, dict]) -> dict:
    """Per-seed FID, the median and the worst seed (highest FID), medians of the other numbers."""
    seeds = sorted(runs)

    def median(name: str) -> float | None:
        values = [runs[s]["metrics"][name] for s in seeds if name in runs[s]["metrics"]]
        return statistics.median(values) if values else None

    worst = max(seeds, key=lambda s: runs[s]["metrics"]["fid"])
    return {
        "seeds": seeds, "fid_per_seed": {s: runs[s]["metrics"]["fid"] for s in seeds}, "median_fid": median("fid"),
        "worst_fid": runs[worst]["metrics"]["fid"], "worst_seed": worst,
        **{f"median_{name}": median(name) for name in ("kid", "precision", "recall", "nll_bpd", "fid_inception")},
        "inception_samples": sorted({runs[s]["evaluation"].get("inception_samples") for s in seeds} - {None}),
        "median_overhead": _median_share(runs, "seconds_in_training_steps", outside=True),
        "median_evaluation": _median_share(runs, "evaluation_callback_seconds"),
        "median_images": statistics.median(runs[s]["images_trained"] for s in seeds),
        "median_images_per_second": statistics.median(runs[s]["images_per_budget_second"] for s in seeds),
        "description": runs[seeds[-1]]["description"], "sampling": _sampling_text(runs),
    }


def _sampling_text(runs: dict[int, dict]) -> str | None:
    """The ODE solver and NFE the samples were drawn with (median NFE over seeds: an adaptive solver varies),
    for the models that integrate an ODE (their sampling protocol has "nfe"); None for the others."""
    protocols = [r["evaluation"].get("sampling") or {} for r in runs.values()]
    protocols = [p for p in protocols if "nfe" in p]
    if not protocols:
        return None
    nfes = [p["nfe"] for p in protocols if p["nfe"] is not None]
    return f"{protocols[-1].get('solver', 'ODE')}, NFE {fmt(statistics.median(nfes), '.0f') if nfes else 'n/a'}"


def _inception_text(summary: dict) -> str:
    """The median Inception FID with its sample count ("n/a" where no seed measured it)."""
    if summary["median_fid_inception"] is None:
        return "n/a"
    return f"{summary['median_fid_inception']:.1f} ({'/'.join(f'{n:,}' for n in summary['inception_samples'])})"


def _median_share(runs: dict[int, dict], key: str, outside: bool = False) -> float | None:
    """Median over seeds of ``key`` seconds as a share of the training clock (``outside``: of the rest)."""
    shares = [(1 - r[key] / r["train_seconds"]) if outside else r[key] / r["train_seconds"]
              for r in runs.values() if key in r]
    return statistics.median(shares) if shares else None


def better_baseline(summaries: dict[tuple[str, str], dict], kind: str = "plain") -> tuple[str, str] | None:
    """The ``kind`` contender ("plain": of the two plain settings; "peer": the peer library's recipe) with the
    lowest median FID: the baseline the default is held against."""
    candidates = [key for key in summaries if key[0] == kind]
    return min(candidates, key=lambda key: summaries[key]["median_fid"]) if candidates else None


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def budget_text(minutes: float) -> str:
    return f"{minutes:g} min" if minutes >= 1 else f"{minutes * 60:.3g} s"


def fmt(value: float | None, digits: str | None = None) -> str:
    """``digits`` as given, else one decimal from 10 up and 4 significant digits below; None is "n/a"."""
    if value is None:
        return "n/a"
    return format(value, digits or (".1f" if abs(value) >= 10 else ".4g"))


def family_table(records: list[dict], family: str, minutes: float, quick: bool, results: Path) -> list[str]:
    """The table of ``family``'s results at this budget: one per evaluation protocol (number of samples),
    since FID depends on it."""
    runs = [r for r in records if r["family"] == family and math.isclose(r["minutes"], minutes)
            and r.get("quick", False) == quick]
    title = f"### {family}, {budget_text(minutes)} per run"
    if not runs:
        return [title, "", f"no results in {results} yet", ""]
    lines = []
    for num_samples in sorted({r["evaluation"]["num_samples"] for r in runs}, reverse=True):
        same_protocol = [r for r in runs if r["evaluation"]["num_samples"] == num_samples]
        lines += [f"{title}; {FEATURES} features of {num_samples} samples vs {num_samples} test images", "",
                  *protocol_table(same_protocol, results)]
    return lines


def protocol_table(runs: list[dict], results: Path) -> list[str]:
    """One row per contender and setting (lightning-gen, the plain settings, the peer), then default / baseline
    median FID for the better plain setting and for the peer."""
    order = {"lightning-gen": 0, "plain": 1, "peer": 2}
    groups = sorted(latest_per_seed(runs).items(), key=lambda item: (order.get(item[0][0], 3), item[0][1]))
    summaries = {key: summarize(seeds) for key, seeds in groups}
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['threads']} threads, {r['machine']['device']}"
                       for r in runs})
    lines = [f"{len(runs)} runs in {results} (the latest of each seed counts); "
             f"machine{'s (numbers mix machines!)' if len(machines) > 1 else ''}: {'; '.join(machines)}", "",
             "| contender | setting | seeds | FID per seed | median FID | worst FID (seed) | Inception FID (N) | KID "
             "| precision | recall | bits/dim | images trained | images/s of budget "
             "| outside training steps (evaluation) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (contender, setting), s in summaries.items():
        per_seed = ", ".join(f"{seed}: {fid:.1f}" for seed, fid in s["fid_per_seed"].items())
        label = setting if contender == "lightning-gen" else f"{setting}: {s['description']}"
        label += f" [{s['sampling']}]" if s["sampling"] else ""
        lines.append(
            f"| {contender} | {label} | {len(s['seeds'])} | {per_seed} | {s['median_fid']:.1f} "
            f"| {s['worst_fid']:.1f} ({s['worst_seed']}) | {_inception_text(s)} | {fmt(s['median_kid'])} "
            f"| {fmt(s['median_precision'], '.3f')} | {fmt(s['median_recall'], '.3f')} "
            f"| {fmt(s['median_nll_bpd'], '.4f')} | {s['median_images']:,.0f} | {s['median_images_per_second']:,.0f} "
            f"| {_percent(s['median_overhead'])} ({_percent(s['median_evaluation'])}) |")
    lines.append("")
    baseline, peer = better_baseline(summaries), better_baseline(summaries, "peer")
    current = ("lightning-gen", f"configs/{runs[0]['family']}_fmnist.yaml")  # no override, the config as it is now
    default = current if current in summaries else None
    if baseline and default:
        lines.append(f"the baseline: plain {baseline[1]} ({summaries[baseline]['description']}), the lower median FID "
                     f"of the plain settings; {_ratio_text(summaries, default, baseline, 'baseline')}")
    else:
        lines.append("no ratio: the default config and a plain baseline both need results at this budget")
    if peer and default:
        lines.append(f"the peer: {peer[1]}'s own recipe ({summaries[peer]['description']}); "
                     f"{_ratio_text(summaries, default, peer, 'peer')}")
    elif peer:
        lines.append("no peer ratio: the default config needs results at this budget")
    return [*lines, ""]


def _ratio_text(summaries: dict[tuple[str, str], dict], default: tuple[str, str], other: tuple[str, str],
                name: str) -> str:
    ratio = summaries[default]["median_fid"] / summaries[other]["median_fid"]
    return (f"default / {name} median FID = {ratio:.3f} "
            f"({'below 1: the default is better' if ratio < 1 else f'at or above 1: the {name} is better'})")


# --- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget of every run")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: 3 for gan and vae, 1 for the others)")
    parser.add_argument("--seed-list", type=int, nargs="+", help="these seeds instead of --seeds")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDER_KEYS, default=list(CONTENDER_KEYS),
                        help="a subset of the contenders (a family without a peer has no peer-* contender)")
    parser.add_argument("--num-samples", type=int, default=10_000, help="FID etc.: samples and test images")
    parser.add_argument("--pixelcnn-samples", type=int, default=500, help="the same for pixelcnn")
    parser.add_argument("--flow-matching-samples", type=int, default=2000,
                        help="the same for flow_matching (each sample costs NFE network passes)")
    parser.add_argument("--flow-matching-nll-images", type=int, default=0,
                        help="test images for flow_matching's bits/dim (only lightning-gen's model has one: an ODE "
                        "likelihood with Hutchinson's estimator, ~100x a sample's cost per image; default 0: none)")
    parser.add_argument("--nll-images", type=int, default=10_000, help="test images for bits/dim")
    parser.add_argument("--results", type=Path, help="JSONL to append to (default "
                        f"{DEFAULT_RESULTS.relative_to(REPO)}; with --quick a temporary file)")
    parser.add_argument("--override", nargs="+", default=[], metavar="OPTION=VALUE",
                        help="lightning-gen only, for ablations: CLI options added to the default config, e.g. "
                        "model.init_args.width=64 (recorded in the setting, a separate row of the table)")
    parser.add_argument("--save-samples", type=Path, metavar="FOLDER",
                        help="also write 16 samples of each trained contender to FOLDER/<family>-<contender>-seed<S>-"
                        "<M>min.npz (for docs/samples_figure.py)")
    parser.add_argument("--inception-samples", type=int, default=0, metavar="N",
                        help="also FID in Inception-v3 features (fid_inception), N samples vs N test images "
                        "(default 0: none; ~5 images/s on a 2-core CPU, the test images' statistics cached)")
    parser.add_argument("--keep-runs", type=Path, metavar="FOLDER",
                        help="lightning-gen's runs (checkpoints, logs) kept in FOLDER/<family>-seed<S>-<M>min, "
                        "for compare (default: a temporary folder, deleted)")
    parser.add_argument("--save-samples-count", type=int, default=16, metavar="N",
                        help="samples written by --save-samples (default 16)")
    parser.add_argument("--report", action="store_true", help="train nothing: print the table of stored results")
    parser.add_argument("--quick", action="store_true",
                        help="0.5 s per run, 50 samples (pixelcnn and flow_matching 8): a crash check")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.num_samples, args.pixelcnn_samples, args.nll_images = (
            QUICK_MINUTES, QUICK_SAMPLES, QUICK_PIXELCNN_SAMPLES, QUICK_NLL_IMAGES)
        args.flow_matching_samples = QUICK_FLOW_MATCHING_SAMPLES
        if args.seeds is None and args.seed_list is None:
            args.seeds = 1
    return args


def seeds_of(family: str, args: argparse.Namespace) -> list[int]:
    return args.seed_list or list(range(args.seeds if args.seeds is not None else SEEDS_BY_FAMILY[family]))


def check_peer_libraries(families, contender_keys) -> None:
    """Refuse to start when a chosen peer contender's library is missing (before any budget is spent)."""
    missing = [PEERS[f] for f in families if f in PEERS and f"peer-{PEERS[f]}" in contender_keys
               and importlib.util.find_spec(PEERS[f]) is None]
    if missing:
        raise SystemExit(f"the peer contenders need {', '.join(missing)}: pip install -e '.[bench]' (the benchmarks' "
                         f"extra), or leave them out with --contenders lightning-gen plain-A plain-B")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    families = FAMILIES if args.family == "all" else (args.family,)
    if not args.report:
        check_peer_libraries(families, args.contenders)
    with tempfile.TemporaryDirectory() as scratch:
        results = args.results or (Path(scratch) / "quality_at_budget.jsonl" if args.quick else DEFAULT_RESULTS)
        if not args.report:
            threads = torch.get_num_threads()
            for family in families:
                for seed in seeds_of(family, args):
                    for contender in contenders(family, args.quick, tuple(args.override), args.keep_runs):
                        if contender.key not in args.contenders:
                            continue
                        try:
                            record = run_one(family, contender, seed, args)
                        except NonFiniteSamplesError as error:  # a contender that diverged: said, not scored
                            print(f"{family} seed {seed} {contender.key}: not scored: {error}", file=sys.stderr)
                            continue
                        if torch.get_num_threads() != threads:
                            print(f"warning: torch threads changed from {threads} to {torch.get_num_threads()}",
                                  file=sys.stderr)
                        results.parent.mkdir(parents=True, exist_ok=True)
                        with open(results, "a") as out:
                            out.write(json.dumps(record) + "\n")
        print_tables(read_results(results), families, args, results)


def print_tables(records: list[dict], families, args: argparse.Namespace, results: Path) -> None:
    print(f"Sample quality at a fixed wall-clock budget, Fashion-MNIST: lightning-gen default configs (CLI) vs plain "
          f"PyTorch{' (quick: not meaningful)' * args.quick}")
    print(f"this machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads (torch's default, the same for every contender), device {DEVICE.type}")
    print("after the budget: FID, KID, precision, recall; bits/dim on the test split where defined; KID etc.: the "
          "median over seeds; worst: the seed with the highest FID\n")
    for family in families:
        print("\n".join(family_table(records, family, args.minutes, args.quick, results)))


if __name__ == "__main__":
    main()
