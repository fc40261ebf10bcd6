"""last.ckpt holds the final state even when the monitored metric stops improving.

The control runs Lightning's own ModelCheckpoint through the same fit and shows the hazard the
subclass exists for: its last.ckpt stays at the last epoch that improved the metric.
"""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_gen.callbacks.checkpoint import CurrentLastModelCheckpoint, keep_last_checkpoint_current
from lightning_gen.trainer import LightningGenTrainer
from tests.support.stand_ins import TinyRegression


class GetsWorseAfterFirstEpoch(TinyRegression):
    """Logs val/score = 1 at epoch 0 and lower every epoch after, so only epoch 0 is ever 'best'."""

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0 - self.current_epoch, on_epoch=True)


def _fit(tmp_path, checkpoint, epochs=3, trainer_class=pl.Trainer):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = trainer_class(default_root_dir=tmp_path, max_epochs=epochs, callbacks=[checkpoint], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(GetsWorseAfterFirstEpoch(), data, data)
    return trainer


def _saved_epoch_and_step(path):
    state = torch.load(path, weights_only=False)
    return state["epoch"], state["global_step"]


@pytest.mark.parametrize("check_val_every_n_epoch, epochs", [(1, 4), (2, 4), (2, 5)])
def test_last_checkpoint_is_the_final_state_when_the_metric_got_worse(tmp_path, check_val_every_n_epoch, epochs):
    checkpoint = CurrentLastModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", mode="max", save_last=True)
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=epochs, callbacks=[checkpoint], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         check_val_every_n_epoch=check_val_every_n_epoch)
    trainer.fit(GetsWorseAfterFirstEpoch(), data, data)
    assert trainer.global_step == 2 * epochs
    saved_epoch, saved_step = _saved_epoch_and_step(tmp_path / "ckpt" / "last.ckpt")
    assert saved_step == trainer.global_step and saved_epoch >= epochs - 1
    # the top-k file is still the epoch that scored best
    assert f"epoch={check_val_every_n_epoch - 1}" in checkpoint.best_model_path


def test_control_lightnings_own_last_checkpoint_falls_behind(tmp_path):
    trainer = _fit(tmp_path, LightningModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", mode="max",
                                                      save_last=True))
    assert trainer.global_step == 6
    assert _saved_epoch_and_step(tmp_path / "ckpt" / "last.ckpt") == (0, 2)


def test_stock_checkpoints_are_upgraded_and_others_left_alone():
    class Custom(LightningModelCheckpoint):
        pass

    stock, custom, other = LightningModelCheckpoint(), Custom(), pl.Callback()
    keep_last_checkpoint_current([stock, custom, other])
    assert type(stock) is CurrentLastModelCheckpoint
    assert type(custom) is Custom and type(other) is pl.Callback


def test_lightning_gen_trainer_built_from_python_keeps_last_current(tmp_path):
    stock = LightningModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", mode="max", save_last=True)
    trainer = _fit(tmp_path, stock, trainer_class=LightningGenTrainer)
    assert _saved_epoch_and_step(tmp_path / "ckpt" / "last.ckpt") == (2, trainer.global_step)
