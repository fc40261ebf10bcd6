"""Sample quality after a fixed wall-clock budget: each family's default config, trained through the CLI,
against plain-PyTorch scripts written as a competent user would write them, on Fashion-MNIST.

    python benchmarks/quality_at_budget.py --family gan --minutes 5 --seeds 3
    python benchmarks/quality_at_budget.py --family all        # 5 min; 3 seeds for gan and vae, 1 for the others
    python benchmarks/quality_at_budget.py --family flow_matching --flow-matching-samples 2000   # + the peer torchcfm
    python benchmarks/quality_at_budget.py --family vae --minutes 15 --seeds 1
    python benchmarks/quality_at_budget.py --report --family all --minutes 15   # only the table of stored results
    python benchmarks/quality_at_budget.py --report --summary  # one row per family and budget (the benchmarks page)
    python benchmarks/quality_at_budget.py --quick             # 0.5 s per run, tiny evaluation: a crash check

Each run appends one JSON line to ``--results`` (default benchmarks/results/quality_at_budget.jsonl; ``--quick``
writes to a temporary file): family, contender, setting, seed, budget, images trained, metrics, machine,
library versions, date. Then the script prints (quality_report.py) a table of every stored result of the
chosen families at the chosen budget, or with ``--summary`` one row per family and budget: per contender
the FID of each seed (the latest run of each), the median and the worst seed (highest FID), medians of the
other metrics, and default / baseline median FID, where "the baseline" is the better (lower median FID) of
the two plain settings, so that it is not a straw man.
The flow families also have a "peer" contender, a peer library's own recipe (``peer-torchcfm``,
``peer-normflows``), with default / peer median FID beside it; the solver and NFE of every sampler that
reports them (flow matching) stand beside its row.

The contenders run one after another on this machine, never two at once, for one seed after another;
each seed seeds every contender the same way (``--seed_everything SEED`` / ``torch.manual_seed(SEED)``).
All use torch's default thread count (printed) and the device the configs' ``accelerator: auto`` picks.

lightning-gen: ``python -m lightning_gen fit --config configs/<family>_fmnist.yaml --seed_everything SEED
--trainer.max_epochs -1 --trainer.max_time <budget> --trainer.enable_progress_bar false``, run in this process through
``LightningGenCLI`` (in a temporary working folder, so ``runs/`` lands there) with one extra callback
that stops training at the first batch end after the budget. Its clock starts before the CLI parses the
config, so the budget pays for everything the config does: parsing, data loading, the sanity check,
every validation epoch with its evaluation callback (FID etc. on 3000 samples), pictures, checkpoints.
(Python's imports happen once, before any clock, for every contender.)
The budget replaces the config's epoch count (max_epochs -1) and is passed as ``max_time``, as a user would, so
that a config's budget-aware callbacks (``BudgetLRDecay``) see it; Lightning's timer starts only when
training starts, so the extra callback above, whose clock started earlier, is what ends the run. The
validation Lightning runs after the stop changes no weight and is not counted (``wall_seconds`` in the
results includes it).
``--quick`` also passes ``--trainer.limit_val_batches 0`` (no validation, so no evaluation callback).

plain PyTorch, two standard settings per family, and the peer libraries' recipes: baselines.py (its
docstring has the nets, losses and settings; the clock starts before the data is loaded and the nets are
built): gan, DCGAN at batch 64 / 128; vae and ae, Bernoulli MLP 784-400-20 / conv 32-64 autoencoders;
pixelcnn, the classic masked PixelCNN 32 wide, 5 layers / 64 wide, 7 layers; flow_matching, a rectified-flow
U-Net 32 wide with Euler sampling at NFE 50, batch 64 / 128, and torchcfm's exact-OT CFM recipe of its MNIST
example (dopri5); flow, a RealNVP with 32 / 64 hidden channels, and normflows' Glow example (L=2, K=16). The
peers need the ``bench`` extra (torchcfm, normflows).

Evaluation, after the budget, the same for every contender and not counted in it: the final in-memory
model (for lightning-gen what ``sample`` uses: the GAN's EMA generator, the AE's fitted code Gaussian),
``lightning_gen.metrics.evaluate_model`` with FID, KID, precision and recall (k=3) in ``fmnist_clf``
features, ``--num-samples`` samples (sample seed 0) vs as many test images (10,000: the whole test split);
pixelcnn ``--pixelcnn-samples`` (default 500: the plain nets sample by 784 network passes, one per pixel,
each over the window the pixel can see; setting B takes minutes for 500 samples on 2 cores); flow_matching
``--flow-matching-samples`` (default 2,000: every sample costs NFE network passes). bits/dim on
the first ``--nll-images`` test images where the model has a discrete likelihood of 8-bit pixels:
lightning-gen's VAE (IWAE bound, the config's 128 importance samples), every PixelCNN (exact) and every
flow (exact density of uniformly dequantised data: a bound on the 8-bit likelihood); the
Bernoulli baselines model [0, 1] intensities, not 8-bit levels, and the GAN and AE have none ("n/a");
flow matching's baselines have none, and lightning-gen's ODE likelihood runs only with
``--flow-matching-nll-images`` > 0 (default 0: it costs ~100 samples' worth per image).
Also: images trained, images trained per second of budget, and for lightning-gen the share of the
training clock spent outside training steps (start-up, fetching batches, validation, the evaluation
callback, pictures, checkpoints), with the evaluation callback's own share in brackets.
FID depends on the number of samples, so compare numbers only within one family and budget.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning
import numpy as np
import torch
from baselines import DEVICE, PEER_RECIPES, PLAIN_SETTINGS, Trained  # noqa: E402  (benchmarks/ is the script's folder)
from budget import StopAfter  # noqa: E402
from machine_info import cpu_name  # noqa: E402
from quality_report import FEATURES, REPO, config_digest, family_table, read_results, summary_table  # noqa: E402
from torch import nn

import lightning_gen
from lightning_gen.cli import LightningGenCLI
from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.metrics.finite import NonFiniteSamplesError

DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "quality_at_budget.jsonl"
FAMILIES = ("ae", "vae", "gan", "pixelcnn", "flow_matching", "flow")
# without --seeds: the full set of issue 14 (and one seed for issue 35's flow families: sampling is the cost)
SEEDS_BY_FAMILY = {"gan": 3, "vae": 3, "ae": 1, "pixelcnn": 1, "flow_matching": 1, "flow": 1}
# the peer library of each family that has one: its contender's key is "peer-<library>"
PEERS = {family: library for family, (library, _, _) in PEER_RECIPES.items()}
CONTENDER_KEYS = ("lightning-gen", "plain-A", "plain-B", *(f"peer-{library}" for library in PEERS.values()))

# --quick: 0.5 s budgets (at least one batch); a PixelCNN sampler's cost is 784 network passes whatever the
# batch, and a flow-matching sampler's NFE passes (the peer's adaptive solver picks its own), so few samples
QUICK_MINUTES, QUICK_SAMPLES, QUICK_PIXELCNN_SAMPLES, QUICK_NLL_IMAGES = 0.5 / 60, 50, 8, 10
QUICK_FLOW_MATCHING_SAMPLES = 8
# the flow families' plain and peer contenders train one batch of a few images (lightning-gen: its config's);
# the plain flow-matching sampler takes a few Euler steps (the peer's dopri5 chooses its own)
QUICK_BATCH = 8
QUICK_PLAIN = {"flow_matching": {"batch_size": QUICK_BATCH, "nfe": 4}, "flow": {"batch_size": QUICK_BATCH}}


@dataclass(frozen=True)
class Contender:
    contender: str  # "lightning-gen", "plain" or "peer"
    setting: str  # the config, the plain setting "A" / "B", or the peer's library
    description: str
    train: Callable[[float, int], Trained]  # (budget seconds, seed) -> the trained model

    @property
    def key(self) -> str:
        return self.contender if self.contender == "lightning-gen" else f"{self.contender}-{self.setting}"


# --- lightning-gen: the default config through the CLI --------------------------------------------
def max_time(seconds: float) -> str:
    """Lightning's ``max_time`` string, DD:HH:MM:SS, for a budget rounded up to a whole second."""
    whole = math.ceil(seconds)
    return f"{whole // 86400:02d}:{whole // 3600 % 24:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def train_default(family: str, seconds: float, seed: int, quick: bool = False,
                  overrides: tuple[str, ...] = (), keep_runs: Path | None = None) -> Trained:
    """The family's config through the CLI, in a temporary folder, or with ``keep_runs`` in
    ``keep_runs/<family>-seed<S>-<M>min`` (its ``runs/`` folder and checkpoints, for ``compare``)."""
    started = time.perf_counter()
    clock = StopAfter(seconds, started=started)
    args = ["fit", "--config", str(REPO / "configs" / f"{family}_fmnist.yaml"), f"--seed_everything={seed}",
            "--trainer.max_epochs=-1", f"--trainer.max_time={max_time(seconds)}", "--trainer.enable_progress_bar=false",
            *(["--trainer.limit_val_batches=0"] if quick else []), *(f"--{option}" for option in overrides)]
    # the CLI's run summary goes to stderr: stdout is this benchmark's table
    if keep_runs is None:
        where = tempfile.TemporaryDirectory()
    else:
        kept = Path(keep_runs) / f"{family}-seed{seed}-{seconds / 60:g}min"
        kept.mkdir(parents=True, exist_ok=True)
        where = contextlib.nullcontext(kept)
    with where as folder, contextlib.chdir(folder), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # sys.argv is ours, not the CLI's
        cli = LightningGenCLI(args=args, trainer_defaults={"callbacks": [clock]})
    evaluation = sum(callback.seconds_spent for callback in cli.trainer.callbacks if hasattr(callback, "seconds_spent"))
    return Trained(cli.model, clock.images, clock.seconds, time.perf_counter() - started, clock.in_batches, evaluation)


