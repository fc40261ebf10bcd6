"""Draw the README's picture: samples of each model family from finished runs, one row per run.

    python docs/samples_figure.py runs/compare/ae_fmnist/version_0 runs/compare/vae_fmnist/version_0 \
        runs/compare/gan_fmnist/version_0 runs/compare/pixelcnn_fmnist/version_0 --out docs/images/samples.png

Each run's checkpoints/last.ckpt is loaded as the model class it records; every row is drawn with the
same seed, so the picture is reproducible from the checkpoints. A row can also be an ``.npz`` of samples
(``images``, uint8 NCHW, as ``sample`` and ``benchmarks/quality_at_budget.py --save-samples`` write),
and any row can carry its own title as ``"TITLE=PATH"``:

    python docs/samples_figure.py "VAE, 5 min: FID 210=samples/vae-lightning-gen-seed0-5min.npz" ...

``--below FIGURE.png`` draws the new rows under an existing figure drawn with the same ``--n`` (the same
width), so rows of new runs join a picture whose earlier runs' samples are gone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from lightning_gen.checkpoints import load_run  # noqa: E402


def samples_of(row: str, n: int, seed: int) -> tuple[str, torch.Tensor]:
    title, _, path = ("", "", row) if Path(row).exists() else row.partition("=")  # checkpoint names hold "=" too
    run = Path(path)
    if run.suffix == ".npz":
        images = torch.from_numpy(np.load(run)["images"][:n]).float() / 255
        return title or run.stem, images
    label, images = _checkpoint_samples(run, n, seed)
    return title or label, images


def _checkpoint_samples(run: Path, n: int, seed: int) -> tuple[str, torch.Tensor]:
    loaded = load_run(run)
    with torch.no_grad():
        images = loaded.model.sample(n, generator=torch.Generator().manual_seed(seed))
    budget = f", {loaded.record['fit_seconds'] / 60:.1f} CPU min" if "fit_seconds" in loaded.record else ""
    return f"{type(loaded.model).__name__}{budget}", images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders, checkpoints or .npz samples, each optionally TITLE=PATH")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/images/samples.png"))
    parser.add_argument("--below", type=Path, metavar="FIGURE", help="an earlier figure to draw the rows under")
    args = parser.parse_args()
    rows = [samples_of(run, args.n, args.seed) for run in args.runs]
    figure, axes = plt.subplots(len(rows), 1, figsize=(args.n * 0.6, len(rows) * 0.85), squeeze=False)
    for axis, (label, images) in zip(axes[:, 0], rows):
        grid = make_grid(images.clamp(0, 1), nrow=args.n, padding=2, pad_value=1.0)
        axis.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title(label, fontsize=8, loc="left")
        axis.set_xticks([])
        axis.set_yticks([])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120, bbox_inches="tight")
    if args.below:
        stack_below(args.below, args.out)
    print(f"{len(rows)} rows of {args.n} samples -> {args.out}")


def stack_below(earlier: Path, new: Path) -> None:
    """Write ``earlier`` with ``new`` under it to ``new`` (the narrower one padded with white on the right)."""
    from PIL import Image

    top, bottom = Image.open(earlier).convert("RGB"), Image.open(new).convert("RGB")
    stacked = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    stacked.paste(top, (0, 0))
    stacked.paste(bottom, (0, top.height))
    stacked.save(new)


if __name__ == "__main__":
    main()
