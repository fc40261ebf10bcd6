"""Shared DataModules. Pixel convention: see ``lightning_gen.data.pixels``."""

from lightning_gen.data.base import SplitDataModule, TensorImages
from lightning_gen.data.cifar import CIFAR10DataModule
from lightning_gen.data.codes import VQCodesDataModule
from lightning_gen.data.folder import ImageFolderDataModule
from lightning_gen.data.mnist import FashionMNISTDataModule, MNISTDataModule
from lightning_gen.data.toy import ToyMixtureDataModule
from lightning_gen.errors import DatasetFileError

__all__ = [
    "CIFAR10DataModule",
    "DatasetFileError",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SplitDataModule",
    "TensorImages",
    "ToyMixtureDataModule",
    "VQCodesDataModule",
]
