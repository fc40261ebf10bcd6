"""What Lightning costs per training step: each default model fitted by ``lightning.pytorch.Trainer`` against a
plain PyTorch loop over the identical networks, loss maths, data loader, batch size and optimizer.

    python benchmarks/lightning_overhead.py [--models ae vae pixelcnn gan] [--rounds 5] [--block_seconds 5]
    python benchmarks/lightning_overhead.py --quick     # 1 round of 1 batch + 0.2 s per block, 1000 images

Models: configs/ae_fmnist.yaml, vae_fmnist.yaml, pixelcnn_fmnist.yaml and gan_fmnist.yaml, each built from the
config's model and data init args (Fashion-MNIST train split, the config's batch size, its optimizer). Two
instances are built with the same seed, so both sides start from the same weights:

- lightning: ``Trainer(max_epochs=-1)`` without validation, logger, checkpoints, progress bar, model summary or
  callbacks (but the one clock that stops it), running the model's own ``training_step``: for the GAN its
  manual optimisation with toggled optimizers and gradient-norm logging, for every model its ``self.log``
  calls and finiteness check, for the AE also the running statistics of its codes;
- plain: a hand-written loop over the same ``DataLoader`` object that computes the same loss with the
  package's own helpers and the second instance's modules (AE/VAE: likelihood, encoder, decoder, KL warm-up;
  PixelCNN: the gated net and its categorical pixels; GAN: G, spectral-norm D, hinge objective, D frozen
  during G's step, the EMA update), then ``zero_grad``, ``backward``, ``step``.

Timing: rounds of one block per side, alternating which side goes first (plain-lightning, lightning-plain,
...). A block trains ``--warmup`` (2) untimed batches (the Trainer's start-up, a new loader iterator,
first-touch allocations), then batches until ``--block_seconds`` have passed; a side's images/s = the median
over its blocks of timed images / timed seconds; ratio = lightning / plain of those medians (1.00: no
overhead; 0.95: Lightning is 5% slower); "ratio range" spans the per-round ratios; "batches/block" is the
median number of timed batches. "fit start s" is the median time from creating the Trainer to its first
batch. Units: images/s are training images per second. Load averages are printed with the table: other work
on the machine shows up in every timing (side by side, it distorts the ratio less than the rates).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import torch
import yaml
from budget import WarmupClock, descend  # noqa: E402  (benchmarks/ is the script's folder)

from lightning_gen.data.pixels import to_signed
from lightning_gen.losses import gaussian_kl_to_standard, reparameterize
from lightning_gen.models.autoencoder import linear_warmup

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {"ae": "ae_fmnist.yaml", "vae": "vae_fmnist.yaml", "pixelcnn": "pixelcnn_fmnist.yaml",
          "gan": "gan_fmnist.yaml"}


def import_class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def init_value(value):
    """A config init arg: ``{class_path, init_args}`` of an optimizer becomes a factory, like LightningCLI's."""
    if isinstance(value, dict) and "class_path" in value:
        return functools.partial(import_class(value["class_path"]), **value.get("init_args", {}))
    return value


def build(config_name: str, subset: int | None, seed: int = 0):
    """The config's DataModule (set up for fit), two instances of its model initialised from ``seed`` (so with
    the same weights), and the model's init args with optimizers as factories."""
    config = yaml.safe_load((CONFIGS / config_name).read_text())
    data = import_class(config["data"]["class_path"])(subset=subset, **config["data"].get("init_args", {}))
    data.setup("fit")
    init_args = {k: init_value(v) for k, v in config["model"].get("init_args", {}).items()}
    models = []
    for _ in range(2):
        pl.seed_everything(seed, verbose=False)
        models.append(import_class(config["model"]["class_path"])(data_shape=data.data_shape, **init_args))
    return data, models, init_args


# --- the plain loops: one training step on a batch of images in [0, 1], same maths as training_step -------
def plain_autoencoder(model, init_args) -> Callable[[torch.Tensor], None]:
    """AE: -log p(x | g(f(x))); VAE: -(log p(x | z) - beta_t KL), z ~ q(z|x) reparameterised."""
    variational = hasattr(model, "posterior")
    encoder, decoder, likelihood = model.encoder, model.decoder, model.likelihood
    optimizer = init_args["optimizer"](list(encoder.parameters()) + list(decoder.parameters()))
    noise = torch.Generator().manual_seed(1)
    encoder.train(), decoder.train()
    steps = 0

    def step(images: torch.Tensor) -> None:
        nonlocal steps
        x = likelihood.prepare(images, noise)
        if variational:
            mean, logvar = encoder(x).chunk(2, dim=1)  # (N, d) each
            z = reparameterize(mean, logvar, noise)
            log_px_z, kl = likelihood.log_prob(decoder(z), x), gaussian_kl_to_standard(mean, logvar)  # (N,)
            loss = (-log_px_z + linear_warmup(steps, model.kl_warmup_steps, model.beta) * kl).mean()
        else:
            loss = -likelihood.log_prob(decoder(encoder(x)), x).mean()
        descend(optimizer, loss)
        steps += 1

    return step


