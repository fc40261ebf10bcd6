"""Device-resident training data against the DataLoader path: training images/s of the default VAE and GAN.

    python benchmarks/resident_data.py [--device cpu|cuda] [--batches 60] [--rounds 3] [--workers 0]
    python benchmarks/resident_data.py --quick     # 1 round of 3 batches on 1000 images: a crash check

Models: configs/vae_fmnist.yaml's and configs/gan_fmnist.yaml's, built from the config's model init args (its
optimizers too) at the config's batch size, on the Fashion-MNIST train split. Each model is built twice with the
same seed, one per side, so both sides train the same weights from the same start:

- dataloader: ``FashionMNISTDataModule`` as the configs use it: a ``DataLoader`` over the in-memory uint8
  images, one ``__getitem__`` (uint8 -> float) per image, collation, and Lightning's copy of every batch to the
  device (``--workers`` worker processes; pinned memory on a GPU);
- resident: the same DataModule with ``device_resident=True``: the train split as uint8 on the device, batches
  gathered there by index and converted to float there.

Timing: every block is one ``Trainer.fit`` of ``--warmup`` (2) untimed batches, then ``--batches`` timed ones
(the clock synchronises the GPU at both ends); rounds run one block per side, alternating which side goes
first. images/s = the median over a side's blocks; ratio = resident / dataloader of those medians; "ratio
range" spans the per-round ratios. "fit start s" = the median seconds from creating the Trainer to its first
batch (the resident side's first block also moves the split to the device: "resident setup s" is that one-off
cost: gathering the split and moving it to the device, measured separately before the rounds). Load averages
are printed: other work on the machine distorts every timing, the side-by-side ratio the least.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from lightning_overhead import import_class, init_value  # benchmarks/ is the script's folder

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.data.resident import resident_tensors

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {"vae": "vae_fmnist.yaml", "gan": "gan_fmnist.yaml"}
SIDES = ("dataloader", "resident")


class CountedClock(pl.Callback):
    """Images/s of ``timed`` training batches after ``warmup`` untimed ones, then stops the fit; the GPU is
    synchronised where the clock is read, so queued kernels count where they run."""

    def __init__(self, warmup: int, timed: int):
        self.warmup, self.timed = warmup, timed
        self.created, self.startup, self.start, self.seen, self.images, self.rate = time.perf_counter(), 0, 0, 0, 0, 0.0

    def _now(self, pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == 0:
            self.startup = time.perf_counter() - self.created

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen > self.warmup:
            self.images += len(batch[0])
        if self.seen == self.warmup:
            self.start = self._now(pl_module)
        elif self.seen == self.warmup + self.timed:
            self.rate = self.images / (self._now(pl_module) - self.start)
            trainer.should_stop = True


def block(model, data, args) -> dict:
    clock = CountedClock(args.warmup, args.batches)
    trainer = pl.Trainer(max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="gpu" if args.device == "cuda" else "cpu", devices=1)
    trainer.fit(model, datamodule=data)
    return {"rate": clock.rate, "startup": clock.startup}


def measure(name: str, args) -> dict:
    config = yaml.safe_load((CONFIGS / MODELS[name]).read_text())
    batch_size = config["data"]["init_args"]["batch_size"]
    datas = {side: FashionMNISTDataModule(batch_size=batch_size, subset=args.subset, device_resident=side == "resident",
                                          num_workers=0 if side == "resident" else args.workers,
                                          pin_memory=args.device == "cuda" and side == "dataloader")
             for side in SIDES}
    models = {}
    for side, data in datas.items():
        data.setup("fit")
        pl.seed_everything(0, verbose=False)
        init_args = {k: init_value(v) for k, v in config["model"].get("init_args", {}).items()}
        models[side] = import_class(config["model"]["class_path"])(data_shape=data.data_shape, **init_args)

    # the resident side's one-off cost: gathering the train split and moving it to the device
    start = time.perf_counter()
    resident_tensors(datas["resident"].train_set, torch.device(args.device))
    if args.device == "cuda":
        torch.cuda.synchronize()
    setup = time.perf_counter() - start

    blocks = {side: [] for side in SIDES}
    for round_index in range(args.rounds):
        for side in SIDES if round_index % 2 == 0 else SIDES[::-1]:
            blocks[side].append(block(models[side], datas[side], args))
    rates = {side: [b["rate"] for b in done] for side, done in blocks.items()}
    per_round = [resident / loader for resident, loader in zip(rates["resident"], rates["dataloader"])]
    median = {side: statistics.median(r) for side, r in rates.items()}
    print(f"done: {name}", file=sys.stderr, flush=True)
    return {"model": f"{name} ({MODELS[name]})", "batch": batch_size, **median,
            "ratio": median["resident"] / median["dataloader"], "low": min(per_round), "high": max(per_round),
            "start": {side: statistics.median(b["startup"] for b in done) for side, done in blocks.items()},
            "setup": setup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--batches", type=int, default=60, help="timed training batches of every block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches at the start of every block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per side, alternating which side goes first")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes of the dataloader side")
    parser.add_argument("--subset", type=int, default=None, help="first N images of the train set (default: all)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 + 3 batches on 1000 images: a crash check")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.batches, args.subset = 1, 1, 3, 1000
    if args.warmup < 1 or args.batches < 1:
        parser.error("--warmup and --batches must be at least 1 (the first batch carries the start-up)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    load_before = os.getloadavg()
    rows = [measure(name, args) for name in args.models]
    load_after = os.getloadavg()

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nDevice-resident data vs the DataLoader path ({args.workers} workers), training images/s through "
          f"Lightning's Trainer on {device}; Fashion-MNIST{f' subset {args.subset}' if args.subset else ''}, "
          f"{args.batches} timed batches per block, {args.rounds} round(s), "
          f"medians{' (quick: not a timing)' * args.quick}")
    print(f"torch {torch.__version__}, lightning {pl.__version__}; load average (1/5/15 min) "
          f"{' '.join(f'{x:.2f}' for x in load_before)} at the start, {' '.join(f'{x:.2f}' for x in load_after)} "
          "at the end\n")
    print("| model | batch | dataloader img/s | resident img/s | ratio | ratio range | fit start s (dataloader / "
          "resident) | resident setup s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['dataloader']:.0f} | {r['resident']:.0f} | {r['ratio']:.3f} "
              f"| {r['low']:.3f}-{r['high']:.3f} | {r['start']['dataloader']:.2f} / {r['start']['resident']:.2f} "
              f"| {r['setup']:.2f} |")


if __name__ == "__main__":
    main()
