"""Evaluation: what the metrics say about known degradations of real data, and what one pass costs.

    python benchmarks/evaluation.py [--num_samples 10000]

Table 1, metric sanity (Fashion-MNIST classifier features, `num_samples` "generated" images vs the
same number of test images): train images, blurred and noisy train images, and one class only
(a mode collapse). Table 2, the cost of one evaluation pass (fid, kid, precision_recall) of the
default VAE with uncached real features (first pass) and cached ones (later passes), side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from budget import print_ratios  # noqa: E402  (benchmarks/ is the script's folder)
from torchvision.transforms.v2.functional import gaussian_blur

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.metrics.sample_files import ImageBank
from lightning_gen.models import VAE


def cycled(images: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images: ``images`` repeated in order (one class has fewer than n training images)."""
    return images[torch.arange(n) % len(images)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_samples", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true",
                        help="200 images: a crash check (CI), not the published numbers")
    args = parser.parse_args()
    n = 200 if args.quick else args.num_samples
    data = FashionMNISTDataModule()
    pool = data.split_dataloader("train").dataset
    images = torch.stack([pool[i][0] for i in range(len(pool))])
    labels = torch.stack([pool[i][1] for i in range(len(pool))])
    generator = torch.Generator().manual_seed(0)
    train = images[:n]
    cases = {
        "train vs test": train,
        "blur sigma=0.5": gaussian_blur(train, kernel_size=7, sigma=0.5),
        "blur sigma=1.0": gaussian_blur(train, kernel_size=7, sigma=1.0),
        "noise std=0.05": (train + 0.05 * torch.randn(train.shape, generator=generator)).clamp(0, 1),
        "noise std=0.1": (train + 0.1 * torch.randn(train.shape, generator=generator)).clamp(0, 1),
        "one class (sneaker)": images[labels == 7][:n],
    }
    with tempfile.TemporaryDirectory() as cache:
        settings = EvaluationSettings(metrics=["fid", "kid", "precision_recall"], num_samples=n, split="test",
                                      max_real=n, cache_dir=cache, progress=False)
        print(f"\nMetric sanity, fmnist_clf features, {n} images vs {n} test images")
        print(f"{'images':<22} {'FID':>9} {'KID':>9} {'precision':>10} {'recall':>8}")
        for name, bank in cases.items():
            r = {x.name.replace("_fmnist_clf", ""): x.value
                 for x in evaluate_model(ImageBank(cycled(bank, n)), data, settings, "cpu")}
            print(f"{name:<22} {r['fid']:>9.2f} {r['kid']:>9.2f} {r['precision']:>10.3f} {r['recall']:>8.3f}")

    model = VAE(latent_dim=16)
    with tempfile.TemporaryDirectory() as cache:
        settings = EvaluationSettings(metrics=["fid", "kid", "precision_recall"], num_samples=n, split="test",
                                      cache_dir=cache, progress=False)
        timings = []
        for label in ("uncached real features", "cached real features"):
            start = time.perf_counter()
            evaluate_model(model, data, settings, "cpu")
            timings.append((label, time.perf_counter() - start))
    print_ratios(f"One evaluation pass of the default VAE: {n} samples vs the 10000 test images",
                 ("real features", "seconds", "vs cached"), timings, reference=timings[1][1], value_format=".2f")


if __name__ == "__main__":
    main()
