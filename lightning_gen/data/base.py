"""Shared DataModule behaviour: a seeded train/val split, the official test split, subsets, loaders.

Subclasses set ``data_shape`` and ``num_classes`` in ``__init__`` (``LightningCLI`` links them to the
model right after the DataModule is constructed) and implement ``_load(train)``, which returns the
full official train or test split as a ``Dataset`` of ``(x, label)`` pairs with ``x`` following the
pixel convention of ``lightning_gen.data.pixels``.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_gen.data.resident import EpochShards, ResidentLoader, resident_tensors
from lightning_gen.errors import ConfigValueError, check_range


def batch_images(batch) -> torch.Tensor:
    """The images of a DataModule batch: ``(images, labels)`` pairs, or bare image tensors."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class TensorImages(Dataset):
    """In-memory uint8 images ``[N, C, H, W]`` and labels; items are float images in [0, 1]."""

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor):
        assert images_uint8.dtype == torch.uint8 and images_uint8.ndim == 4
        self.images = images_uint8
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float() / 255, self.labels[index]


def resolve_data_dir(data_dir: str | os.PathLike | None, default: str | os.PathLike) -> Path:
    """The folder to read: the argument, else ``$LIGHTNING_GEN_DATA``, else ``default``."""
    chosen = data_dir or os.environ.get("LIGHTNING_GEN_DATA") or default
    return Path(chosen).expanduser()


class SplitDataModule(pl.LightningDataModule):
    """Deterministic train/val split of the official train set; ``test`` is the official test set.

    Args:
        batch_size: images per training batch (evaluation uses ``eval_batch_size`` or the same).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster copies to a GPU.
        val_fraction: share of the official train set held out for validation.
        split_seed: seed of the train/val permutation; the same seed gives the same split everywhere.
        subset: keep only the first N images of the train set (before the split) and of the test
            set; ``None`` keeps all. For tests and smoke runs.
        device_resident: keep the whole train split on the training device and draw shuffled batches
            from it by index (``data.resident``): no workers, no collation, no copy per batch. For data
            that fits in memory; needs ``num_workers`` 0. Validation and test stay DataLoaders.
    """

    data_shape: tuple[int, ...]
    num_classes: int
    # arguments that change how batches are loaded, never which images: everything else a DataModule saves
    # in its hyperparameters keys the cache of real-image features (metrics.real_features.dataset_identity)
    loader_only_args = frozenset({"batch_size", "num_workers", "pin_memory", "eval_batch_size", "device_resident",
                                  "download"})

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        subset: int | None = None,
        eval_batch_size: int | None = None,
        device_resident: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()  # with the subclass's arguments: lets `evaluate` rebuild it from a checkpoint
        check_range(above=0, below=1, val_fraction=val_fraction)
        check_range(at_least=1, batch_size=batch_size, eval_batch_size=eval_batch_size)
        check_range(at_least=0, num_workers=num_workers)
        if subset is not None and subset < 2:
            raise ConfigValueError(f"subset must be at least 2 (one train and one val sample), got {subset}")
        if device_resident and num_workers > 0:
            raise ConfigValueError(
                f"device_resident true draws training batches in the training process itself, so num_workers "
                f"({num_workers}) would only start idle processes: set `--data.init_args.num_workers 0`, or "
                "`--data.init_args.device_resident false` to load batches in DataLoader workers"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.subset = subset
        self.device_resident = device_resident
        self.shuffle_seed: int | None = None  # of the resident loader's epoch permutations, taken at setup
        self._resident: tuple[torch.Tensor, torch.Tensor, bool] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _load(self, train: bool) -> Dataset:
        raise NotImplementedError

    def _first(self, dataset: Dataset) -> Dataset:
        if self.subset is None or self.subset >= len(dataset):
            return dataset
        return Subset(dataset, range(self.subset))

    def split_indices(self, n: int) -> tuple[list[int], list[int]]:
        """Train and val indices of a pool of ``n`` samples; depends only on ``n`` and ``split_seed``."""
        permutation = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n_val = max(1, round(n * self.val_fraction))
        return sorted(permutation[n_val:]), sorted(permutation[:n_val])

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and self.train_set is None:
            pool = self._first(self._load(train=True))
            train_idx, val_idx = self.split_indices(len(pool))
            self.train_set, self.val_set = Subset(pool, train_idx), Subset(pool, val_idx)
            # the seed `seed_everything` set, whatever was drawn since; a resumed fit restores the RNG's
            # state from its checkpoint only after setup, so both runs get the same seed here
            self.shuffle_seed = torch.initial_seed()
        if stage in ("test", "predict", None) and self.test_set is None:
            self.test_set = self._first(self._load(train=False))

    def _loader(self, dataset: Dataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        assert dataset is not None, "setup() has not been called for this stage"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader | ResidentLoader:
        if self.device_resident:
            return self._resident_loader()
        return self._loader(self.train_set, shuffle=True, batch_size=self.batch_size)

    def _resident_loader(self) -> ResidentLoader:
        """The train split on the trainer's device (the CPU without a trainer), sharded by rank like
        Lightning's ``DistributedSampler``, which Lightning inserts into real DataLoaders only."""
        assert self.train_set is not None and self.shuffle_seed is not None, "setup('fit') has not been called"
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        seed = self.shuffle_seed
        if world_size > 1:  # every rank cuts the same permutation, even where the processes were not seeded alike
            seed = trainer.strategy.broadcast(seed, src=0)
        # built here, not in setup: the launcher runs setup before the trainer (and so the device) is attached
        if self._resident is None or self._resident[0].device != device:
            self._resident = resident_tensors(self.train_set, device)
        sampler = EpochShards(len(self.train_set), seed, rank, world_size)
        return ResidentLoader(*self._resident, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, batch_size=self.eval_batch_size)

    def split_dataloader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """The ``train``, ``val`` or ``test`` split in a fixed order (for evaluation)."""
        if split not in ("train", "val", "test"):
            raise ConfigValueError(f"unknown split {split!r}; choose train, val or test")
        self.setup("test" if split == "test" else "fit")
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        return self._loader(dataset, shuffle=False, batch_size=batch_size or self.eval_batch_size)
