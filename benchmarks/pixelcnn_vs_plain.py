"""lightning-gen's gated PixelCNN against a hand-written PyTorch masked-conv PixelCNN, same wall-clock budget.

    python benchmarks/pixelcnn_vs_plain.py [--minutes 5]
    python benchmarks/pixelcnn_vs_plain.py --quick      # 300 images, a few seconds each, under a minute

Two runs, one after the other on this machine, each trained for `--minutes` of wall-clock time:
1. lightning-gen: configs/pixelcnn_fmnist.yaml's model (gated PixelCNN at the config's width, depth and kernel size,
   256-way categorical pixels) fitted by ``lightning.pytorch.Trainer`` (no validation, no logger);
2. plain PyTorch: a training loop as written by hand around ``ClassicPixelCNN`` (van den Oord 2016a: a 7x7
   type-A masked conv then 3x3 type-B masked convs, so it has the blind spot) sized to about the same
   number of parameters, with the loss -mean log p(x) of ``CategoricalPixels(1)``.
Both: Fashion-MNIST train split (54k images, ``FashionMNISTDataModule(batch_size=64)``), Adam lr 1e-3,
seed 0. Training images/s = images seen / training seconds. Then both are scored on the 10k test images
by their exact likelihood: NLL in nats/image and bits/dim = nats / (784 ln 2) (uniform 8-bit pixels: 8).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from budget import StopAfter, train_plain  # noqa: E402  (benchmarks/ is the script's folder)

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.losses.autoregressive import CategoricalPixels
from lightning_gen.models import PixelCNN
from lightning_gen.nets.pixelcnn import ClassicPixelCNN

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pixelcnn_fmnist.yaml"
BATCH, LR, SHAPE = 64, 1e-3, (1, 28, 28)
# 48 wide, 11 layers: 225,136 parameters against the gated default's 227,040 (-0.8%)
PLAIN_HIDDEN, PLAIN_LAYERS = 48, 11


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unmasked_weights(module: torch.nn.Module) -> int:
    """Parameters that can reach the output: masked-out kernel taps of causal convolutions do not count."""
    return parameters(module) - sum(int((m.mask == 0).sum()) for m in module.modules() if hasattr(m, "mask"))


def data(subset: int | None) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(batch_size=BATCH, val_fraction=0.1, split_seed=0, subset=subset)


def lightning_gated(seconds: float, subset: int | None) -> tuple[PixelCNN, int, float]:
    pl.seed_everything(0, verbose=False)
    init_args = dict(yaml.safe_load(CONFIG.read_text())["model"]["init_args"])
    init_args.pop("optimizer")
    model = PixelCNN(data_shape=SHAPE, optimizer=functools.partial(torch.optim.Adam, lr=LR), **init_args)
    clock = StopAfter(seconds)
    trainer = pl.Trainer(max_epochs=-1, limit_val_batches=0, callbacks=[clock], logger=False, accelerator="cpu",
                         devices=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data(subset))
    return model, clock.images, clock.seconds


def plain_classic(seconds: float, subset: int | None) -> tuple[ClassicPixelCNN, int, float]:
    pl.seed_everything(0, verbose=False)
    pixels = CategoricalPixels(1)
    net = ClassicPixelCNN(SHAPE, pixels.params_per_pixel, pixels.groups, PLAIN_HIDDEN, PLAIN_LAYERS)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    train_data = data(subset)
    train_data.setup("fit")
    net.train()
    images, elapsed = train_plain(seconds, train_data.train_dataloader,
                                  lambda x: -pixels.log_prob(net(x), x).mean(), optimizer)  # nats per image
    return net, images, elapsed


@torch.no_grad()
def test_nll_nats(log_likelihood, split: FashionMNISTDataModule) -> float:
    """Mean exact -log p(x) over the test split, nats per image."""
    total = 0.0
    for x, _ in split.split_dataloader("test", batch_size=500):
        total -= log_likelihood(x).sum().item()
    return total / len(split.test_set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall-clock budget of each run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="300-image subset, 5 s of training each")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds, subset = (5.0, 300) if args.quick else (args.minutes * 60, None)
    load_before = os.getloadavg()[0]  # 1-minute load: other processes on the machine distort the timings

    gated, gated_images, gated_s = lightning_gated(seconds, subset)
    print("done: lightning-gen training", file=sys.stderr, flush=True)
    classic, classic_images, classic_s = plain_classic(seconds, subset)
    print("done: plain training", file=sys.stderr, flush=True)
    gated.eval()
    classic.eval()
    pixels, split = CategoricalPixels(1), data(subset)
    split.setup(None)
    rows = [
        ("lightning-gen GatedPixelCNN (Trainer)", gated.net, gated_images, gated_s,
         test_nll_nats(gated.log_likelihood, split)),
        (f"plain PyTorch ClassicPixelCNN ({PLAIN_HIDDEN} wide, {PLAIN_LAYERS} layers)", classic, classic_images,
         classic_s, test_nll_nats(lambda x: pixels.log_prob(classic(x), x), split)),
    ]
    dims = math.prod(SHAPE)
    print(f"\nPixelCNN on Fashion-MNIST, {seconds:g} s of training each{' (quick: subset 300)' * args.quick}, "
          f"batch {BATCH}, Adam {LR:g}, seed 0; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"test NLL: exact, mean over {len(split.test_set)} test images; bits/dim = nats / ({dims} ln 2)\n")
    print("| run | parameters | unmasked | train s | images seen | epochs | train images/s "
          "| test NLL nats/image | test bits/dim |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, net, images, train_s, nats in rows:
        bits_per_dim = nats / (dims * math.log(2))
        print(f"| {name} | {parameters(net):,} | {unmasked_weights(net):,} | {train_s:.1f} | {images:,} "
              f"| {images / len(split.train_set):.2f} | {images / train_s:.1f} | {nats:.1f} | {bits_per_dim:.4f} |")
    ratio = parameters(rows[1][1]) / parameters(rows[0][1]) - 1
    print(f"\nparameter counts: plain / gated - 1 = {100 * ratio:+.1f}%")


if __name__ == "__main__":
    main()
