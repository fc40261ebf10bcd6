"""``load_run``: a finished run (folder or checkpoint) back as model, data and record, from one read of the
checkpoint; the same rebuild ``compare`` and the figure script use."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_gen import checkpoints
from lightning_gen.checkpoints import load_run
from lightning_gen.data.mnist import FashionMNISTDataModule
from lightning_gen.models.autoencoder import VAE
from lightning_gen.trainer import LightningGenTrainer


def _trained_run(root, data_dir):
    data = FashionMNISTDataModule(data_dir=str(data_dir), batch_size=16)
    model = VAE(latent_dim=4, channels=4, hidden=16, val_importance_samples=1)
    trainer = LightningGenTrainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                                  logger=CSVLogger(root, name="vae"), callbacks=[ModelCheckpoint(save_last=True)],
                                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    return root / "vae" / "version_0", model


def test_a_run_folder_comes_back_as_the_trained_model_its_data_and_its_record(tmp_path, tiny_idx_dir, monkeypatch):
    folder, trained = _trained_run(tmp_path, tiny_idx_dir)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args[0]) or real_load(*args, **kwargs))
    monkeypatch.setattr(checkpoints, "_last_read", None)  # as in a fresh process

    loaded = load_run(folder)
    assert loads == [folder / "checkpoints" / "last.ckpt"]  # one read
    assert type(loaded.model) is VAE and not loaded.model.training and loaded.model.latent_dim == 4
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert isinstance(loaded.datamodule, FashionMNISTDataModule)
    assert str(loaded.datamodule.data_dir) == str(tiny_idx_dir) and loaded.datamodule.hparams.batch_size == 16
    assert loaded.folder == folder and loaded.record["global_step"] == 2
    assert loaded.record["model_class"] == "lightning_gen.models.autoencoder.VAE"


def test_an_override_changes_the_rebuilt_model_but_not_its_weights(tmp_path, tiny_idx_dir):
    folder, trained = _trained_run(tmp_path, tiny_idx_dir)
    plain = load_run(folder / "checkpoints" / "last.ckpt")
    changed = load_run(folder / "checkpoints" / "last.ckpt", test_importance_samples=3)
    assert plain.model.hparams.test_importance_samples == 128 and changed.model.hparams.test_importance_samples == 3
    for name, value in trained.state_dict().items():
        assert torch.equal(changed.model.state_dict()[name], value), name
