"""Throughput of the default VAE (configs/vae_fmnist.yaml) on this machine, printed as a table.

    python benchmarks/vae_throughput.py [--batches 100] [--quick]

Rows measured side by side in one run, so ratios are meaningful on a noisy machine:
- data only: iterating the Fashion-MNIST train loader (the ceiling set by data loading);
- train step: Lightning fit steps (forward, backward, Adam) at the default batch size;
- IWAE eval: images/s of ``log_likelihood`` with k importance samples (what val/test cost).
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch
from budget import print_ratios  # noqa: E402  (benchmarks/ is the script's folder)

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.models import VAE


def images_per_second(fn, images: int) -> float:
    start = time.perf_counter()
    fn()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="5 batches, k up to 8: a crash check (CI), not a timing")
    args = parser.parse_args()
    if args.quick:
        args.batches = 5
    pl.seed_everything(0, verbose=False)
    data = FashionMNISTDataModule(batch_size=args.batch_size)
    data.setup("fit")
    n_images = args.batches * args.batch_size

    def data_only():
        for i, _ in enumerate(data.train_dataloader()):
            if i + 1 == args.batches:
                break

    model = VAE(data_shape=data.data_shape, latent_dim=16, kl_warmup_steps=1000)
    trainer = pl.Trainer(max_steps=args.batches, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    rows = [("data only", images_per_second(data_only, n_images))]
    rows.append(("train step (fit)", images_per_second(lambda: trainer.fit(model, datamodule=data), n_images)))
    x = next(iter(data.val_dataloader()))[0]
    model.eval()
    for k in (1, 8) if args.quick else (1, 8, 128):
        rows.append((f"IWAE eval, k={k}", images_per_second(lambda: model.log_likelihood(x, k=k), len(x))))

    title = f"VAE throughput, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print_ratios(title, ("what", "images/s", "vs train step"), rows, reference=rows[1][1])


if __name__ == "__main__":
    main()
