"""CIFAR-10 (32x32 RGB, 10 classes) through torchvision's reader of the python-pickle archive."""

from __future__ import annotations

import torch

from lightning_gen.data.base import SplitDataModule, TensorImages, resolve_data_dir
from lightning_gen.errors import DatasetFileError


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 (Krizhevsky 2009) from ``data_dir`` (the folder that holds ``cifar-10-batches-py``).

    Looks in ``data_dir``, then ``$LIGHTNING_GEN_DATA``, then ``~/.cache/lightning_gen/cifar10``;
    ``download=True`` fetches the archive when the machine is online.
    """

    def __init__(self, data_dir: str | None = None, download: bool = False, **split_kwargs):
        super().__init__(**split_kwargs)
        self.data_dir = resolve_data_dir(data_dir, "~/.cache/lightning_gen/cifar10")
        self.download = download
        self.data_shape = (3, 32, 32)
        self.num_classes = 10

    def fix_hint(self) -> str:
        return (
            "Fix it in one of three ways: (1) pass the folder that holds `cifar-10-batches-py`, e.g. "
            "`--data.data_dir /path/to/folder`; (2) set $LIGHTNING_GEN_DATA to that folder; "
            "(3) set `--data.download true` on a machine with internet."
        )

    def _torchvision(self, train: bool, download: bool):
        import torchvision

        try:
            return torchvision.datasets.CIFAR10(root=str(self.data_dir), train=train, download=download)
        except Exception as error:  # torchvision says "not found or corrupted", or the download failed
            raise DatasetFileError(f"CIFAR-10 in {self.data_dir}: {error}.\n{self.fix_hint()}") from error

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self._torchvision(train, download=True)

    def _load(self, train: bool) -> TensorImages:
        dataset = self._torchvision(train, download=False)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
        return TensorImages(images, torch.tensor(dataset.targets))
