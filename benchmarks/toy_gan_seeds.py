"""Does the toy GAN recipe hold over seeds? Mode coverage of ``configs/gan_toy_*.yaml`` per training seed.

    python benchmarks/toy_gan_seeds.py                                  # both recipes, 10 seeds each
    python benchmarks/toy_gan_seeds.py --config configs/gan_toy_ring.yaml --seeds 0 1 2
    python benchmarks/toy_gan_seeds.py --quick                          # 1 seed, 20 steps: a crash check

A GAN trajectory is chaotic and float rounding differs between CPUs, so one seed says little about a
recipe. Each seed trains the config through the CLI (in its own process, one thread, two at a time)
and is scored on 5000 samples: modes covered (>= 20% of a mode's fair share of high-quality samples)
and the high-quality fraction (within 3 std of a mean). A seed passes at >= K-1 modes of K (the ring:
7 of 8) or >= 23 of 25 (grid25), and >= 0.8 high quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(os.environ.get("LIGHTNING_GEN_REPO", Path(__file__).resolve().parents[1]))
RECIPES = ("configs/gan_toy_ring.yaml", "configs/gan_toy_grid.yaml")
MIN_MODES = {"ring8": 7, "grid25": 23}
MIN_HIGH_QUALITY = 0.8

_ONE_SEED = r"""
import json, sys, torch
from lightning_gen.cli import LightningGenCLI
from lightning_gen.data.toy import mixture_means
from lightning_gen.metrics.mode_coverage import mode_coverage
torch.set_num_threads(1)
cli = LightningGenCLI(args=sys.argv[1:])
data, model = cli.datamodule, cli.model.eval()
samples = model.sample(5000, torch.Generator().manual_seed(1))
result = mode_coverage(samples, mixture_means(data.mixture), std=data.std)
print("RESULT " + json.dumps({"mixture": data.mixture, "std": data.std, **result}))
"""


def train_and_score(config: str, seed: int, overrides: list[str], folder: Path) -> dict:
    args = ["fit", "--config", str(REPO / config), "--seed_everything", str(seed),
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_model_summary", "false", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    folder = folder / f"seed{seed}"  # each run writes its own config.yaml
    folder.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", _ONE_SEED, *args], capture_output=True, text=True, cwd=folder, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"seed {seed} of {config} failed:\n{done.stderr[-3000:]}")
    result = {"seed": seed, **json.loads(lines[-1].removeprefix("RESULT "))}
    print(f"{config} seed {seed}: {result}", file=sys.stderr, flush=True)
    return result


def passes(result: dict) -> bool:
    return (result["modes_covered"] >= MIN_MODES[result["mixture"]]
            and result["high_quality_fraction"] >= MIN_HIGH_QUALITY)


def table(config: str, results: list[dict]) -> str:
    first = results[0]
    lines = [f"{config} on {first['mixture']} (std {first['std']}): pass = >= {MIN_MODES[first['mixture']]} modes "
             f"and >= {MIN_HIGH_QUALITY} high quality",
             f"{'seed':>4} {'modes':>6} {'high quality':>13} {'largest mode':>13}  pass"]
    for r in results:
        lines.append(f"{r['seed']:>4} {r['modes_covered']:>6.0f} {r['high_quality_fraction']:>13.3f} "
                     f"{r['largest_mode_share']:>13.3f}  {'yes' if passes(r) else 'NO'}")
    hq = sorted(r["high_quality_fraction"] for r in results)
    modes = sorted(r["modes_covered"] for r in results)
    lines.append(f"seeds passing: {sum(map(passes, results))} of {len(results)}; "
                 f"modes median {modes[len(modes) // 2]:.0f}, worst {modes[0]:.0f}; "
                 f"high quality median {hq[len(hq) // 2]:.3f}, worst {hq[0]:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help=f"a toy GAN config (default: {', '.join(RECIPES)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="training seeds")
    parser.add_argument("--parallel", type=int, default=2, help="seeds trained at once (one thread each)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps: a crash check")
    parser.add_argument("overrides", nargs="*", help="extra CLI options after --, e.g. -- --data.init_args.std 0.05")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    quick = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "20"]
    overrides = [*args.overrides, *(quick if args.quick else [])]
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(args.parallel) as pool:
        for config in args.config or RECIPES:
            work = Path(tempfile.mkdtemp(dir=folder))
            results = list(pool.map(lambda s: train_and_score(config, s, overrides, work), seeds))
            print(table(config + (" " + " ".join(args.overrides) if args.overrides else ""), results), "\n", flush=True)


if __name__ == "__main__":
    main()
