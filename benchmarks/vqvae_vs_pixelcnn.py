"""VQ-VAE + PixelCNN prior (two stages) vs the pixel PixelCNN at the same total wall-clock budget, Fashion-MNIST.

    python benchmarks/vqvae_vs_pixelcnn.py --minutes 10              # 6 min VQ-VAE + 4 min prior vs 10 min PixelCNN
    python benchmarks/vqvae_vs_pixelcnn.py --minutes 20 --vqvae-share 0.5 --seeds 0 1 2
    python benchmarks/vqvae_vs_pixelcnn.py --quick                   # seconds per stage, few samples: a crash check

Both contenders run their default configs through the CLI, one after the other, with the launcher of
``quality_at_budget.py`` (``train_default``: the clock starts before the config is parsed, the config's
epochs are replaced by the budget, a callback stops training at the first batch end after it, the
evaluation callbacks of the configs run inside it):

- two stages: ``configs/vqvae_fmnist.yaml`` for ``vqvae_share`` x B, its final in-memory model saved as a
  checkpoint, then ``configs/vqvae_prior_fmnist.yaml`` on that checkpoint for the rest of B. The prior's
  clock includes encoding the 70k images into code grids (its DataModule's ``prepare_data``).
- one stage: ``configs/pixelcnn_fmnist.yaml`` for B.

Evaluation, after the budgets and not counted in them: FID, KID, precision and recall in ``fmnist_clf``
features, ``--num-samples`` samples (seed 0) vs as many test images (``quality_at_budget.evaluate``; bits/dim
on ``--nll-images`` test images for the PixelCNN, which has an exact likelihood; the two-stage model has
only a bound, not reported here); samples/s at batch 64 (the mean of ``--sample-repeats`` timed calls of
``sample(64)`` after one untimed call; each model's default sampler); images trained in each stage.
Each run appends one JSON line per contender to ``--results`` (default benchmarks/results/vqvae_vs_pixelcnn.jsonl;
``--quick``: a temporary file) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lightning  # noqa: E402
import torch  # noqa: E402
from baselines import DEVICE, Trained  # noqa: E402
from machine_info import cpu_name  # noqa: E402  (benchmarks/ is the script's folder)
from quality_at_budget import FEATURES, evaluate, load_average, machine, train_default  # noqa: E402

import lightning_gen  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "vqvae_vs_pixelcnn.jsonl"
QUICK_MINUTES, QUICK_SAMPLES, QUICK_NLL_IMAGES, QUICK_SUBSET = 0.1, 32, 16, 1000


def samples_per_second(model, repeats: int, batch: int = 64) -> float:
    """Images/s of ``model.sample(batch)``: one untimed call (caches, CUDA graphs), then ``repeats`` timed."""
    model.to(DEVICE).eval()
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    with torch.no_grad():
        model.sample(batch, generator)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        started = time.perf_counter()
        for _ in range(repeats):
            model.sample(batch, generator)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
    return repeats * batch / (time.perf_counter() - started)


def train_two_stages(seconds: float, share: float, seed: int, folder: Path, quick: bool,
                     subset: tuple[str, ...], prior_overrides: tuple[str, ...] = ()) -> tuple[Trained, Trained]:
    """The VQ-VAE for ``share`` x ``seconds``, saved; the prior on its codes (its config with
    ``prior_overrides``, ``key=value`` pairs) for the rest."""
    vqvae = train_default("vqvae", share * seconds, seed, quick, subset)
    saving = time.perf_counter()
    checkpoint = folder / "vqvae.ckpt"
    vqvae.model.trainer.save_checkpoint(checkpoint)  # records the data it trained on, as `fit` does
    vqvae.wall_seconds += time.perf_counter() - saving
    prior = train_default("vqvae_prior", (1 - share) * seconds, seed, quick,
                          (*subset, f"data.init_args.vqvae_checkpoint={checkpoint}",
                           f"data.init_args.cache_dir={folder / 'cache'}", *prior_overrides))
    return vqvae, prior


def run(seed: int, args: argparse.Namespace, folder: Path) -> list[dict]:
    seconds = args.minutes * 60
    subset = (f"data.init_args.subset={args.subset}",) if args.subset else ()
    common = {"seed": seed, "minutes": args.minutes, "quick": args.quick, "machine": machine(),
              "torch": torch.__version__, "lightning": lightning.__version__,
              "lightning_gen": lightning_gen.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    records = []
    load_before = load_average()
    overrides = tuple(args.prior_override)
    vqvae, prior = train_two_stages(seconds, args.vqvae_share, seed, folder, args.quick, subset, overrides)
    records.append({
        **common, "contender": "vqvae+prior" + (f" [{', '.join(overrides)}]" if overrides else ""),
        "prior_overrides": list(overrides), "vqvae_share": args.vqvae_share, "load_before": load_before,
        "stages": {name: {"budget_seconds": round(share * seconds, 1), "train_seconds": round(t.train_seconds, 1),
                          "wall_seconds": round(t.wall_seconds, 1), "images_trained": t.images}
                   for name, share, t in (("vqvae", args.vqvae_share, vqvae), ("prior", 1 - args.vqvae_share, prior))},
        "images_trained": vqvae.images + prior.images,
        "prior_val_code_bpc": _logged(prior.model, "val/code_bpc"),
        "metrics": evaluate(prior.model, args.num_samples, args.nll_images),
        "samples_per_second_batch64": round(samples_per_second(prior.model, args.sample_repeats), 1)})
    load_before = load_average()
    pixelcnn = train_default("pixelcnn", seconds, seed, args.quick, subset)
    records.append({
        **common, "contender": "pixelcnn", "load_before": load_before,
        "stages": {"pixelcnn": {"budget_seconds": round(seconds, 1), "train_seconds": round(pixelcnn.train_seconds, 1),
                                "wall_seconds": round(pixelcnn.wall_seconds, 1), "images_trained": pixelcnn.images}},
        "images_trained": pixelcnn.images,
        "metrics": evaluate(pixelcnn.model, args.num_samples, args.nll_images),
        "samples_per_second_batch64": round(samples_per_second(pixelcnn.model, args.sample_repeats), 1)})
    for record in records:
        record["evaluation"] = {"features": FEATURES, "num_samples": args.num_samples, "num_real": args.num_samples,
                                "split": "test", "sample_seed": 0, "sample_repeats": args.sample_repeats}
    return records


def _logged(model, name: str) -> float | None:
    value = model.trainer.callback_metrics.get(name)
    return None if value is None else round(float(value), 4)


def table(records: list[dict], minutes: float) -> list[str]:
    rows = [r for r in records if r["minutes"] == minutes]
    lines = [f"| contender | seeds | FID ({FEATURES}), median (worst) | precision | recall | samples/s at batch 64 "
             "| images trained | bits/dim |", "|---|---|---|---|---|---|---|---|"]
    for contender in dict.fromkeys(r["contender"] for r in rows):  # in order of first appearance
        runs = {r["seed"]: r for r in rows if r["contender"] == contender}  # the latest run of each seed
        if not runs:
            continue
        fids = [r["metrics"]["fid"] for r in runs.values()]
        median = lambda key: statistics.median(r["metrics"].get(key, float("nan")) for r in runs.values())  # noqa: E731
        stages = " + ".join(f"{name} {stage['images_trained']:,}" for name, stage in
                            next(iter(runs.values()))["stages"].items()) if len(runs) == 1 else (
            f"{statistics.median(r['images_trained'] for r in runs.values()):,.0f}")
        bpd = median("nll_bpd") if all("nll_bpd" in r["metrics"] for r in runs.values()) else None
        lines.append(f"| {contender} | {len(runs)} | {statistics.median(fids):.1f} ({max(fids):.1f}) | "
                     f"{median('precision'):.3f} | {median('recall'):.3f} | "
                     f"{statistics.median(r['samples_per_second_batch64'] for r in runs.values()):.1f} | {stages} | "
                     f"{'n/a (a bound only)' if bpd is None else f'{bpd:.3f}'} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="B: the total budget of each contender")
    parser.add_argument("--vqvae-share", type=float, default=0.6, help="the VQ-VAE stage's share of B")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num-samples", type=int, default=3000, help="FID etc.: samples and test images")
    parser.add_argument("--nll-images", type=int, default=10_000, help="test images for the PixelCNN's bits/dim")
    parser.add_argument("--sample-repeats", type=int, default=3, help="timed sample(64) calls per model")
    parser.add_argument("--subset", type=int, help="train on the first N training images only (smoke runs)")
    parser.add_argument("--results", type=Path, help=f"JSONL to append to (default {DEFAULT_RESULTS.relative_to(REPO)}"
                        "; with --quick a temporary file)")
    parser.add_argument("--prior-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the prior's config, e.g. model.init_args.layers=4 (repeatable); the "
                             "contender is named with its overrides")
    parser.add_argument("--quick", action="store_true", help="6 s budgets, 32 samples, 1000 images: a crash check")
    args = parser.parse_args(argv)
    if not 0 < args.vqvae_share < 1:
        parser.error(f"--vqvae-share must be in (0, 1), got {args.vqvae_share}")
    if args.quick:
        args.minutes, args.num_samples, args.nll_images, args.sample_repeats = (
            QUICK_MINUTES, QUICK_SAMPLES, QUICK_NLL_IMAGES, 1)
        args.subset = args.subset or QUICK_SUBSET
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        results = args.results or (Path(scratch) / "vqvae_vs_pixelcnn.jsonl" if args.quick else DEFAULT_RESULTS)
        for seed in args.seeds:
            for record in run(seed, args, Path(scratch) / f"seed{seed}"):
                results.parent.mkdir(parents=True, exist_ok=True)
                with open(results, "a") as out:
                    out.write(json.dumps(record) + "\n")
        records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        print(f"VQ-VAE + PixelCNN prior ({args.vqvae_share:.0%} / {1 - args.vqvae_share:.0%} of the budget) vs the "
              f"pixel PixelCNN at {args.minutes:g} min each, Fashion-MNIST{' (quick: not meaningful)' * args.quick}")
        print(f"this machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, device {DEVICE.type}; results: "
              f"{results.relative_to(REPO) if results.is_relative_to(REPO) else results}\n")
        print("\n".join(table(records, args.minutes)))


if __name__ == "__main__":
    main()
