"""Training images/s of each default model with eager and compiled networks (``compile: true``), optionally in
bf16-mixed precision, fitted by the Trainer on the same data.

    python benchmarks/compile_speed.py [--models ae vae pixelcnn gan] [--variants eager compiled] [--rounds 3]
    python benchmarks/compile_speed.py --device cuda --variants eager compiled eager+bf16 compiled+bf16
    python benchmarks/compile_speed.py --quick     # the VAE only, 1 round of 1 batch + 0.2 s per block, 1000 images

Models: configs/ae_fmnist.yaml, vae_fmnist.yaml, pixelcnn_fmnist.yaml and gan_fmnist.yaml, each built from the
config's model and data init args (Fashion-MNIST train split, the config's batch size and optimizer); every
variant starts from the same weights. A variant is "eager" or "compiled" (the model's ``compile: true``:
``torch.compile`` of its networks, in place), with "+bf16" for ``Trainer(precision="bf16-mixed")`` and, for
the PixelCNN, "+nchw" for its network in the default NCHW memory order instead of the config's
``channels_last: true``:

    python benchmarks/compile_speed.py --models pixelcnn --variants eager+nchw eager eager+bf16+nchw eager+bf16

Timing: rounds of one block per variant, the order rotating each round. A block is a fresh ``Trainer.fit``
without validation, logger, checkpoints or progress bar; it trains ``--warmup`` untimed batches, then batches
until ``--block_seconds`` have passed. images/s = median over the blocks of timed images / timed seconds;
"vs eager" = that / the median of the first of "eager", "eager+nchw", "eager+bf16" measured. "first block
warm-up s" = seconds from ``fit`` to the end of the warm-up batches in the variant's first block: for a
compiled variant it holds the compilation (later blocks reuse the compiled code), the price a run pays once
inside its budget.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import lightning.pytorch as pl
import torch
from budget import WarmupClock  # noqa: E402  (benchmarks/ is the script's folder)
from lightning_overhead import MODELS, build  # noqa: E402  (benchmarks/ is the script's folder)


def block(model, loader, variant: str, args) -> WarmupClock:
    clock = WarmupClock(time.perf_counter(), args.warmup, args.block_seconds)
    trainer = pl.Trainer(max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                         precision="bf16-mixed" if "+bf16" in variant else "32-true")
    trainer.fit(model, train_dataloaders=loader)
    return clock


def measure(name: str, args) -> list[dict]:
    data, (model, _), _ = build(MODELS[name], args.subset)
    models = {}
    for variant in args.variants:
        models[variant] = copy.deepcopy(model)
        models[variant].compile_networks = variant.startswith("compiled")
        if "+nchw" in variant:
            if not hasattr(model, "use_channels_last"):
                raise SystemExit(f"+nchw applies to the PixelCNN (channels_last), not to {name}")
            models[variant].use_channels_last(False)
    loader = data.train_dataloader()
    clocks: dict[str, list[WarmupClock]] = {variant: [] for variant in args.variants}
    for round_index in range(args.rounds):
        shift = round_index % len(args.variants)
        for variant in args.variants[shift:] + args.variants[:shift]:
            clocks[variant].append(block(models[variant], loader, variant, args))
    rates = {variant: statistics.median(c.rate for c in done) for variant, done in clocks.items()}
    measured = [f"{variant} {rate:.0f} images/s (first warm-up {clocks[variant][0].warm_up_seconds:.1f} s)"
                for variant, rate in rates.items()]
    print(f"done: {name}: {', '.join(measured)}", file=sys.stderr, flush=True)
    rows = []
    for variant, done in clocks.items():
        eager = next((v for v in ("eager", "eager+nchw", "eager+bf16") if v in rates), None)
        rows.append({"model": f"{name} ({MODELS[name]})", "variant": variant, "batch": data.batch_size,
                     "rate": rates[variant], "vs_eager": rates[variant] / rates[eager] if eager in rates else None,
                     "warm_up": done[0].warm_up_seconds, "batches": statistics.median(c.seen for c in done)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=["eager", "compiled"],
                        choices=["eager", "compiled", "eager+bf16", "compiled+bf16", "eager+nchw",
                                 "eager+bf16+nchw"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block_seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches at the start of every block")
    parser.add_argument("--subset", type=int, default=None, help="first N images of the train set (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="the VAE only (compiling costs seconds per network on a CPU), 1 round, blocks of 1 batch "
                             "+ 0.2 s, 1000 images: a crash check")
    args = parser.parse_args()
    if args.quick:
        args.models, args.rounds, args.warmup, args.block_seconds, args.subset = ["vae"], 1, 1, 0.2, 1000
    load_before = os.getloadavg()
    rows = [row for name in args.models for row in measure(name, args)]
    load_after = os.getloadavg()
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nEager vs compiled networks (compile: true), training images/s through the Trainer; {where}; "
          f"Fashion-MNIST{f' subset {args.subset}' if args.subset else ''}, {args.rounds} round(s)"
          f"{' (quick: not a timing)' * args.quick}")
    print(f"torch {torch.__version__}, lightning {pl.__version__}; load average (1/5/15 min) "
          f"{' '.join(f'{x:.2f}' for x in load_before)} at the start, {' '.join(f'{x:.2f}' for x in load_after)} "
          "at the end\n")
    print("| model | variant | batch | batches/block | images/s | vs eager | first block warm-up s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['vs_eager']:.2f}" if r["vs_eager"] is not None else "-"
        print(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['batches']:.0f} | {r['rate']:.0f} | {ratio} "
              f"| {r['warm_up']:.1f} |")


if __name__ == "__main__":
    main()
