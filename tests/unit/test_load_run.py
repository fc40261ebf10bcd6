"""``load_run``: a finished run (folder or checkpoint) back as model, data and record, from one read of the
checkpoint; the same rebuild ``compare`` and the figure script use. And the commands on a checkpoint
(``evaluate``, ``sample``) read it once, at the command line's boundary, however many layers use it."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_gen.checkpoints import load_run
from lightning_gen.cli import main
from lightning_gen.data.mnist import FashionMNISTDataModule
from lightning_gen.models.autoencoder import VAE
from lightning_gen.trainer import LightningGenTrainer


def _counting_loads(monkeypatch) -> list:
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args[0]) or real_load(*args, **kwargs))
    return loads


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
    loads = _counting_loads(monkeypatch)

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


@pytest.mark.parametrize("command", [
    ["sample", "--num_samples", "4", "--out", "drawn"],
    ["evaluate", "--metrics", "nll_bpd", "--importance_samples", "2", "--max_real", "16"],
])
def test_a_command_on_a_checkpoint_reads_it_once(tmp_path, tiny_idx_dir, monkeypatch, command):
    # the model class and data (no config given), the class check, the saved hyperparameters and the weights
    # all come from it: four uses, one read
    folder, _ = _trained_run(tmp_path, tiny_idx_dir)
    monkeypatch.chdir(tmp_path)
    checkpoint = folder / "checkpoints" / "last.ckpt"
    loads = _counting_loads(monkeypatch)
    main([command[0], "--ckpt_path", str(checkpoint), *command[1:], "--trainer.enable_progress_bar", "false"])
    assert [str(path) for path in loads if str(path).endswith(".ckpt")] == [str(checkpoint)]
    written = tmp_path / "drawn" / "samples.npz" if command[0] == "sample" else checkpoint.parent / "metrics.json"
    assert written.is_file()  # the command did its work with what it read
