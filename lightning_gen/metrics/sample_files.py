"""Score samples from anywhere: ``python -m lightning_gen evaluate --samples PATH --data CONFIG``.

PATH is an ``.npz`` with ``images`` (uint8 NCHW, as ``sample`` writes them, or float in [0, 1]) or a
folder of PNG files; CONFIG names the real data, as a packaged config (``vae_fmnist``), a YAML file
whose ``data`` section (or whole body) is a DataModule's ``class_path``/``init_args``, or inline JSON.
The images are scored with the metrics and protocol that ``evaluate`` uses for a checkpoint, so samples
of another framework, or real images, land in the same table; results go to ``metrics.json`` beside
PATH, keyed by its name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from lightning_gen.checkpoints import import_class
from lightning_gen.data.pixels import from_uint8_levels
from lightning_gen.errors import ConfigValueError, LightningGenError
from lightning_gen.metrics.finite import check_finite_samples
from lightning_gen.metrics.registry import (
    IMAGE_SAMPLE_METRICS,
    SAMPLE_METRICS,
    EvaluationSettings,
    evaluate_model,
)
from lightning_gen.metrics.results import format_table, write_metrics_json
from lightning_gen.packaged_configs import resolve_config
from lightning_gen.parser import add_settings_options, command_parser, settings_from

IMAGE_CHANNELS = (1, 3)


class SamplesFileError(LightningGenError):
    """A samples file or folder that cannot be scored; the message names it and the fix."""


def load_images(path: str | Path) -> Tensor:
    """``[N, C, H, W]`` float images in [0, 1] from an ``.npz`` (``images``) or a folder of PNGs."""
    path = Path(path)
    if path.is_dir():
        return _images_from_folder(path)
    if not path.is_file():
        raise SamplesFileError(f"--samples {path}: no such file or folder")
    if path.suffix != ".npz":
        raise SamplesFileError(f"--samples {path}: expected an .npz (as `sample` writes) or a folder of PNG files")
    try:
        with np.load(path) as archive:
            if "images" not in archive.files:
                raise SamplesFileError(f"--samples {path} holds {', '.join(archive.files) or 'no arrays'}, not "
                                       "`images`: save the images as `images`, uint8 [N, C, H, W] (or float in [0, 1])")
            array = archive["images"]
    except (OSError, ValueError) as error:
        raise SamplesFileError(f"--samples {path} is not a readable .npz ({error}); write it with "
                               "numpy.savez(path, images=...)") from error
    return _checked(array, str(path))


def _images_from_folder(folder: Path) -> Tensor:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise SamplesFileError(f"--samples {folder} holds no .png files: put the images there, one per file")
    images = []
    for file in files:
        try:
            with Image.open(file) as picture:
                picture = picture.convert("L" if picture.mode in ("L", "I;16", "1", "P", "LA") else "RGB")
                array = np.asarray(picture)
        except (OSError, UnidentifiedImageError) as error:
            raise SamplesFileError(f"--samples: {file} is not a readable PNG ({error}); "
                                   "remove or replace it") from error
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
        if images and array.shape != images[0].shape:
            raise SamplesFileError(f"--samples: {file} is {array.shape[1]}x{array.shape[2]} with {array.shape[0]} "
                                   f"channel(s) but {files[0].name} is {images[0].shape[1]}x{images[0].shape[2]} with "
                                   f"{images[0].shape[0]}: every image must have the same size and channels")
        images.append(array)
    return _checked(np.stack(images), str(folder))


def _checked(array: np.ndarray, name: str) -> Tensor:
    if array.ndim != 4 or array.shape[1] not in IMAGE_CHANNELS:
        raise SamplesFileError(f"--samples {name}: images have shape {tuple(array.shape)}, expected [N, C, H, W] "
                               f"with C in {IMAGE_CHANNELS} (NCHW: move the channel axis to position 1)")
    if len(array) == 0:
        raise SamplesFileError(f"--samples {name} holds no images")
    if array.dtype == np.uint8:
        return from_uint8_levels(torch.from_numpy(array))
    if not np.issubdtype(array.dtype, np.floating):
        raise SamplesFileError(f"--samples {name}: images are {array.dtype}; give uint8 levels or floats in [0, 1]")
    images = torch.from_numpy(array)
    # NaN passes the range test below (every comparison with it is false), then crashes FID's linear algebra
    check_finite_samples(images, f"--samples {name}", fix="refused before any statistics: the model that wrote "
                         "them diverged or its sampler overflowed; regenerate them (from an earlier checkpoint)")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise SamplesFileError(f"--samples {name}: float images must lie in [0, 1], these span [{low:g}, {high:g}]"
                               + ("; divide 0..255 levels by 255" if high > 1 and low >= 0 else ""))
    return images.float()


class ImageBank(nn.Module):
    """Given images behind the ``sample`` surface: each call returns the next ``n``, in order."""

    progress_label = "reading the images"  # what the evaluation's progress bar says: no sampling happens

    def __init__(self, images: Tensor):
        super().__init__()
        self.images, self.data_shape, self._next = images, tuple(images.shape[1:]), 0

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        batch = self.images[self._next : self._next + n]
        self._next += n
        return batch


def datamodule_from(spec: str, data_dir: str | None = None):
    """A DataModule from a config name or file (its ``data`` section) or inline JSON/YAML."""
    try:
        text = resolve_config(spec)
    except ConfigValueError as error:
        raise ConfigValueError(str(error).replace("--config", "--data", 1)) from None
    config = yaml.safe_load(Path(text).read_text() if Path(text).is_file() else text)
    data = config.get("data", config) if isinstance(config, dict) else None
    if not isinstance(data, dict) or "class_path" not in data:
        raise ConfigValueError(f"--data {spec}: found no DataModule (a `class_path` with `init_args`, at the top "
                               "or under `data:`); give a config such as vae_fmnist")
    init_args = dict(data.get("init_args") or {})
    if data_dir is not None:
        init_args["data_dir"] = data_dir
    return import_class(data["class_path"])(**init_args)


def score(samples: str | Path, datamodule, settings: EvaluationSettings) -> list:
    images = load_images(samples)
    expected = tuple(datamodule.data_shape)
    if tuple(images.shape[1:]) != expected:
        raise SamplesFileError(f"--samples {samples}: images are {tuple(images.shape[1:])} (C, H, W) but the real "
                               f"data ({type(datamodule).__name__}) is {expected}: pick the --data the samples imitate")
    settings.num_samples = len(images)
    return evaluate_model(ImageBank(images), datamodule, settings, "cpu")


def main(args: list[str]) -> None:
    parser = command_parser("python -m lightning_gen evaluate --samples", __doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=str, required=True, help="an .npz with `images` or a folder of PNG files")
    parser.add_argument("--data", type=str, required=True,
                        help="the real data: a config name or file, or inline JSON")
    parser.add_argument("--data_dir", type=str | None, help="the real data's folder, if not the config's")
    # the number of samples is the file's; no likelihood, so no importance samples
    add_settings_options(parser, skip={"num_samples", "importance_samples", "cache_dir"},
                         metrics=",".join(SAMPLE_METRICS))
    options = parser.parse_args(args)
    settings = settings_from(options)
    if not_sample := [name for name in settings.metrics if name not in IMAGE_SAMPLE_METRICS]:
        raise ConfigValueError(f"--metrics {', '.join(not_sample)}: samples alone have no likelihood; "
                               f"choose from {', '.join(IMAGE_SAMPLE_METRICS)}")
    results = score(options.samples, datamodule_from(options.data, options.data_dir), settings)
    path = write_metrics_json(str(Path(options.samples)), results, settings)
    print(format_table(results))
    print(f"results with protocols -> {path}")