def contenders(family: str, quick: bool, overrides: tuple[str, ...] = (), keep_runs: Path | None = None
               ) -> list[Contender]:
    """lightning-gen's default config (with ``overrides``, command-line options without their leading
    dashes, for an ablation), then the two plain settings, then the peer library's recipe where there is one."""
    plain, peer = PLAIN_SETTINGS[family], PEER_RECIPES.get(family)
    if quick and family in PEERS:  # their nets are heavy for a CPU: a crash check trains one small batch
        plain = [(setting, description, functools.partial(train, **QUICK_PLAIN[family]))
                 for setting, description, train in plain]
        peer = (peer[0], peer[1], functools.partial(peer[2], batch_size=QUICK_BATCH))
    setting = " ".join([f"configs/{family}_fmnist.yaml", *overrides])
    default = Contender("lightning-gen", setting,
                        "the default config through the CLI" + " with changes" * bool(overrides),
                        functools.partial(train_default, family, quick=quick, overrides=tuple(overrides),
                                          keep_runs=keep_runs))
    return [default, *(Contender("plain", setting, description, train) for setting, description, train in plain),
            *([Contender("peer", *peer)] if peer else [])]


# --- evaluation, after the budget ---------------------------------------------------------------
def evaluate(model: nn.Module, num_samples: int, nll_images: int, inception_samples: int = 0) -> dict[str, float]:
    """FID, KID, precision, recall (``fmnist_clf``: ``num_samples`` samples vs as many test images);
    where the model has ``log_likelihood`` and ``nll_images`` > 0, ``nll_bpd`` (bits/dim, the first
    ``nll_images`` test images); with ``inception_samples`` > 0, ``fid_inception`` (the field's FID:
    Inception-v3 features of that many samples vs as many test images, ~5 images/s on this CPU)."""
    model.to(DEVICE)
    data = FashionMNISTDataModule()

    def scores(metrics: list[str], real: int, **options) -> dict[str, float]:
        settings = EvaluationSettings(metrics=metrics, split="test", max_real=real, progress=False, **options)
        return {r.name: r.value for r in evaluate_model(model, data, settings, DEVICE)}

    sample_quality = scores(["fid", "kid", "precision_recall"], num_samples, num_samples=num_samples,
                            features=FEATURES)
    values = {name.removesuffix(f"_{FEATURES}"): value for name, value in sample_quality.items()}
    if nll_images > 0 and callable(getattr(model, "log_likelihood", None)):
        values.update(scores(["nll_bpd"], nll_images))
    if inception_samples > 0:
        values.update(scores(["fid"], inception_samples, num_samples=inception_samples, features="inception"))
    return values


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"}


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages: other processes on the machine distort a wall-clock budget."""
    return [round(x, 2) for x in os.getloadavg()]


def run_one(family: str, contender: Contender, seed: int, args) -> dict:
    """Train ``contender`` for the budget, evaluate it, and return its result record."""
    load_before = load_average()
    # the config as it was when training read it, even if the file changes during the run
    digest = config_digest(family) if contender.contender == "lightning-gen" else None
    trained = contender.train(args.minutes * 60, seed)
    evaluation_started = time.perf_counter()
    num_samples = {"pixelcnn": args.pixelcnn_samples, "flow_matching": args.flow_matching_samples}.get(
        family, args.num_samples)
    nll_images = args.flow_matching_nll_images if family == "flow_matching" else args.nll_images
    metrics = evaluate(trained.model, num_samples, nll_images, args.inception_samples)
    # how the samples were drawn (solver, NFE) where the model says: read after evaluate, for an adaptive solver
    sampling = trained.model.sampling_protocol() if callable(getattr(trained.model, "sampling_protocol", None)) \
        else None
    if args.save_samples:
        save_samples(trained.model, args.save_samples / f"{family}-{contender.key}-seed{seed}-{args.minutes:g}min.npz",
                     args.save_samples_count)
    record = {
        "family": family, "contender": contender.contender, "setting": contender.setting,
        **({"config_digest": digest} if digest else {}),
        "description": contender.description, "seed": seed, "minutes": args.minutes,
        "budget_seconds": args.minutes * 60, "train_seconds": round(trained.train_seconds, 2),
        "wall_seconds": round(trained.wall_seconds, 2), "images_trained": trained.images,
        "images_per_budget_second": round(trained.images / (args.minutes * 60), 1), "metrics": metrics,
        **({"seconds_in_training_steps": round(trained.in_batches, 2),
            "evaluation_callback_seconds": round(trained.evaluation_seconds, 2)} if trained.in_batches else {}),
        "evaluation": {"features": FEATURES, "num_samples": num_samples, "num_real": num_samples, "split": "test",
                       "nll_images": nll_images if "nll_bpd" in metrics else None, "sample_seed": 0,
                       **({"inception_samples": args.inception_samples} if args.inception_samples else {}),
                       "seconds": round(time.perf_counter() - evaluation_started, 1),
                       **({"sampling": sampling} if sampling else {})},
        "machine": machine(), "load_average": {"before": load_before, "after": load_average()},
        "torch": torch.__version__, "lightning": lightning.__version__, "lightning_gen": lightning_gen.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": args.quick,
    }
    print(f"{family} seed {seed} {contender.key}: {trained.images:,} images, {trained.train_seconds:.1f} s to the "
          f"stop, {trained.wall_seconds:.1f} s wall; evaluation {record['evaluation']['seconds']:.0f} s, "
          f"FID {metrics['fid']:.1f}", file=sys.stderr, flush=True)
    return record


def save_samples(model: nn.Module, path: Path, n: int = 16) -> None:
    """``n`` samples (sample seed 0) as ``images``, uint8 NCHW, the layout ``sample`` writes."""
    with torch.no_grad():
        images = model.sample(n, torch.Generator(device=DEVICE).manual_seed(0)).clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=torch.round(images * 255).to(torch.uint8).cpu().numpy())


# --- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    runs = parser.add_argument_group("what trains")
    runs.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    runs.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget of every run")
    runs.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: 3 for gan and vae, 1 for the others)")
    runs.add_argument("--seed-list", type=int, nargs="+", help="these seeds instead of --seeds")
    runs.add_argument("--contenders", nargs="+", choices=CONTENDER_KEYS, default=list(CONTENDER_KEYS),
                      help="a subset of the contenders (a family without a peer has no peer-* contender)")
    runs.add_argument("--override", nargs="+", default=[], metavar="OPTION=VALUE",
                      help="lightning-gen only, for ablations: CLI options added to the default config, e.g. "
                      "model.init_args.width=64 (recorded in the setting, a separate row of the table)")
    runs.add_argument("--quick", action="store_true",
                      help="0.5 s per run, 50 samples (pixelcnn and flow_matching 8): a crash check")
    scoring = parser.add_argument_group("evaluation, after the budget")
    scoring.add_argument("--num-samples", type=int, default=10_000, help="FID etc.: samples and test images")
    scoring.add_argument("--pixelcnn-samples", type=int, default=500, help="the same for pixelcnn")
    scoring.add_argument("--flow-matching-samples", type=int, default=2000,
                         help="the same for flow_matching (each sample costs NFE network passes)")
    scoring.add_argument("--nll-images", type=int, default=10_000, help="test images for bits/dim")
    scoring.add_argument("--flow-matching-nll-images", type=int, default=0,
                         help="test images for flow_matching's bits/dim (only lightning-gen's model has one: an ODE "
                         "likelihood with Hutchinson's estimator, ~100x a sample's cost per image; default 0: none)")
    scoring.add_argument("--inception-samples", type=int, default=0, metavar="N",
                         help="also FID in Inception-v3 features (fid_inception), N samples vs N test images "
                         "(default 0: none; ~5 images/s on a 2-core CPU, the test images' statistics cached)")
    output = parser.add_argument_group("what is written")
    output.add_argument("--results", type=Path, help="JSONL to append to (default "
                        f"{DEFAULT_RESULTS.relative_to(REPO)}; with --quick a temporary file)")
    output.add_argument("--report", action="store_true", help="train nothing: print the table of stored results")
    output.add_argument("--summary", action="store_true",
                        help="print one row per family and budget (the default config against the better plain "
                        "setting and the peer) instead of each family's table of seeds")
    output.add_argument("--save-samples", type=Path, metavar="FOLDER",
                        help="also write 16 samples of each trained contender to FOLDER/<family>-<contender>-seed<S>-"
                        "<M>min.npz (for docs/samples_figure.py)")
    output.add_argument("--save-samples-count", type=int, default=16, metavar="N",
                        help="samples written by --save-samples (default 16)")
    output.add_argument("--keep-runs", type=Path, metavar="FOLDER",
                        help="lightning-gen's runs (checkpoints, logs) kept in FOLDER/<family>-seed<S>-<M>min, "
                        "for compare (default: a temporary folder, deleted)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.num_samples, args.pixelcnn_samples, args.nll_images = (
            QUICK_MINUTES, QUICK_SAMPLES, QUICK_PIXELCNN_SAMPLES, QUICK_NLL_IMAGES)
        args.flow_matching_samples = QUICK_FLOW_MATCHING_SAMPLES
        if args.seeds is None and args.seed_list is None:
            args.seeds = 1
    return args


def seeds_of(family: str, args: argparse.Namespace) -> list[int]:
    return args.seed_list or list(range(args.seeds if args.seeds is not None else SEEDS_BY_FAMILY[family]))


def check_peer_libraries(families, contender_keys) -> None:
    """Refuse to start when a chosen peer contender's library is missing (before any budget is spent)."""
    missing = [PEERS[f] for f in families if f in PEERS and f"peer-{PEERS[f]}" in contender_keys
               and importlib.util.find_spec(PEERS[f]) is None]
    if missing:
        raise SystemExit(f"the peer contenders need {', '.join(missing)}: pip install -e '.[bench]' (the benchmarks' "
                         f"extra), or leave them out with --contenders lightning-gen plain-A plain-B")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    families = FAMILIES if args.family == "all" else (args.family,)
    if not args.report:
        check_peer_libraries(families, args.contenders)
    with tempfile.TemporaryDirectory() as scratch:
        results = args.results or (Path(scratch) / "quality_at_budget.jsonl" if args.quick else DEFAULT_RESULTS)
        if not args.report:
            threads = torch.get_num_threads()
            for family in families:
                for seed in seeds_of(family, args):
                    for contender in contenders(family, args.quick, tuple(args.override), args.keep_runs):
                        if contender.key not in args.contenders:
                            continue
                        try:
                            record = run_one(family, contender, seed, args)
                        except NonFiniteSamplesError as error:  # a contender that diverged: said, not scored
                            print(f"{family} seed {seed} {contender.key}: not scored: {error}", file=sys.stderr)
                            continue
                        if torch.get_num_threads() != threads:
                            print(f"warning: torch threads changed from {threads} to {torch.get_num_threads()}",
                                  file=sys.stderr)
                        results.parent.mkdir(parents=True, exist_ok=True)
                        with open(results, "a") as out:
                            out.write(json.dumps(record) + "\n")
        print_tables(read_results(results), families, args, results)


def print_tables(records: list[dict], families, args: argparse.Namespace, results: Path) -> None:
    print(f"Sample quality at a fixed wall-clock budget, Fashion-MNIST: lightning-gen default configs (CLI) vs plain "
          f"PyTorch{' (quick: not meaningful)' * args.quick}")
    if not args.report:  # a report's rows name the machines they ran on
        print(f"this machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads (torch's default, the same for every contender), "
              f"device {DEVICE.type}")
    shown = results.relative_to(REPO) if results.is_relative_to(REPO) else results
    if args.summary:
        print(f"FID in {FEATURES} features of as many test images as samples, the median over seeds (the latest run "
              f"of each; {len(records)} runs in {shown}) and the worst seed's\n")
        print("\n".join(summary_table(records, families, args.quick)))
        return
    print("after the budget: FID, KID, precision, recall; bits/dim on the test split where defined; KID etc.: the "
          "median over seeds; worst: the seed with the highest FID\n")
    for family in families:
        print("\n".join(family_table(records, family, args.minutes, args.quick, shown)))


if __name__ == "__main__":
    main()
