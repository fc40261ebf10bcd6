"""Run the benchmarks and write their page, benchmarks/README.md: ``make bench`` (or ``python benchmarks/run_all.py``).

    python benchmarks/run_all.py                       # every benchmark, one after another, then the page
    python benchmarks/run_all.py --only lr_sensitivity # one benchmark: its section is new, the others' are kept
    python benchmarks/run_all.py --minutes 2           # the fixed-budget comparisons at 2 minutes per run
    python benchmarks/run_all.py --page-only           # run nothing: the page again from benchmarks/results/
    python benchmarks/run_all.py --quick --out /tmp/bench.md   # each benchmark's --quick mode: a crash check

Each benchmark is also runnable alone and prints its own tables of ratios measured side by side in one run
(so they mean something on a noisy machine). This runner starts them one after another (never two at once:
they would distort each other's timings) and stores what each printed in ``results/<name>.md``, under a
header with the date, the machine, the library versions and the command (``results/<name>-gpu.md`` for a
benchmark that ran on the GPU with ``--gpu``). The page is composed from those files, so a benchmark run
alone replaces its own section only. ``--quick`` keeps its results in a temporary folder (or ``--results``)
and never touches the page's. A benchmark that crashes keeps its previous result and makes the runner
fail; a slow one does not.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from machine_info import cpu_name, gpu_names, package_version

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAGE = HERE / "README.md"
QUICK_MODE = "quick (crash check, numbers not meaningful)"


@dataclass(frozen=True)
class Benchmark:
    what: str  # what it measures, for the page: one or two sentences
    args: tuple[str, ...] = ()  # the options of the page's run
    gpu_args: tuple[str, ...] = ()  # added with --gpu: the benchmark then runs on the GPU
    fixed_budget: bool = False  # trains each contender for a wall-clock budget: takes --minutes


# in the page's order: quality first, then where the time goes
BENCHMARKS = {
    "quality_at_budget": Benchmark(
        "Sample quality after a fixed wall-clock budget: each family's default config, trained through the CLI, "
        "against the better of two hand-written PyTorch baselines (`baselines.py`) and, for flow matching and the "
        "flow, a peer library's recipe (torchcfm, normflows), over seeds. One row per family and budget from every "
        "stored run (`results/quality_at_budget.jsonl`); `--report --family gan` prints a family's seeds.",
        args=("--summary",), fixed_budget=True),
    "lr_sensitivity": Benchmark(
        "How forgiving the default VAE and GAN are of their learning rate: the rate(s) times 0.5, 1 and 2 at the "
        "same wall-clock budget, one seed each (failed: diverged, or collapsed by `compare`'s recall rule).",
        fixed_budget=True),
    "vqvae_vs_pixelcnn": Benchmark(
        "The two-stage VQ-VAE + PixelCNN prior against the pixel PixelCNN at the same total wall-clock budget: FID, "
        "samples/s at batch 64, images trained.", fixed_budget=True),
    "toy_gan_seeds": Benchmark(
        "Whether the toy GAN recipes (ring of 8, 5x5 grid) hold over training seeds: modes covered and the share "
        "of high-quality samples per seed, 10 seeds each."),
    "lightning_overhead": Benchmark(
        "What the Trainer costs per step: each default model (AE, VAE, PixelCNN, GAN) fitted by Lightning against a "
        "plain loop over the same nets, loss, loader and optimizer, interleaved (images/s ratio)."),
    "vae_throughput": Benchmark(
        "Where the default VAE's time goes: the data loader alone, a Lightning training step, the IWAE evaluation "
        "(images/s)."),
    "data_loading": Benchmark(
        "Whether data loading can hold training back: each DataModule's train loader with 0 and 2 workers against "
        "the default VAE's training rate (setup s, images/s)."),
    "resident_data": Benchmark(
        "Device-resident training data against the DataLoader path for the default VAE and GAN, interleaved "
        "(training images/s ratio).", gpu_args=("--device", "cuda")),
    "compile_speed": Benchmark(
        "Eager against compiled networks (`compile: true`) for the AE, VAE, PixelCNN and GAN: training images/s "
        "through the Trainer; on a GPU also in bf16-mixed.",
        gpu_args=("--device", "cuda", "--variants", "eager", "compiled", "eager+bf16", "compiled+bf16")),
    "pixelcnn_sampling": Benchmark(
        "The PixelCNN's cached sampler against one full network pass per pixel (samples/s, and whether both draw "
        "the same images); on a GPU also its CUDA-graph replay.", gpu_args=("--device", "cuda")),
    "ddp_scaling": Benchmark(
        "Training throughput with 1 and 2 DDP processes through the launcher (on a CPU the processes share the "
        "cores: this measures the overhead of DDP).", gpu_args=("--accelerator", "gpu")),
    "evaluation": Benchmark(
        "Metric sanity: FID, KID, precision and recall of real images under known degradations; and one "
        "evaluation pass with uncached against cached real features (s)."),
}


# --- one benchmark's latest result: results/<name>.md, a header of "- key: value" lines, then its tables ----
def result_path(results: Path, name: str, gpu: bool = False) -> Path:
    return results / f"{name}{'-gpu' if gpu else ''}.md"


def this_machine() -> dict[str, str]:
    """The date, the machine and the library versions of a run starting now."""
    versions = ", ".join(f"{name} {package_version(name)}" for name in ("torch", "lightning", "torchmetrics"))
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{cpu_name()}, {os.cpu_count()} cores; GPU: "
            f"{gpu_names()}", "versions": f"python {platform.python_version()}, {versions}"}


def write_result(path: Path, fields: dict[str, str], body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"- {key}: {value}\n" for key, value in fields.items()) + "\n" + body.strip() + "\n")


def read_result(path: Path) -> tuple[dict[str, str], str]:
    """(the header's fields, the tables below it)."""
    header, _, body = path.read_text().partition("\n\n")
    fields = dict(line[2:].split(": ", 1) for line in header.splitlines())
    return fields, body.strip()


# --- the page -----------------------------------------------------------------------------------
def intro(quick: bool) -> list[str]:
    return [
        "# Benchmarks", "",
        "What each benchmark measures, the command that ran it, and its latest tables with the date and the "
        "machine.", "Written by `benchmarks/run_all.py` from `benchmarks/results/<name>.md`: edit those, or rerun, "
        "not this page. What was tried and what won, lever by lever, is in [history.md](history.md); the raw "
        "records are in [results/](results/). Ratios are measured side by side within one run, so they mean "
        "something on a noisy machine; absolute rates move with the machine and the day.", "",
        "- `make bench`: every benchmark, one after another, then this page (`BENCH_ARGS='--minutes 2'`: the "
        "fixed-budget comparisons at 2 minutes per run; `BENCH_ARGS=--gpu` on a GPU machine).",
        "- `make bench-quick`: each benchmark's `--quick` mode, a crash check, to `runs/bench_quick.md`.",
        "- One benchmark: `python benchmarks/run_all.py --only lr_sensitivity` replaces its section and keeps the "
        "others'; `python benchmarks/<name>.py --help` lists its own options.",
        "- `python benchmarks/run_all.py --page-only` writes this page again from `results/`, running nothing.",
        *([f"- mode: {QUICK_MODE}"] if quick else []), ""]


def section(name: str, results: Path) -> list[str]:
    """The benchmark's heading and what it measures, then its latest result (and its GPU result, if any)."""
    lines = [f"## {name}", "", BENCHMARKS[name].what]
    found = [path for path in (result_path(results, name), result_path(results, name, gpu=True)) if path.is_file()]
    if not found:
        return [*lines, f"No result yet: `python benchmarks/run_all.py --only {name}`.", ""]
    for path in found:
        fields, body = read_result(path)
        lines += [f"Latest: `{fields['command']}` on {fields['date']}, {fields['machine']} ({fields['versions']})"
                  + (f", {fields['seconds']} s" if "seconds" in fields else "")
                  + (f"; mode: {fields['mode']}" if "mode" in fields else "") + "."
                  + (f" {fields['note']}" if "note" in fields else ""), "", body, ""]
    return lines


def compose_page(results: Path, names=None, quick: bool = False) -> str:
    """The page: the introduction, then a section per benchmark of ``names`` (default: every benchmark)."""
    lines = intro(quick)
    for name in names or BENCHMARKS:
        lines += section(name, results)
    return "\n".join(lines)


# --- running --------------------------------------------------------------------------------------
def command_of(name: str, args: argparse.Namespace) -> list[str]:
    benchmark = BENCHMARKS[name]
    return [f"benchmarks/{name}.py", *benchmark.args, *(["--quick"] if args.quick else []),
            *(benchmark.gpu_args if args.gpu else ()),
            *(["--minutes", f"{args.minutes:g}"] if args.minutes and benchmark.fixed_budget and not args.quick else [])]


def run(name: str, args: argparse.Namespace, results: Path) -> bool:
    """Runs the benchmark; stores what it printed in its result file. False: it crashed (the old result stays)."""
    command = command_of(name, args)
    fields = this_machine()
    print(f"running {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(HERE.parent / command[0]), *command[1:]], capture_output=True,
                            text=True)
    if result.returncode:
        print(f"{name} crashed:\n{result.stderr[-3000:]}", file=sys.stderr)
        return False
    fields |= {"command": " ".join(["python", *command]), "seconds": f"{time.perf_counter() - start:.0f}",
               **({"mode": QUICK_MODE} if args.quick else {})}
    write_result(result_path(results, name, gpu=args.gpu and bool(BENCHMARKS[name].gpu_args)), fields,
                 f"```\n{result.stdout.strip()}\n```")
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick mode (CI: fails only on a "
                        "crash); its results go to a temporary folder unless --results")
    parser.add_argument("--gpu", action="store_true", help="run the benchmarks that take a device on the GPU")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="a subset of the benchmarks")
    fixed_budget = ", ".join(name for name, benchmark in BENCHMARKS.items() if benchmark.fixed_budget)
    parser.add_argument("--minutes", type=float, help="training budget of each run of the fixed-budget comparisons "
                        f"({fixed_budget}; default: each script's own)")
    parser.add_argument("--page-only", action="store_true", help="run nothing: compose the page from --results")
    parser.add_argument("--results", type=Path, help="the folder of result files (default "
                        f"{RESULTS.relative_to(HERE.parent)}; with --quick a temporary folder)")
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to (re)write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        results = args.results or (Path(scratch) if args.quick else RESULTS)
        names = [] if args.page_only else args.only or list(BENCHMARKS)
        crashed = [name for name in names if not run(name, args, results)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(compose_page(results, names if args.quick else None, args.quick))
    print(f"page: {args.out}", file=sys.stderr)
    if crashed:
        raise SystemExit(f"benchmarks that crashed (their previous results kept): {', '.join(crashed)}")


if __name__ == "__main__":
    main()
