"""lightning-gen's GAN against a hand-written PyTorch DCGAN on Fashion-MNIST, same wall-clock budget.

    python benchmarks/gan_vs_plain.py [--minutes 10]

Three runs, one after another on the same machine, each for `--minutes` of training:
1. plain: a training loop as a user writes it by hand (the same DCGAN nets, BCE, Adam 2e-4, beta1 0.5,
   batch 128, the same data loader), no EMA;
2. lightning-gen with those identical settings (non-saturating BCE, no EMA, no R1): the throughput ratio;
3. lightning-gen's default configs/gan_fmnist.yaml (hinge, spectral norm, EMA generator).
Each is then judged by FID/precision/recall in the Fashion-MNIST classifier features, 10k samples
vs the 10k test images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import yaml

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.data.pixels import from_signed, to_signed
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.models import GAN
from lightning_gen.nets.gan import DCGANDiscriminator, DCGANGenerator

REPO = Path(__file__).resolve().parents[1]
LATENT, WIDTH, BATCH = 64, 64, 128


class PlainSampler(torch.nn.Module):
    """Wraps the hand-trained generator in the common ``sample`` surface for evaluation."""

    def __init__(self, generator):
        super().__init__()
        self.generator, self.data_shape = generator, (1, 28, 28)

    @torch.no_grad()
    def sample(self, n, generator=None):
        self.generator.eval()
        return from_signed(self.generator(torch.randn(n, LATENT, generator=generator)))


def plain_dcgan(seconds: float) -> tuple[PlainSampler, int, float]:
    torch.manual_seed(0)
    data = FashionMNISTDataModule(batch_size=BATCH)
    data.setup("fit")
    g, d = DCGANGenerator((1, 28, 28), LATENT, WIDTH), DCGANDiscriminator((1, 28, 28), WIDTH)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x, _ in data.train_dataloader():
            real = to_signed(x)
            fake = g(torch.randn(len(real), LATENT))
            d_loss = F.binary_cross_entropy_with_logits(d(real), torch.ones(len(real))) + \
                F.binary_cross_entropy_with_logits(d(fake.detach()), torch.zeros(len(real)))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = F.binary_cross_entropy_with_logits(d(fake), torch.ones(len(real)))
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            images += len(real)
            if time.perf_counter() - start >= seconds:
                break
    return PlainSampler(g), images, time.perf_counter() - start


class CountImages(pl.Callback):
    def __init__(self):
        self.images, self.seconds, self._start = 0, 0.0, 0.0

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += len(batch[0])

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self._start


def lightning_same_settings(seconds: float) -> tuple[GAN, int, float]:
    pl.seed_everything(0, verbose=False)
    model = GAN(latent_dim=LATENT, width=WIDTH, objective="non_saturating", ema_decay=0.0)
    counter = CountImages()
    trainer = pl.Trainer(max_time={"seconds": seconds}, max_epochs=-1, limit_val_batches=0, callbacks=[counter],
                         logger=pl.loggers.CSVLogger(tempfile.mkdtemp()), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=FashionMNISTDataModule(batch_size=BATCH))
    return model, counter.images, counter.seconds


def lightning_default_config(seconds: float) -> tuple[GAN, int, float]:
    from lightning_gen.cli import LightningGenCLI

    config = yaml.safe_load((REPO / "configs" / "gan_fmnist.yaml").read_text())
    config["trainer"].update(max_epochs=-1, max_time=time.strftime("00:%H:%M:%S", time.gmtime(seconds)),
                             enable_progress_bar=False, limit_val_batches=0, callbacks=[], enable_checkpointing=False)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "benchmark_input.yaml"
        path.write_text(yaml.safe_dump(config))
        cli = LightningGenCLI(args=["--config", str(path), "--trainer.default_root_dir", folder,
                                    "--trainer.logger", "false"], run=False)
        counter = CountImages()
        cli.trainer.callbacks.append(counter)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model, counter.images, counter.seconds


def quality(model, data, num_samples: int = 10_000) -> dict[str, float]:
    settings = EvaluationSettings(metrics=["fid", "precision_recall"], num_samples=num_samples, split="test",
                                  max_real=num_samples, progress=False)
    return {r.name.replace("_fmnist_clf", ""): r.value for r in evaluate_model(model, data, settings, "cpu")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="3 s each, 500 samples: a crash check (CI), not a timing")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 0.05
    seconds, num_samples = args.minutes * 60, 500 if args.quick else 10_000
    data = FashionMNISTDataModule()
    rows = []
    for name, run in (("plain PyTorch DCGAN", plain_dcgan), ("lightning-gen, same settings", lightning_same_settings),
                      ("lightning-gen gan_fmnist.yaml", lightning_default_config)):
        model, images, elapsed = run(seconds)
        rows.append((name, images / elapsed, images, quality(model, data, num_samples)))
        print(f"done: {name}", file=sys.stderr, flush=True)
    plain_rate = rows[0][1]
    print(f"\nGAN on Fashion-MNIST, {args.minutes:g} min of training each, batch {BATCH}, "
          f"{torch.get_num_threads()} threads; FID etc. in fmnist_clf features, "
          f"{num_samples} samples vs {num_samples} test images")
    print(f"{'run':<32} {'images/s':>9} {'vs plain':>9} {'images':>9} {'FID':>8} {'precision':>10} {'recall':>7}")
    for name, rate, images, q in rows:
        print(f"{name:<32} {rate:>9.0f} {rate / plain_rate:>8.3f}x {images:>9} {q['fid']:>8.1f} "
              f"{q['precision']:>10.3f} {q['recall']:>7.3f}")


if __name__ == "__main__":
    main()
