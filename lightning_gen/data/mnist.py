"""MNIST and Fashion-MNIST from IDX files in a folder (28x28 grayscale, 10 classes)."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_gen.data.base import SplitDataModule, TensorImages, resolve_data_dir
from lightning_gen.data.idx import read_idx
from lightning_gen.errors import DatasetFileError

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class _IdxDataModule(SplitDataModule):
    """Reads the four IDX files from ``data_dir`` (plain or ``.gz``; also the ``<Name>/raw`` layout
    that torchvision downloads into). Looks in ``data_dir``, then ``$LIGHTNING_GEN_DATA``, then
    ``default_dir``. ``download=True`` fetches the files through torchvision when the machine is online.
    """

    torchvision_name: str
    default_dir: str
    apt_hint: str

    def __init__(self, data_dir: str | None = None, download: bool = False, **split_kwargs):
        super().__init__(**split_kwargs)
        self.data_dir = resolve_data_dir(data_dir, self.default_dir)
        self.download = download
        self.data_shape = (1, 28, 28)
        self.num_classes = 10

    def fix_hint(self) -> str:
        return (
            "Fix it in one of three ways: (1) pass the folder holding the IDX files, e.g. "
            "`--data.data_dir /path/to/folder`; (2) set $LIGHTNING_GEN_DATA to that folder; "
            f"(3) {self.apt_hint}or set `--data.download true` on a machine with internet."
        )

    def _candidate_dirs(self) -> list[Path]:
        return [self.data_dir, self.data_dir / self.torchvision_name / "raw"]

    def _find(self, name: str) -> Path | None:
        for folder in self._candidate_dirs():
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    def _files_present(self) -> bool:
        return all(self._find(name) for pair in _FILES.values() for name in pair)

    def prepare_data(self) -> None:
        if self._files_present() or not self.download:
            return
        import torchvision

        dataset_class = getattr(torchvision.datasets, self.torchvision_name)
        try:
            for train in (True, False):
                dataset_class(root=str(self.data_dir), train=train, download=True)
        except Exception as error:  # offline, proxy, disk full: all need the same advice
            raise DatasetFileError(
                f"downloading {self.torchvision_name} into {self.data_dir} failed: {error}.\n{self.fix_hint()}"
            ) from error

    def _load(self, train: bool) -> TensorImages:
        image_name, label_name = _FILES[train]
        paths = [self._find(image_name), self._find(label_name)]
        if None in paths:
            missing = image_name if paths[0] is None else label_name
            state = "exists but lacks" if self.data_dir.is_dir() else "does not exist, so it lacks"
            raise DatasetFileError(
                f"{self.torchvision_name}: the folder {self.data_dir} {state} {missing}[.gz].\n{self.fix_hint()}"
            )
        images = read_idx(paths[0], expected_ndim=3, fix_hint=self.fix_hint())
        labels = read_idx(paths[1], expected_ndim=1, fix_hint=self.fix_hint())
        if len(images) != len(labels):
            raise DatasetFileError(
                f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels.\n{self.fix_hint()}"
            )
        return TensorImages(images.unsqueeze(1), labels.to(torch.long))


class FashionMNISTDataModule(_IdxDataModule):
    """Fashion-MNIST (Xiao et al. 2017). Default folder: Debian's ``dataset-fashion-mnist``."""

    torchvision_name = "FashionMNIST"
    default_dir = "/usr/share/datasets/fashion-mnist"
    apt_hint = ("install Debian's files with `apt-get install dataset-fashion-mnist` "
                "(they go to /usr/share/datasets/fashion-mnist), ")


class MNISTDataModule(_IdxDataModule):
    """MNIST digits (LeCun et al. 1998)."""

    torchvision_name = "MNIST"
    default_dir = "~/.cache/lightning_gen/mnist"
    apt_hint = ""
