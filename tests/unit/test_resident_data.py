"""`device_resident: true`: the train split kept on the training device, batches drawn by index. The same
images, format and split as the DataLoader path; a seeded order per epoch that a resumed run repeats;
DistributedSampler's sharding under DDP (2 CPU processes through the launcher); a model trains with it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from lightning_gen.data import FashionMNISTDataModule, ImageFolderDataModule, ToyMixtureDataModule, resident
from lightning_gen.data.base import batch_images
from lightning_gen.data.resident import EpochShards, ResidentLoader, epoch_indices
from lightning_gen.errors import ConfigValueError
from tests.support.ddp_probe import sample_digests
from tests.support.paths import lean_vae_config


def _folder(tmp_path: Path) -> Path:
    """30 random 8x8 grayscale PNGs in two class folders."""
    rng = np.random.default_rng(0)
    for i in range(30):
        folder = tmp_path / "images" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return tmp_path / "images"


# (make(device_resident) -> DataModule, expected batch sizes of an epoch): each ends in a partial batch
SOURCES = {
    "fashion_mnist": (lambda tmp, r: FashionMNISTDataModule(subset=601, batch_size=64, device_resident=r),
                      [64] * 8 + [29]),  # 601 - 60 held out = 541
    "toy_ring8": (lambda tmp, r: ToyMixtureDataModule(num_train=101, batch_size=16, device_resident=r),
                  [16] * 5 + [11]),  # 101 - 10 = 91 points
    "image_folder": (lambda tmp, r: ImageFolderDataModule(data_dir=str(_folder(tmp)), image_size=8, grayscale=True,
                                                          batch_size=7, device_resident=r),
                     [7] * 3 + [3]),  # 30 - 3 test - 3 val = 24 (decoded once, kept as uint8)
}


@pytest.mark.parametrize("source", SOURCES)
def test_an_epoch_yields_every_train_sample_once_in_the_dataloader_format(source, tmp_path, fmnist_dir):
    make, sizes = SOURCES[source]
    streamed, kept = make(tmp_path, False), make(tmp_path, True)
    for data in (streamed, kept):
        data.setup("fit")
    assert list(kept.train_set.indices) == list(streamed.train_set.indices)  # the same split
    loader, reference = kept.train_dataloader(), streamed.train_dataloader()
    assert isinstance(loader, ResidentLoader) and len(loader) == len(reference) == len(sizes)
    batches, reference_batches = list(loader), list(reference)
    assert [len(batch_images(b)) for b in batches] == [len(batch_images(b)) for b in reference_batches] == sizes
    for ours, theirs in zip(batches, reference_batches):
        assert type(ours) is type(theirs) and len(ours) == len(theirs) == 2  # [samples, labels]
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    samples = torch.cat([b[0] for b in batches])
    reference_samples = torch.cat([b[0] for b in reference_batches])

    def pairs(bs):
        return Counter(zip(sample_digests(torch.cat([b[0] for b in bs])), torch.cat([b[1] for b in bs]).tolist()))

    assert pairs(batches) == pairs(reference_batches)  # every (sample, label) once, nothing else
    assert len(set(sample_digests(samples))) == len(samples)
    if source != "toy_ring8":  # images: float in [0, 1], exactly k / 255, as the DataLoader gives them
        assert samples.min() >= 0 and samples.max() <= 1 and torch.equal(torch.round(samples * 255) / 255, samples)
        assert (samples.min(), samples.max()) == (reference_samples.min(), reference_samples.max())
    assert kept._resident[0].dtype == (torch.float32 if source == "toy_ring8" else torch.uint8)  # compact where 8-bit


def test_the_order_is_new_each_epoch_and_the_same_for_the_same_seed_and_epoch(tmp_path):
    def order(seed: int, epoch: int, data=None) -> list[str]:
        if data is None:
            torch.manual_seed(seed)  # as seed_everything leaves it
            data = ToyMixtureDataModule(num_train=200, batch_size=32, device_resident=True)
            data.setup("fit")
        loader = data.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
        return sample_digests(torch.cat([b[0] for b in loader]))

    torch.manual_seed(0)
    uninterrupted = ToyMixtureDataModule(num_train=200, batch_size=32, device_resident=True)
    uninterrupted.setup("fit")
    torch.rand(1000)  # the global RNG moves on during training: the order must not depend on it
    epochs = [order(0, epoch, uninterrupted) for epoch in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    assert order(0, 2) == epochs[2]  # a fresh process resuming at epoch 2 with the same seed
    assert order(1, 2) != epochs[2]  # another seed, another order


class _Recorder(pl.LightningModule):
    """A linear model that records the samples of every training batch by epoch."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: dict[int, list[str]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(sample_digests(batch[0]))
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(resident: bool, max_epochs: int, folder: Path, ckpt_path: Path | None = None) -> _Recorder:
    pl.seed_everything(7, verbose=False)
    model = _Recorder()
    data = ToyMixtureDataModule(num_train=50, batch_size=16, device_resident=resident)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=folder)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    if ckpt_path is None:
        trainer.save_checkpoint(folder / f"after_{max_epochs}.ckpt")
    return model


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "dataloader_control"])
def test_a_resumed_fit_trains_on_the_order_of_an_uninterrupted_one(resident, tmp_path):
    uninterrupted = _fit(resident, 3, tmp_path).seen
    _fit(resident, 1, tmp_path)
    resumed = _fit(resident, 3, tmp_path, ckpt_path=tmp_path / "after_1.ckpt").seen
    assert sorted(resumed) == [1, 2] and len(resumed[1]) == 45
    if resident:
        assert resumed == {epoch: uninterrupted[epoch] for epoch in (1, 2)}
    else:  # the DataLoader's RandomSampler draws from the global RNG, which a resumed process has not advanced
        assert resumed[1] != uninterrupted[1]


