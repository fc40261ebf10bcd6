"""Run every benchmark and rewrite the results page: ``make bench`` (or ``python benchmarks/run_all.py``).

    python benchmarks/run_all.py                 # full runs (about 4 hours on a 2-core CPU) -> benchmarks/README.md
    python benchmarks/run_all.py --minutes 2     # the same with 2-minute budgets for the fixed-budget comparisons
                                                 # (about 2 hours)
    python benchmarks/run_all.py --quick --out /tmp/bench.md   # each benchmark's --quick mode: a crash check

Each benchmark is also runnable alone and prints its own table of ratios measured side by side in one
run (so they mean something on a noisy machine). This runner only starts them one after another (never
two at once: they would distort each other's timings), and writes their printed tables under a header
with the date, the machine and the library versions. With ``--gpu``, the benchmarks that take a device
run on the GPU and the page says so. A benchmark that crashes makes the runner fail; a slow one does not.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from machine_info import cpu_name, gpu_names, package_version

HERE = Path(__file__).resolve().parent
# name -> (what it measures, extra arguments on a GPU)
BENCHMARKS = {
    "vae_throughput": ("default VAE: data loading, Lightning training step, IWAE evaluation (images/s)", []),
    "gan_vs_plain": ("GAN: Lightning vs a hand-written DCGAN loop at the same budget (throughput ratio, FID)", []),
    "pixelcnn_sampling": ("PixelCNN: cached fast sampler vs one full pass per pixel (samples/s)", ["--device", "cuda"]),
    "compile_speed": ("AE, VAE, PixelCNN, GAN: training images/s with eager vs compiled networks (compile: true); "
                      "on a GPU also in bf16-mixed", ["--device", "cuda", "--variants", "eager", "compiled",
                                                      "eager+bf16", "compiled+bf16"]),
    "pixelcnn_vs_plain": ("PixelCNN: gated (Lightning) vs a hand-written classic PixelCNN at the same budget", []),
    "evaluation": ("metric sanity on degraded images; evaluation with cached vs uncached real features", []),
    "ddp_scaling": ("training throughput with 1 and 2 DDP processes", ["--accelerator", "gpu"]),
    "lightning_overhead": ("AE, VAE, PixelCNN, GAN: Trainer vs a plain loop over the same nets and loss, "
                           "interleaved (images/s ratio)", []),
    "data_loading": ("DataModules' train loaders, 0 and 2 workers: setup s and images/s vs the VAE's training "
                     "images/s", []),
    "resident_data": ("default VAE and GAN: training images/s with device-resident data vs the DataLoader path, "
                      "interleaved (ratio)", ["--device", "cuda"]),
    "autoencoders_vs_plain": ("AE and VAE: default configs vs hand-written MLP autoencoders at the same budget "
                              "(IWAE bits/dim, FID)", []),
    "quality_at_budget": ("AE, VAE, GAN, PixelCNN, flow matching, flow: default configs through the CLI vs the better "
                          "of two plain-PyTorch settings (and, for the two new families, a peer library's recipe: "
                          "torchcfm, normflows) at the same wall-clock budget, over seeds (FID, KID, precision/recall, "
                          "bits/dim; results appended to benchmarks/quality_at_budget.jsonl)", []),
    "vqvae_vs_pixelcnn": ("VQ-VAE + PixelCNN prior (two stages) vs the pixel PixelCNN at the same total wall-clock "
                          "budget (FID, samples/s at batch 64, images trained)", []),
    "lr_sensitivity": ("default VAE and GAN: learning rate(s) x0.5, x1, x2 at the same wall-clock budget, one seed "
                       "each (FID, precision, recall, images trained, failed: diverged or collapsed)", []),
    "toy_gan_seeds": ("toy GAN recipes (ring of 8, 5x5 grid): mode coverage and high-quality share per training "
                      "seed, 10 seeds each", []),
}


def machine() -> list[str]:
    versions = ", ".join(f"{name} {package_version(name)}" for name in ("torch", "lightning", "torchmetrics"))
    return [f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
            f"- CPU: {cpu_name()}, {os.cpu_count()} cores; GPU: {gpu_names()}",
            f"- python {platform.python_version()}, {versions}"]


# the benchmarks that train each contender for a wall-clock budget (their --minutes)
FIXED_BUDGET = ("gan_vs_plain", "pixelcnn_vs_plain", "autoencoders_vs_plain", "quality_at_budget", "lr_sensitivity",
                "vqvae_vs_pixelcnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="each benchmark's --quick mode (CI: fails only on a crash)")
    parser.add_argument("--gpu", action="store_true", help="run the benchmarks that take a device on the GPU")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="a subset of the benchmarks")
    parser.add_argument("--out", type=Path, default=HERE / "README.md", help="the page to (re)write")
    parser.add_argument("--minutes", type=float, help="training budget of each run of the fixed-budget "
                        f"comparisons ({', '.join(FIXED_BUDGET)}; default: each script's own)")
    args = parser.parse_args()
    mode = "quick (crash check, numbers not meaningful)" if args.quick else "full"
    page = ["# Benchmarks", "", "Written by `make bench` (`benchmarks/run_all.py`); every table is a script's own "
            "output. Ratios are measured side by side within one run.", "", *machine(),
            f"- mode: {mode}; device: {'GPU where the benchmark takes one' if args.gpu else 'CPU'}"
            + (f"; fixed-budget comparisons at {args.minutes:g} min per run" if args.minutes else ""), ""]
    failed = []
    for name in args.only or BENCHMARKS:
        description, gpu_args = BENCHMARKS[name]
        command = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else []),
                   *(gpu_args if args.gpu else []),
                   *(["--minutes", str(args.minutes)]
                     if args.minutes and name in FIXED_BUDGET and not args.quick else [])]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        page += [f"## {name}", "", f"{description}. `python benchmarks/{name}.py` ({seconds:.0f} s)", ""]
        if result.returncode:
            failed.append(name)
            page += ["FAILED:", "", "```", result.stderr[-3000:], "```", ""]
        else:
            page += ["```", result.stdout.strip(), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(page))
    print(f"results: {args.out}", file=sys.stderr)
    if failed:
        raise SystemExit(f"benchmarks that crashed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
