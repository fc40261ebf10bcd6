"""The contract every lightning-gen model meets. Each model's test module subclasses
``GenerativeModelContract`` and supplies ``make_model``; nothing here knows which model it tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gen.errors import CheckpointError
from lightning_gen.models.base import GenerativeModule, has_surface


def fake_image_batches(shape, n: int = 32, batch_size: int = 16) -> DataLoader:
    images = torch.randint(0, 256, (n, *shape)).float() / 255
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)


def train_briefly(model: pl.LightningModule, root: Path, batches: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=batches,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
    )
    loader = fake_image_batches(model.data_shape)
    trainer.fit(model, loader, loader)
    return trainer


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


class GenerativeModelContract:
    """Subclasses set ``make_model`` (a fresh, small model) and ``other_model_class`` (a different model
    class, whose checkpoints this model must refuse)."""

    def make_model(self) -> GenerativeModule:
        raise NotImplementedError

    other_model_class: type[GenerativeModule]

    def test_samples_have_the_data_shape_and_pixel_range(self):
        model = self.make_model().eval()
        with torch.no_grad():
            images = model.sample(5, generator=torch.Generator().manual_seed(0))
        assert images.shape == (5, *model.data_shape)
        assert images.min() >= 0 and images.max() <= 1 and torch.isfinite(images).all()

    def test_samples_repeat_for_the_same_generator_and_differ_for_another(self):
        model = self.make_model().eval()
        with torch.no_grad():
            first = model.sample(4, generator=torch.Generator().manual_seed(7))
            again = model.sample(4, generator=torch.Generator().manual_seed(7))
            other = model.sample(4, generator=torch.Generator().manual_seed(8))
        assert torch.equal(first, again)
        assert not torch.equal(first, other)

    def test_log_likelihood_is_finite_and_negative_where_defined(self):
        model = self.make_model().eval()
        if not has_surface(model, "log_likelihood"):
            return  # an implicit model: nothing to check, and the surface says so
        x = torch.randint(0, 256, (3, *model.data_shape)).float() / 255
        x = model.prepare_input(x)
        log_p = model.log_likelihood(x)
        assert log_p.shape == (3,) and torch.isfinite(log_p).all() and (log_p < 0).all()

    def test_checkpoint_round_trip_gives_bit_identical_samples(self, tmp_path):
        model = self.make_model()
        trainer = train_briefly(model, tmp_path)
        path = tmp_path / "model.ckpt"
        trainer.save_checkpoint(path)
        restored = type(model).load_checkpoint(path)
        model.eval(), restored.eval()
        with torch.no_grad():
            expected = model.sample(6, generator=torch.Generator().manual_seed(3))
            actual = restored.sample(6, generator=torch.Generator().manual_seed(3))
        assert torch.equal(expected, actual)

    def test_checkpoint_of_another_model_is_refused_and_left_intact(self, tmp_path):
        model = self.make_model()
        trainer = train_briefly(model, tmp_path)
        path = tmp_path / "model.ckpt"
        trainer.save_checkpoint(path)
        before = file_digests(tmp_path)
        with pytest.raises(CheckpointError) as error:
            self.other_model_class.load_checkpoint(path)
        assert type(model).__name__ in str(error.value) and self.other_model_class.__name__ in str(error.value)
        assert file_digests(tmp_path) == before

    def test_corrupt_checkpoint_is_a_clear_error(self, tmp_path):
        path = tmp_path / "broken.ckpt"
        path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
        with pytest.raises(CheckpointError, match="broken.ckpt.*corrupt"):
            type(self.make_model()).load_checkpoint(path)
        with pytest.raises(CheckpointError, match="does not exist"):
            type(self.make_model()).load_checkpoint(tmp_path / "missing.ckpt")
