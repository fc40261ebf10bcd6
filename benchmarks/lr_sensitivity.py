"""Learning-rate sensitivity at a fixed wall-clock budget: the default VAE and GAN configs trained with
their learning rates times 0.5, 1 and 2, one seed each, and scored alike.

    python benchmarks/lr_sensitivity.py --minutes 5            # VAE and GAN, x0.5, x1, x2: 6 runs, ~40 min
    python benchmarks/lr_sensitivity.py --family gan --minutes 5 --factors 0.25 0.5 1 2 4
    python benchmarks/lr_sensitivity.py --quick                # 0.5 s per run, 50 samples: a crash check

"Easy to train" is partly "forgiving of the learning rate": a recipe whose FID holds over a 4x range of
rates needs less tuning than one that fails outside a narrow band. Each run is quality_at_budget's
lightning-gen contender (``train_default``: the config through the CLI, the clock started before the
config is parsed, stopped at the first batch end after the budget) with the rate overridden on the
command line: the VAE's ``optimizer`` lr, the GAN's ``generator_optimizer`` and ``discriminator_optimizer``
lr both (their ratio kept). Evaluation is quality_at_budget's too (``evaluate``: FID, precision, recall in
``fmnist_clf`` features, ``--num-samples`` samples vs as many test images, sample seed 0).

A run failed when it diverged (training stopped on a non-finite loss, or a non-finite FID) or collapsed
(recall below ``lightning_gen.report.groups.RECALL_COLLAPSE``, the threshold ``compare`` uses: see there).
One seed per rate: a single GAN run is a draw, not a property of the rate; read the table with
``make compare SEEDS=3``'s spread of FID over seeds beside it. Each run's record is appended to ``--results``
(default benchmarks/results/lr_sensitivity.jsonl; ``--quick`` appends nothing unless given one).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml
from machine_info import cpu_name
from quality_at_budget import QUICK_MINUTES, QUICK_NLL_IMAGES, QUICK_SAMPLES, REPO, evaluate, train_default

from lightning_gen.errors import DivergenceError
from lightning_gen.report.groups import RECALL_COLLAPSE

FAMILIES = ("vae", "gan")
OPTIMIZERS = {"vae": ("optimizer",), "gan": ("generator_optimizer", "discriminator_optimizer")}  # as configs name them
FACTORS = (0.5, 1.0, 2.0)
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "lr_sensitivity.jsonl"


def config_rates(family: str) -> dict[str, float]:
    """The learning rate of each optimiser of ``configs/<family>_fmnist.yaml``, by its model argument."""
    model = yaml.safe_load((REPO / "configs" / f"{family}_fmnist.yaml").read_text())["model"]["init_args"]
    return {name: float(model[name]["init_args"]["lr"]) for name in OPTIMIZERS[family]}


def rate_overrides(rates: dict[str, float], factor: float) -> tuple[str, ...]:
    return tuple(f"model.init_args.{name}.init_args.lr={rate * factor:g}" for name, rate in rates.items())


def failure(metrics: dict[str, float] | None, stopped: str | None) -> str | None:
    if stopped:
        return f"diverged ({stopped})"
    if metrics is None or not math.isfinite(metrics["fid"]):
        return "diverged (non-finite FID)"
    if metrics["recall"] < RECALL_COLLAPSE:
        return f"collapsed (recall < {RECALL_COLLAPSE})"
    return None


def run_one(family: str, factor: float, args: argparse.Namespace) -> dict:
    rates = {name: rate * factor for name, rate in config_rates(family).items()}
    started = time.perf_counter()
    metrics, images, stopped = None, None, None
    try:
        trained = train_default(family, args.minutes * 60, args.seed, args.quick,
                                rate_overrides(config_rates(family), factor))
    except DivergenceError as error:  # the model's guard stopped the fit: nothing left to score
        stopped = str(error).split(";")[0][:120]
    else:
        images = trained.images
        metrics = evaluate(trained.model, args.num_samples, args.nll_images)
    record = {"family": family, "factor": factor, "lr": rates, "seed": args.seed, "minutes": args.minutes,
              "images_trained": images, "metrics": metrics, "failed": failure(metrics, stopped),
              "seconds": round(time.perf_counter() - started, 1), "cpu": cpu_name(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": args.quick}
    print(f"{family} x{factor:g}: {images} images, {record['failed'] or 'ok'}", file=sys.stderr, flush=True)
    return record


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(records: list[dict]) -> list[str]:
    lines = ["| family | factor | lr | FID | precision | recall | images trained | failed? |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in records:
        metrics = r["metrics"] or {}
        rates = ", ".join(f"{name.removesuffix('_optimizer') if len(r['lr']) > 1 else 'lr'} {rate:g}"
                          for name, rate in r["lr"].items())
        images = "—" if r["images_trained"] is None else f"{r['images_trained']:,}"
        lines.append(f"| {r['family']} | x{r['factor']:g} | {rates} | {_number(metrics.get('fid'), 1)} | "
                     f"{_number(metrics.get('precision'), 3)} | {_number(metrics.get('recall'), 3)} | {images} | "
                     f"{r['failed'] or 'no'} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget of every run")
    parser.add_argument("--factors", type=float, nargs="+", default=list(FACTORS),
                        help="multiples of the config's learning rate(s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=10_000, help="FID etc.: samples and test images")
    parser.add_argument("--nll-images", type=int, default=1000, help="test images for the VAE's bits/dim")
    parser.add_argument("--results", type=Path, help="JSONL file to append each run's record to (default "
                        f"{DEFAULT_RESULTS.relative_to(REPO)}; with --quick none)")
    parser.add_argument("--quick", action="store_true", help="0.5 s per run, 50 samples: a crash check")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.num_samples, args.nll_images = QUICK_MINUTES, QUICK_SAMPLES, QUICK_NLL_IMAGES
    elif args.results is None:
        args.results = DEFAULT_RESULTS
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    records = []
    for family in FAMILIES if args.family == "all" else (args.family,):
        for factor in args.factors:
            records.append(run_one(family, factor, args))
            if args.results:
                args.results.parent.mkdir(parents=True, exist_ok=True)
                with open(args.results, "a") as out:
                    out.write(json.dumps(records[-1]) + "\n")
    print(f"Learning-rate sensitivity at {args.minutes:g} min per run{' (quick: not meaningful)' * args.quick}, "
          f"Fashion-MNIST, default configs with the rate(s) scaled, seed {args.seed}; FID, precision, recall in "
          f"fmnist_clf features of {args.num_samples} samples vs as many test images; failed: diverged or recall "
          f"< {RECALL_COLLAPSE}")
    print(f"this machine: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("\n".join(table(records)))


if __name__ == "__main__":
    main()
