"""PixelCNN sampling speed: the cached fast sampler against the reference sampler, side by side.

    python benchmarks/pixelcnn_sampling.py [--batch-sizes 1 16 64] [--reference-rows 28 28 2] [--device cpu]
    python benchmarks/pixelcnn_sampling.py --quick      # a tiny 8x8 model, well under a minute

The model is configs/pixelcnn_fmnist.yaml's (gated, the config's width, depth and kernel size, categorical,
28x28 grayscale) with a seeded random initialisation: sampling costs the same whatever the weights.
For each batch size, one after the other in this run:

- fast: ``PixelCNN.sample(sampler="fast_eager")``, cached activations, only what the next pixel needs;
- graph (CUDA only): ``sampler="fast"``, the same sampler recorded as a CUDA graph and replayed. "graph
  record s" is its first call at a batch size (an eager warm-up run, then the recording); "graph s/batch" a
  later call (a replay with new noise); "graph == fast" compares the replay's images with the eager sampler's
  for the same noise (torch.equal);
- reference: one full network pass per pixel (H * W = 784 passes, the package's ``sample_by_full_passes``)
  fed the same pre-drawn uniform noise. With ``--reference-rows R < H`` only the first R rows are
  timed and the time is scaled by H / R (every row is W full passes, so every row costs the same).

Units: s/batch is the wall time to draw one batch of complete images; samples/s = batch / (s/batch);
speed-up = reference s/batch / fast s/batch. "fast == reference" compares the two samplers' images:
torch.equal when the reference ran fully, otherwise the share of equal pixels over the rows it drew.
Each number is one timing (after a warm-up), so other processes on the machine show up in it: the
load averages printed with the table say whether the machine was busy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

from lightning_gen.models import PixelCNN
from lightning_gen.samplers.autoregressive import sample_by_full_passes

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pixelcnn_fmnist.yaml"


class _RowsDone(Exception):
    """Raised by the recording picker once the requested rows are drawn."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fast(model: PixelCNN, n: int, seed: int, sampler: str = "fast_eager") -> tuple[torch.Tensor, float]:
    generator = torch.Generator(model.device).manual_seed(seed)
    synchronize(model.device)
    start = time.perf_counter()
    images = model.sample(n, generator, sampler=sampler)
    synchronize(model.device)
    return images, time.perf_counter() - start


def time_reference_rows(model: PixelCNN, n: int, seed: int, rows: int) -> tuple[torch.Tensor, float]:
    """The reference sampler stopped after the first ``rows`` rows: (those rows ``[n, C, rows, W]``, seconds).

    The noise is drawn as ``PixelCNN.sample`` draws it for an unconditional model (one block
    ``[n, noise_per_pixel, H, W]`` from a generator seeded like the fast run's), so both samplers see the
    same random numbers. The clock stops when the last pixel of row ``rows - 1`` is picked.
    """
    channels, height, width = model.data_shape
    net, distribution = model.net, model.distribution
    generator = torch.Generator(model.device).manual_seed(seed)
    noise = torch.rand(n, distribution.noise_per_pixel, height, width, generator=generator, device=model.device,
                       dtype=model.dtype)
    drawn = torch.zeros(n, channels, rows, width, device=model.device, dtype=model.dtype)
    last = (rows - 1, width - 1, net.groups - 1)
    end = [0.0]

    def pick(i: int, j: int, group: int, params: torch.Tensor) -> torch.Tensor:
        if i == rows:
            raise _RowsDone
        values = distribution.sample_pixel(params, noise[:, :, i, j], group)
        drawn[:, net.channels_of_group(group), i, j] = values
        if (i, j, group) == last:
            synchronize(model.device)
            end[0] = time.perf_counter()
        return values

    synchronize(model.device)
    start = time.perf_counter()
    try:
        sample_by_full_passes(net, model.data_shape, pick, None, n, model.device)
    except _RowsDone:
        pass
    return drawn, end[0] - start


