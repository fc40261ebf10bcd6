"""Training throughput with 1 and 2 processes (Lightning's DDP strategy), through the launcher.

    python benchmarks/ddp_scaling.py [--configs vae_fmnist gan_fmnist] [--accelerator cpu] [--devices 1 2] [--quick]

Each run is `python -m lightning_gen fit --config configs/<name>.yaml` for one epoch of the full training
split, without validation and callbacks (checkpointing only), so the fit time in the run's run.json is the
training loop. images/s = training images / fit seconds; the batch size is per process, so 2 processes
train the same epoch in half the steps. On a CPU the processes share the cores: this measures the
overhead of DDP there, not a speed-up; on GPUs each process has its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_ONLY = '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]'
TRAIN_IMAGES = 54_000  # Fashion-MNIST train split minus the 10% validation fraction


def fit_seconds(config: str, devices: int, accelerator: str, folder: Path, batches: int | None = None) -> float:
    command = [sys.executable, "-m", "lightning_gen", "fit", "--config", str(REPO / "configs" / f"{config}.yaml"),
               "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
               "--trainer.callbacks", CHECKPOINT_ONLY, "--trainer.enable_progress_bar", "false",
               "--trainer.accelerator", accelerator, "--trainer.devices", str(devices),
               "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder)]
    if devices > 1:
        command += ["--trainer.strategy", "ddp"]
    if batches:
        command += ["--trainer.limit_train_batches", str(batches)]
    subprocess.run(command, check=True, capture_output=True, cwd=folder)
    (record,) = folder.glob(f"{config}/version_*/run.json")
    return json.loads(record.read_text())["fit_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["vae_fmnist", "gan_fmnist"])
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--quick", action="store_true", help="the VAE, 3 batches per process: a crash check (CI)")
    args = parser.parse_args()
    batches = 3 if args.quick else None
    if args.quick:
        args.configs = ["vae_fmnist"]
    what = f"{batches} batches per process" if batches else f"one epoch of {TRAIN_IMAGES} training images"
    print(f"{what}, accelerator {args.accelerator}, {os.cpu_count()} CPU cores\n")
    print("| config | processes | fit s | images/s | vs 1 process |")
    print("|---|---:|---:|---:|---:|")
    for config in args.configs:
        first = None
        for devices in args.devices:
            with tempfile.TemporaryDirectory() as folder:
                seconds = fit_seconds(config, devices, args.accelerator, Path(folder), batches)
            batch_size = yaml.safe_load(
                (REPO / "configs" / f"{config}.yaml").read_text())["data"]["init_args"]["batch_size"]
            rate = (batches * batch_size * devices if batches else TRAIN_IMAGES) / seconds
            first = first or rate
            print(f"| {config} | {devices} | {seconds:.1f} | {rate:,.0f} | {rate / first:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