@pytest.mark.parametrize("n", [1, 7, 12])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_are_distributed_samplers_over_the_epoch_permutation(n, world_size):
    permutation = epoch_indices(n, seed=3, epoch=5)
    assert sorted(permutation.tolist()) == list(range(n))
    shards = [epoch_indices(n, 3, 5, rank, world_size) for rank in range(world_size)]
    for rank, shard in enumerate(shards):  # torch's DistributedSampler, unshuffled, over our permutation
        positions = list(DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=False))
        assert shard.tolist() == permutation[positions].tolist()
    assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) == -(-n // world_size)
    together = torch.cat(shards).tolist()
    assert set(together) == set(range(n))  # together they cover the epoch ...
    padding = len(together) - n
    assert sum(Counter(together).values()) - len(set(together)) == padding  # ... and repeat only the padding
    if world_size > 1 and n >= world_size:
        assert len(set(shards[0].tolist()) & set(shards[1].tolist())) <= padding
        # the control: a process that ignored the world size would train on the whole epoch, like every other
        unsharded = epoch_indices(n, 3, 5, rank=0, world_size=1)
        assert torch.equal(unsharded, permutation) and set(shards[1].tolist()) <= set(unsharded.tolist())
    assert EpochShards(n, 3, 0, world_size).indices().tolist() == epoch_indices(n, 3, 0, 0, world_size).tolist()


def test_workers_with_device_resident_and_a_split_too_large_are_refused(monkeypatch):
    with pytest.raises(ConfigValueError, match="num_workers 0"):
        ToyMixtureDataModule(device_resident=True, num_workers=2)
    data = ToyMixtureDataModule(num_train=1000, device_resident=True)
    data.setup("fit")
    monkeypatch.setattr(resident, "free_bytes", lambda device: 10_000)  # 900 points x 16 bytes > half of it
    with pytest.raises(ConfigValueError, match="device_resident false.*subset"):
        data.train_dataloader()
    monkeypatch.setattr(resident, "free_bytes", lambda device: 40_000)
    assert len(data.train_dataloader()) == -(-900 // 128)


class LossProbe(pl.Callback):
    """Training losses and the parameters before training (for the in-process CLI run)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_the_vae_trains_through_the_launcher_with_device_resident_data(in_tmp_dir, fmnist_dir):
    from lightning_gen.cli import LightningGenCLI

    config = lean_vae_config(in_tmp_dir, max_epochs=3)
    cli = LightningGenCLI(args=["fit", "--config", str(config), "--data.init_args.subset", "600",
                                "--data.init_args.batch_size", "32", "--data.init_args.device_resident", "true",
                                "--trainer.callbacks+=test_resident_data.LossProbe"])
    assert cli.datamodule.device_resident and isinstance(cli.trainer.train_dataloader, ResidentLoader)
    (probe,) = [c for c in cli.trainer.callbacks if isinstance(c, LossProbe)]
    assert len(probe.losses) == 3 * 17  # 540 train images in batches of 32 (the last of 28), three epochs
    # every epoch covers the same 540 images once, so epoch means compare like with like (about 2950 -> 2600 nats)
    first, last = np.mean(probe.losses[:17]), np.mean(probe.losses[-17:])
    assert last < 0.95 * first, probe.losses
    after = cli.model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in probe.start.items() if v.is_floating_point())