def build_model(quick: bool, device: torch.device) -> PixelCNN:
    torch.manual_seed(0)
    if quick:
        model = PixelCNN(data_shape=(1, 8, 8), hidden=8, layers=2, kernel_size=5)
    else:
        init_args = dict(yaml.safe_load(CONFIG.read_text())["model"]["init_args"])
        init_args.pop("optimizer", None)  # training only
        model = PixelCNN(**init_args)
    if model.num_classes is not None:
        raise SystemExit("this benchmark draws the noise of an unconditional model; set num_classes: null")
    return model.to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 1 16 64 (quick: 1 4)")
    parser.add_argument("--reference-rows", type=int, nargs="+", default=None,
                        help="rows the reference draws before extrapolating: one value, or one per batch size "
                             "(default: all rows; quick: 8 4)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny 8x8 model (hidden 8, 2 layers), batch 1 and 4")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.quick, device)
    channels, height, width = model.data_shape
    batch_sizes = args.batch_sizes or ([1, 4] if args.quick else [1, 16, 64])
    rows_arg = args.reference_rows or ([height, height // 2] if args.quick else [height])
    if len(rows_arg) not in (1, len(batch_sizes)):
        parser.error("--reference-rows takes one value or one per batch size")
    rows_per_batch = rows_arg * len(batch_sizes) if len(rows_arg) == 1 else rows_arg
    if not all(1 <= r <= height for r in rows_per_batch):
        parser.error(f"--reference-rows must be between 1 and {height}")

    load_before = os.getloadavg()[0]  # 1-minute load: other processes on the machine distort the timings
    time_fast(model, 1, args.seed)  # warm-up: first-call allocations and kernel selection
    table = []
    for n, rows in zip(batch_sizes, rows_per_batch):
        fast_images, fast_s = time_fast(model, n, args.seed)
        ref_images, ref_rows_s = time_reference_rows(model, n, args.seed, rows)
        ref_s = ref_rows_s * height / rows  # linear in rows: each row is W * groups full passes
        if rows == height:
            same = "yes (torch.equal)" if torch.equal(fast_images, ref_images) else \
                f"NO: {(fast_images != ref_images).sum().item()} of {fast_images.numel()} pixels differ"
        else:
            share = (fast_images[:, :, :rows] == ref_images).float().mean().item()
            same = f"{100 * share:.2f}% of pixels in {rows} rows"
        graph = None
        if device.type == "cuda":
            _, record_s = time_fast(model, n, args.seed + 1, sampler="fast")
            graph_images, graph_s = time_fast(model, n, args.seed, sampler="fast")
            graph = (record_s, graph_s, "yes" if torch.equal(graph_images, fast_images) else "NO")
        table.append((n, fast_s, ref_s, rows, same, graph))
        print(f"done: batch {n}", file=sys.stderr, flush=True)

    print(f"\nPixelCNN sampling, {'quick tiny model' if args.quick else CONFIG.name + ' model'} "
          f"({channels}x{height}x{width}, hidden {model.hparams.hidden}, {model.hparams.layers} layers, "
          f"kernel {model.hparams.kernel_size}, {sum(p.numel() for p in model.parameters())} parameters)")
    print(f"torch {torch.__version__}, device {args.device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{torch.get_num_threads()} threads, CPU: {cpu_model()}; load average {load_before:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end\n")
    print("| batch | fast s/batch | fast samples/s | reference s/batch | reference samples/s | speed-up "
          "| reference timed over | fast == reference |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for n, fast_s, ref_s, rows, same, _ in table:
        timed = f"all {height} rows" if rows == height else \
            f"{rows} of {height} rows, extrapolated x{height / rows:g}"
        print(f"| {n} | {fast_s:.3f} | {n / fast_s:.2f} | {ref_s:.2f} | {n / ref_s:.3f} | {ref_s / fast_s:.1f}x "
              f"| {timed} | {same} |")
    if device.type == "cuda":
        print("\n| batch | fast s/batch | graph record s | graph s/batch | graph samples/s | graph vs fast "
              "| graph == fast |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for n, fast_s, _, _, _, (record_s, graph_s, equal) in table:
            print(f"| {n} | {fast_s:.3f} | {record_s:.2f} | {graph_s:.4f} | {n / graph_s:.1f} | "
                  f"{fast_s / graph_s:.1f}x | {equal} |")


if __name__ == "__main__":
    main()
