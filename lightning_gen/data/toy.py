"""Toy 2-D mixtures of Gaussians for fast GAN tests: a ring of 8 and a 5x5 grid.

Samples are points ``[N, 2]`` (not images; the pixel convention does not apply) and the label is the
index of the mixture component that drew the point, so mode coverage can be measured exactly.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_gen.data.base import SplitDataModule
from lightning_gen.errors import ConfigValueError, check_range

MIXTURES = ("ring8", "grid25")


def mixture_means(mixture: str) -> torch.Tensor:
    """Component means ``[K, 2]``: ring8 on the circle of radius 2, grid25 on {-4, -2, 0, 2, 4}^2."""
    if mixture == "ring8":
        angles = torch.arange(8) * (2 * math.pi / 8)
        return 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    if mixture == "grid25":
        axis = torch.arange(-4.0, 5.0, 2.0)
        return torch.cartesian_prod(axis, axis)
    raise ConfigValueError(f"unknown mixture {mixture!r}; choose one of {MIXTURES}")


def sample_mixture(mixture: str, n: int, std: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points from the equal-weight mixture and the component index of each."""
    means = mixture_means(mixture)
    components = torch.randint(len(means), (n,), generator=generator)
    points = means[components] + std * torch.randn(n, 2, generator=generator)
    return points, components


class ToyMixtureDataModule(SplitDataModule):
    """A fixed draw of ``num_train`` + ``num_test`` points from a 2-D Gaussian mixture.

    Args:
        mixture: ``ring8`` or ``grid25``.
        std: standard deviation of every component.
        num_train / num_test: size of the train pool (split into train/val) and of the test set.
        data_seed: seed of the draw (independent of the training seed).
    """

    def __init__(
        self,
        mixture: str = "ring8",
        std: float = 0.02,
        num_train: int = 20000,
        num_test: int = 5000,
        data_seed: int = 0,
        **split_kwargs,
    ):
        super().__init__(**split_kwargs)
        mixture_means(mixture)  # validates the name now, not at setup
        check_range(above=0, std=std)
        check_range(at_least=2, num_train=num_train)  # one train and one val point at least
        check_range(at_least=1, num_test=num_test)
        self.mixture, self.std = mixture, std
        self.num_train, self.num_test, self.data_seed = num_train, num_test, data_seed
        self.data_shape = (2,)
        self.num_classes = len(mixture_means(mixture))

    def _load(self, train: bool) -> Dataset:
        generator = torch.Generator().manual_seed(self.data_seed * 2 + (0 if train else 1))
        points, components = sample_mixture(
            self.mixture, self.num_train if train else self.num_test, self.std, generator
        )
        return TensorDataset(points, components)