def plain_pixelcnn(model, init_args) -> Callable[[torch.Tensor], None]:
    net, distribution = model.net, model.distribution
    optimizer = init_args["optimizer"](net.parameters())
    net.train()

    def step(images: torch.Tensor) -> None:
        descend(optimizer, -distribution.log_prob(net(images), images).mean())  # nats per image

    return step


def plain_gan(model, init_args) -> Callable[[torch.Tensor], None]:
    g, d, ema, objective = model.generator, model.discriminator, model.generator_ema, model.objective
    opt_g = init_args["generator_optimizer"](g.parameters())
    opt_d = init_args["discriminator_optimizer"](d.parameters())
    noise = torch.Generator().manual_seed(1)
    g.train(), d.train()
    updates = 0

    def step(images: torch.Tensor) -> None:
        nonlocal updates
        real = to_signed(images)
        for _ in range(model.n_disc_steps):
            with torch.no_grad():
                fake = g(torch.randn(len(real), model.latent_dim, generator=noise))
            descend(opt_d, objective.discriminator_loss(d(real), d(fake)))
        for _ in range(model.n_gen_steps):
            d.requires_grad_(False)  # G's loss needs gradients through D, not for D's weights
            descend(opt_g, objective.generator_loss(d(g(torch.randn(len(real), model.latent_dim, generator=noise)))))
            d.requires_grad_(True)
            with torch.no_grad():  # the model's EMA schedule: decay min(ema_decay, (1 + n) / (10 + n))
                decay = min(model.ema_decay, (1 + updates) / (10 + updates))
                torch._foreach_lerp_(list(ema.parameters()), list(g.parameters()), 1.0 - decay)
            updates += 1

    return step


PLAIN_STEPS = {"ae": plain_autoencoder, "vae": plain_autoencoder, "pixelcnn": plain_pixelcnn, "gan": plain_gan}


# --- one timed block per side: ``warmup`` untimed batches, then batches until ``seconds`` have passed ------
def plain_block(step, loader, warmup: int, seconds: float) -> dict:
    seen, images, start = 0, 0, 0.0
    while True:  # a new iterator per epoch, as the Trainer makes one
        for x, _ in loader:
            step(x)
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
            elif seen > warmup:
                images += len(x)
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    return {"rate": images / elapsed, "batches": seen - warmup, "startup": 0.0}


def lightning_block(model, loader, warmup: int, seconds: float) -> dict:
    clock = WarmupClock(time.perf_counter(), warmup, seconds)
    trainer = pl.Trainer(max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(model, train_dataloaders=loader)
    return {"rate": clock.rate, "batches": clock.seen - warmup, "startup": clock.startup}


def measure(name: str, args) -> dict:
    data, (model, twin), init_args = build(MODELS[name], args.subset)  # twin: the plain loop's modules
    step, loader = PLAIN_STEPS[name](twin, init_args), data.train_dataloader()
    sides = {"plain": lambda: plain_block(step, loader, args.warmup, args.block_seconds),
             "lightning": lambda: lightning_block(model, loader, args.warmup, args.block_seconds)}
    blocks = {"plain": [], "lightning": []}
    for round_index in range(args.rounds):
        for side in ("plain", "lightning") if round_index % 2 == 0 else ("lightning", "plain"):
            blocks[side].append(sides[side]())
    rates = {side: [b["rate"] for b in done] for side, done in blocks.items()}
    per_round = [lit / plain for lit, plain in zip(rates["lightning"], rates["plain"])]
    plain, lit = statistics.median(rates["plain"]), statistics.median(rates["lightning"])
    print(f"done: {name}", file=sys.stderr, flush=True)
    return {"model": f"{name} ({MODELS[name]})", "batch": data.batch_size, "plain": plain, "lightning": lit,
            "ratio": lit / plain, "low": min(per_round), "high": max(per_round),
            "batches": statistics.median(b["batches"] for done in blocks.values() for b in done),
            "startup": statistics.median(b["startup"] for b in blocks["lightning"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5, help="blocks per side, alternating which side goes first")
    parser.add_argument("--block_seconds", type=float, default=5.0, help="timed training seconds of every block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches at the start of every block")
    parser.add_argument("--subset", type=int, default=None, help="first N images of the train set (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round, blocks of 1 batch + 0.2 s, 1000 images: a crash check")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.block_seconds, args.subset = 1, 1, 0.2, 1000
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first batch carries the start-up)")
    load_before = os.getloadavg()
    rows = [measure(name, args) for name in args.models]
    load_after = os.getloadavg()

    print(f"\nLightning overhead: Trainer vs a plain loop, identical nets, loss, loader and optimizer; Fashion-MNIST"
          f"{f' subset {args.subset}' if args.subset else ''}, {args.rounds} round(s), median images/s over the blocks"
          f"{' (quick: not a timing)' * args.quick}")
    print(f"torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()} threads; load average "
          f"(1/5/15 min) {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
          f"{' '.join(f'{x:.2f}' for x in load_after)} at the end\n")
    print("| model | batch | batches/block | plain img/s | lightning img/s | ratio | ratio range | fit start s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['batches']:.0f} | {r['plain']:.0f} | {r['lightning']:.0f} "
              f"| {r['ratio']:.3f} | {r['low']:.3f}-{r['high']:.3f} | {r['startup']:.2f} |")


if __name__ == "__main__":
    main()
