"""Can data loading hold training back? The DataModules' train loaders against the default VAE's training speed.

    python benchmarks/data_loading.py [--batches 400] [--folder_images 10000] [--workers 0 2] [--repeats 3]
    python benchmarks/data_loading.py --quick     # 5 batches, 300 PNGs: a crash check

Loaders, each with ``num_workers`` 0 and 2 (every DataModule supports both; workers are persistent) and the
train split at batch size 128, shuffled, as ``train_dataloader()`` gives it:

- Fashion-MNIST: the gzipped IDX files in /usr/share/datasets/fashion-mnist, decoded once into memory;
- image folder: ``ImageFolderDataModule`` over ``--folder_images`` Fashion-MNIST train images written as
  28x28 grayscale PNGs into 10 class sub-folders of a temporary directory (decoded on every access);
- toy ring8: ``ToyMixtureDataModule``'s 2-D points (points/s, not images: they feed the toy GAN);
- CIFAR-10: only where its files exist (``CIFAR10DataModule``'s default folder or $LIGHTNING_GEN_DATA);
  otherwise the row says "not present".

Columns: setup s = the DataModule's construction + ``setup("fit")`` (reading and decoding the files, or, for the
folder, scanning it; its PNGs are decoded while iterating); first batch s = from ``iter(loader)`` to the first
batch (worker start-up); images/s = the following batches (up to ``--batches``, at most one epoch) / their
seconds. Each is the median of ``--repeats`` measurements, each with a new DataModule. "vs VAE train" = loader
images/s / the training images/s of configs/vae_fmnist.yaml's VAE, fitted by the Trainer on batches already in
memory (its compute alone), measured before and after the loaders in this run (the mean is used). Below 1 the
loader alone cannot keep up; with 0 workers loading and training take turns, so at a ratio r about 1 / (1 + r)
of a step's time is loading. Load averages are printed: other work on the machine distorts every timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from budget import WarmupClock  # noqa: E402  (benchmarks/ is the script's folder)
from PIL import Image

from lightning_gen.data import CIFAR10DataModule, FashionMNISTDataModule, ImageFolderDataModule, ToyMixtureDataModule
from lightning_gen.data.pixels import to_uint8_levels
from lightning_gen.errors import LightningGenError
from lightning_gen.models import VAE

VAE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "vae_fmnist.yaml"
BATCH = 128


def write_pngs(folder: Path, count: int) -> None:
    """The first ``count`` Fashion-MNIST train images as PNGs in sub-folders named by class."""
    source = FashionMNISTDataModule(subset=count)
    source.setup("fit")
    pool = source.train_set.dataset  # the first `count` images, before the train/val split
    for index in range(count):
        image, label = pool[index]
        target = folder / f"class_{int(label)}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8_levels(image[0]).to(torch.uint8).numpy()).save(target / f"{index:05d}.png")


def time_loader(make, batches: int) -> dict:
    """Setup seconds, first-batch seconds and images/s of ``make()``'s train loader."""
    start = time.perf_counter()
    data = make()
    data.setup("fit")
    setup = time.perf_counter() - start
    loader = data.train_dataloader()
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    images, start = 0, time.perf_counter()
    for _ in range(min(batches, len(loader) - 1)):
        images += len(next(iterator)[0])
    rate = images / (time.perf_counter() - start)
    del iterator, loader  # stops the persistent workers
    return {"setup": setup, "first": first, "rate": rate, "images": images}


class Replay:
    """Batches already in memory as one iterable (Lightning reads a plain list as a list of loaders)."""

    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def vae_training_rate(batches: list, warmup: int = 2) -> float:
    """Training images/s of the default VAE on batches already in memory (no loading in the timing)."""
    init_args = dict(yaml.safe_load(VAE_CONFIG.read_text())["model"]["init_args"])
    optimizer = init_args.pop("optimizer")
    pl.seed_everything(0, verbose=False)
    model = VAE(data_shape=(1, 28, 28), optimizer=lambda params: torch.optim.Adam(params, **optimizer["init_args"]),
                **init_args)
    clock = WarmupClock(time.perf_counter(), warmup)
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(model, train_dataloaders=Replay(batches))
    return clock.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=400, help="timed batches per loader (at most one epoch)")
    parser.add_argument("--vae_batches", type=int, default=60, help="timed VAE training batches (each of 2 runs)")
    parser.add_argument("--folder_images", type=int, default=10_000, help="PNG files in the image folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3, help="measurements per loader (medians are printed)")
    parser.add_argument("--quick", action="store_true", help="5 batches per loader, 300 PNGs: a crash check")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.vae_batches, args.folder_images, args.repeats = 5, 3, 300, 1
    load_before = os.getloadavg()

    fmnist = FashionMNISTDataModule(batch_size=BATCH)
    fmnist.setup("fit")
    in_memory = []
    for x, y in fmnist.train_dataloader():
        in_memory.append((x, y))
        if len(in_memory) == args.vae_batches + 2:
            break
    vae_rates = [vae_training_rate(in_memory)]
    print("done: VAE training (1)", file=sys.stderr, flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_pngs(Path(folder), args.folder_images)
        print(f"wrote {args.folder_images} PNGs in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        loaders = {
            "Fashion-MNIST (IDX, gz)": lambda w: FashionMNISTDataModule(batch_size=BATCH, num_workers=w),
            f"image folder ({args.folder_images} PNG, 28x28 gray)": lambda w: ImageFolderDataModule(
                data_dir=folder, image_size=28, grayscale=True, batch_size=BATCH, num_workers=w),
            "toy ring8 (2-D points)": lambda w: ToyMixtureDataModule(batch_size=BATCH, num_workers=w),
            "CIFAR-10 (python pickles)": lambda w: CIFAR10DataModule(batch_size=BATCH, num_workers=w),
        }
        for name, make in loaders.items():
            for workers in args.workers:
                try:
                    runs = [time_loader(lambda: make(workers), args.batches) for _ in range(args.repeats)]
                    rows.append((name, workers, {key: statistics.median(r[key] for r in runs) for key in runs[0]}))
                except LightningGenError as error:  # the dataset's files are not on this machine
                    rows.append((name, workers, None))
                    print(f"{name}: {str(error).splitlines()[0]}", file=sys.stderr)
                    break
                print(f"done: {name}, {workers} workers", file=sys.stderr, flush=True)
    vae_rates.append(vae_training_rate(in_memory))
    vae_rate = statistics.mean(vae_rates)
    load_after = os.getloadavg()

    print(f"\nData loading vs training, train split, batch {BATCH}, shuffled, median of {args.repeats}"
          f"{' (quick: not a timing)' * args.quick}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores")
    print(f"default VAE (configs/vae_fmnist.yaml) training on in-memory batches: {vae_rates[0]:.0f} and "
          f"{vae_rates[1]:.0f} images/s (before/after the loaders; mean {vae_rate:.0f})")
    print(f"load average (1/5/15 min) {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
          f"{' '.join(f'{x:.2f}' for x in load_after)} at the end\n")
    print("| loader | workers | setup s | first batch s | images timed | images/s | vs VAE train |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, workers, r in rows:
        if r is None:
            print(f"| {name} | - | not present | | | | |")
        else:
            print(f"| {name} | {workers} | {r['setup']:.2f} | {r['first']:.3f} | {r['images']} | {r['rate']:.0f} "
                  f"| {r['rate'] / vae_rate:.2f}x |")


if __name__ == "__main__":
    main()
