"""Any folder of PNG/JPEG images, resized and centre-cropped to a square size, grayscale or RGB."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2
from tqdm import tqdm

from lightning_gen.data.base import SplitDataModule, resolve_data_dir
from lightning_gen.data.pixels import from_uint8_levels
from lightning_gen.errors import DatasetFileError, check_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageFiles(Dataset):
    """Images found recursively under a root; the label is the index of the first sub-folder (0 if flat)."""

    def __init__(self, files: list[Path], labels: list[int], image_size: int, grayscale: bool):
        self.files, self.labels = files, labels
        self.mode = "L" if grayscale else "RGB"
        self.transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(image_size, antialias=True),  # shorter side to image_size
                v2.CenterCrop(image_size),
            ]
        )  # uint8 levels; __getitem__ scales them exactly to k / 255 (v2.ToDtype's scaling is off by an ulp)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetFileError(f"cannot decode image {path}: {error}. Remove or replace the file.") from error
        return from_uint8_levels(self.transform(image)), self.labels[index]


class ImageFolderDataModule(SplitDataModule):
    """A folder of images. Sub-folders, if any, are classes (sorted by name).

    A folder has no official test split, so ``test_fraction`` of the images (chosen by ``split_seed``)
    is held out as the test set, and ``val_fraction`` of the rest as the validation set.
    ``image_size`` must be divisible by 4 for the convolutional nets.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int = 32,
        grayscale: bool = False,
        test_fraction: float = 0.1,
        **split_kwargs,
    ):
        super().__init__(**split_kwargs)
        self.data_dir = resolve_data_dir(data_dir, ".")
        check_range(at_least=4, image_size=image_size)
        check_range(above=0, below=1, test_fraction=test_fraction)
        self.image_size, self.grayscale, self.test_fraction = image_size, grayscale, test_fraction
        self.files, self.labels, classes = self._scan()
        self.data_shape = (1 if grayscale else 3, image_size, image_size)
        self.num_classes = max(1, len(classes))
        self._test_indices = self._held_out_test_indices()

    def _scan(self) -> tuple[list[Path], list[int], list[str]]:
        root = self.data_dir
        if not root.is_dir():
            raise DatasetFileError(
                f"image folder {root} does not exist. Pass an existing folder with `--data.data_dir` "
                "or set $LIGHTNING_GEN_DATA."
            )
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetFileError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files.")
        classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
        class_index = {name: i for i, name in enumerate(classes)}
        labels = [class_index.get(p.relative_to(root).parts[0], 0) for p in files]
        return files, labels, classes

    def prepare_data(self) -> None:
        """Check that every image decodes (headers and checksums, no pixels), so that a broken file stops
        the run before training rather than at the batch that first draws it."""
        files = tqdm(self.files, desc=f"checking {self.data_dir}", unit="image", disable=len(self.files) < 5000)
        for path in files:
            try:
                with Image.open(path) as image:
                    image.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as error:
                raise DatasetFileError(f"cannot decode image {path}: {error}. Remove or replace the file.") from None

    def _held_out_test_indices(self) -> set[int]:
        n = len(self.files)
        generator = torch.Generator().manual_seed(self.split_seed + 1)  # not the train/val permutation
        n_test = max(1, round(n * self.test_fraction))
        return set(torch.randperm(n, generator=generator)[:n_test].tolist())

    def _load(self, train: bool) -> Dataset:
        dataset = ImageFiles(self.files, self.labels, self.image_size, self.grayscale)
        indices = [i for i in range(len(self.files)) if (i in self._test_indices) != train]
        return Subset(dataset, indices)
