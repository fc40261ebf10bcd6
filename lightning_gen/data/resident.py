"""Device-resident training data: the whole train split as two tensors on the training device, and
shuffled batches drawn from them by index, with no worker processes and no collation.

For data that fits in memory (Fashion-MNIST, MNIST, CIFAR-10, toy mixtures, small image folders) this
removes the per-image ``__getitem__``, the collation and the host-to-device copy of every batch. 8-bit
images stay 8-bit levels on the device (a quarter of the float size) and become floats in [0, 1] per
batch, by ``pixels.from_uint8_levels``: the same values the DataLoader path gives.

The order is ``DistributedSampler``'s: one permutation per epoch from a generator seeded by
(seed, epoch), padded by repeating its start to a multiple of the number of processes, and rank ``r``
takes every ``world_size``-th index from ``r``. Lightning sets the epoch through ``loader.sampler.set_epoch``
as it does for a ``DistributedSampler``, so a run resumed at epoch ``e`` draws the same order as one that
never stopped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lightning_gen.data.pixels import from_uint8_levels, to_uint8_levels
from lightning_gen.errors import ConfigValueError

# the resident split may take at most this share of the target device's free memory: the rest is left to
# the model, its optimizer state and activations (and, on the host, to everything else)
MAX_SHARE_OF_FREE_MEMORY = 0.5


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for ``(seed, epoch)``; mixed, so that seed s's epoch 1 is not seed s+1's epoch 0."""
    low, high = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32).tolist()
    return ((high << 32) | low) & (2**63 - 1)


def epoch_indices(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """The indices into ``n`` samples that process ``rank`` of ``world_size`` trains on in ``epoch``.

    Every rank computes the same permutation, pads it by repeating its start until it divides evenly
    (as ``DistributedSampler`` does, so every rank gets ``ceil(n / world_size)`` indices and the same
    number of batches), and takes every ``world_size``-th entry from ``rank``. Returns int64 ``[ceil(n / world_size)]``.
    """
    assert 0 <= rank < world_size and n > 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    per_rank = -(-n // world_size)
    padding = per_rank * world_size - n
    if padding:
        order = torch.cat([order, order.repeat(-(-padding // n))[:padding]])
    return order[rank::world_size]


class EpochShards:
    """The sampler of a ``ResidentLoader``: this rank's indices of the current epoch (``epoch_indices``).

    ``set_epoch`` is the hook Lightning calls on a loader's ``sampler`` at every epoch start (with the
    epoch a resumed run continues from); outside Lightning, call it yourself as with a ``DistributedSampler``.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> Tensor:
        return epoch_indices(self.n, self.seed, self.epoch, self.rank, self.world_size)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return -(-self.n // self.world_size)


class ResidentLoader:
    """Batches ``[samples, labels]`` (the DataLoader path's format) gathered from tensors that stay on one device.

    ``samples`` is ``[N, ...]``: uint8 levels when ``levels`` is true (converted to [0, 1] per batch),
    else already the values to yield. The last partial batch is kept, like the DataLoader path's.
    """

    def __init__(self, samples: Tensor, labels: Tensor, levels: bool, batch_size: int, sampler: EpochShards):
        assert samples.device == labels.device and len(samples) == len(labels) == sampler.n
        self.samples, self.labels, self.levels = samples, labels, levels
        self.batch_size, self.sampler = batch_size, sampler

    @property
    def device(self) -> torch.device:
        return self.samples.device

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        # a generator: this body, and so the epoch's order, runs at the first batch, after Lightning's
        # set_epoch (which comes after its iter() at the start of fit)
        order = self.sampler.indices().to(self.device, non_blocking=True)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            samples = self.samples.index_select(0, index)
            yield [from_uint8_levels(samples) if self.levels else samples, self.labels.index_select(0, index)]


def _innermost(dataset: Dataset) -> tuple[Dataset, Tensor | None]:
    """The dataset under nested ``Subset``s and the indices into it (``None``: all of it, in order)."""
    indices = None
    while isinstance(dataset, Subset):
        outer = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        indices = outer if indices is None else outer[indices]
        dataset = dataset.dataset
    return dataset, indices


def free_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (a GPU's own; the host's for anything else), or ``None`` where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(needed: int, device: torch.device, what: str) -> None:
    """Refuse a resident split that would take more than ``MAX_SHARE_OF_FREE_MEMORY`` of ``device``'s free memory."""
    free = free_bytes(device)
    if free is not None and needed > MAX_SHARE_OF_FREE_MEMORY * free:
        raise ConfigValueError(
            f"device_resident: the train split ({what}) takes {needed / 2**20:.0f} MiB on {device}, more than "
            f"{MAX_SHARE_OF_FREE_MEMORY:.0%} of its free memory ({free / 2**20:.0f} MiB). Set "
            "`--data.init_args.device_resident false` (batches then stream through a DataLoader; add num_workers), "
            "or train on fewer images with `--data.init_args.subset N`."
        )


def resident_tensors(dataset: Dataset, device: torch.device) -> tuple[Tensor, Tensor, bool]:
    """``(samples, labels, levels)`` of a dataset of ``(x, label)`` pairs, on ``device``.

    A ``TensorImages`` (under any ``Subset``s) keeps its uint8 levels (``levels`` true); a two-tensor
    ``TensorDataset`` keeps its tensors; any other dataset is read once, item by item (an image folder
    decodes every file here), and kept as uint8 levels where its values are all exactly k / 255.
    """
    from lightning_gen.data.base import TensorImages  # base imports this module

    base, indices = _innermost(dataset)
    n = len(dataset)
    if isinstance(base, TensorImages) or (isinstance(base, TensorDataset) and len(base.tensors) == 2):
        samples, labels = (base.images, base.labels) if isinstance(base, TensorImages) else base.tensors
        per_item = samples[0].nbytes + labels[0].nbytes
        check_fits(n * per_item, device, f"{n} x {tuple(samples.shape[1:])} {samples.dtype}")
        if indices is not None:
            samples, labels = samples[indices], labels[indices]
        return samples.to(device), labels.to(device), isinstance(base, TensorImages)
    first, label = dataset[0]
    per_item = torch.as_tensor(first).nbytes + torch.as_tensor(label).nbytes
    check_fits(n * per_item, device, f"{n} x {tuple(first.shape)} {first.dtype}, decoded")
    parts = list(DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0))
    labels = torch.cat([y for _, y in parts]).to(device)
    levels = [to_uint8_levels(x).to(torch.uint8) for x, _ in parts]  # batch by batch: small temporaries
    if all(x.dtype == torch.float32 and torch.equal(from_uint8_levels(k), x) for k, (x, _) in zip(levels, parts)):
        return torch.cat(levels).to(device), labels, True
    return torch.cat([x for x, _ in parts]).to(device), labels, False
