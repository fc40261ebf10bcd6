"""BudgetLRDecay: learning rates that fall linearly over the Trainer's budget (steps, epochs or time), keep
their schedule across a resume, lower the end-of-budget error of a noisy problem, and refuse settings that
cannot work."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.callbacks import timer as lightning_timer
from torch.utils.data import DataLoader, TensorDataset

from lightning_gen.callbacks.budget_decay import BudgetLRDecay, budget_spent
from lightning_gen.errors import ConfigValueError

BASE_LR = 0.5


class NoisyMean(pl.LightningModule):
    """Fits one number to noisy targets y ~ N(3, 1) by SGD on (theta - y)^2: with a constant rate theta keeps
    jittering around 3; a rate that falls to zero lets it settle. Records the rate each step saw."""

    def __init__(self, scheduler: bool = False):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(()))
        self.rates: list[float] = []
        self.with_scheduler = scheduler

    def training_step(self, batch, batch_idx):
        self.rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        (targets,) = batch
        return ((self.theta - targets) ** 2).mean()

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=BASE_LR)
        if self.with_scheduler:
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]
        return optimizer


def _loader(batches: int, seed: int = 0, batch_size: int = 2) -> DataLoader:
    targets = 3.0 + torch.randn(batches * batch_size, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(targets), batch_size=batch_size)


def _fit(model, loader, callbacks=(), ckpt_path=None, default_root_dir=None, **limits) -> NoisyMean:
    trainer = pl.Trainer(logger=False, enable_checkpointing=bool(default_root_dir), enable_progress_bar=False,
                         enable_model_summary=False, callbacks=list(callbacks), default_root_dir=default_root_dir,
                         **limits)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return model


def test_the_rates_fall_linearly_over_max_steps_after_decay_from():
    model = _fit(NoisyMean(), _loader(20), [BudgetLRDecay(decay_from=0.5, final_factor=0.1)], max_steps=10)
    # step k spends k/10 of the budget: flat up to 0.5, then 1 - 0.9 * (k/10 - 0.5) / 0.5
    expected = [1, 1, 1, 1, 1, 1, 0.82, 0.64, 0.46, 0.28]
    assert model.rates == pytest.approx([BASE_LR * f for f in expected])


def test_the_rates_fall_over_max_epochs_within_each_epoch():
    model = _fit(NoisyMean(), _loader(4), [BudgetLRDecay()], max_epochs=2)
    assert model.rates == pytest.approx([BASE_LR * f for f in (1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)])


def test_without_the_callback_the_rate_stays_as_configured():  # the control of the two tests above
    assert set(_fit(NoisyMean(), _loader(4), max_epochs=2).rates) == {BASE_LR}


def test_budget_spent_follows_max_time_and_takes_the_limit_nearest_its_end(monkeypatch):
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(lightning_timer.time, "monotonic", lambda: clock.now)
    timer = Timer(duration={"seconds": 100})
    trainer = SimpleNamespace(callbacks=[timer], max_steps=-1, max_epochs=-1, num_training_batches=math.inf,
                              global_step=0, current_epoch=0)
    timer.on_train_start(trainer, None)
    clock.now = 1030.0
    assert budget_spent(trainer, 0) == pytest.approx(0.3)
    trainer.max_steps, trainer.global_step = 10, 5  # half the steps are spent: the step limit ends sooner
    assert budget_spent(trainer, 0) == pytest.approx(0.5)
    clock.now = 1250.0  # past the time limit: the schedule stays at its end
    assert budget_spent(trainer, 0) == 1.0
    assert budget_spent(SimpleNamespace(callbacks=[Timer()], max_steps=-1, max_epochs=-1, global_step=0,
                                        num_training_batches=math.inf, current_epoch=0), 0) is None


def test_a_resumed_run_continues_the_schedule_of_the_configured_rate(tmp_path):
    whole = _fit(NoisyMean(), _loader(10), [BudgetLRDecay()], max_steps=10)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    _fit(NoisyMean(), _loader(10), [BudgetLRDecay(), checkpoints], default_root_dir=tmp_path, max_steps=4)
    (checkpoint,) = tmp_path.glob("*.ckpt")
    resumed = _fit(NoisyMean(), _loader(10), [BudgetLRDecay()], ckpt_path=checkpoint, default_root_dir=tmp_path,
                   max_steps=10)
    # had the resumed run taken the checkpoint's decayed rate (0.6 x) as its base, step 4 would see 0.36 x
    assert resumed.rates == pytest.approx(whole.rates[4:])


def test_decaying_to_zero_settles_a_noisy_fit_a_constant_rate_does_not():
    def final_error(seed: int, callbacks) -> float:
        torch.manual_seed(seed)
        return abs(_fit(NoisyMean(), _loader(200, seed), callbacks, max_steps=200).theta.item() - 3.0)

    # a constant rate of 0.5 on batches of 2 keeps theta ~1 away from 3 (median of 5 seeds); decayed: ~0.03
    constant = [final_error(seed, []) for seed in range(5)]
    decayed = [final_error(seed, [BudgetLRDecay()]) for seed in range(5)]
    assert statistics.median(decayed) < 0.25 * statistics.median(constant), (decayed, constant)
    assert max(decayed) < statistics.median(constant), (decayed, constant)  # the worst seed too


def test_refuses_a_model_with_its_own_scheduler_and_a_trainer_without_a_budget():
    with pytest.raises(ConfigValueError, match="remove the scheduler"):
        _fit(NoisyMean(scheduler=True), _loader(4), [BudgetLRDecay()], max_epochs=1)
    with pytest.raises(ConfigValueError, match="set trainer.max_time"):
        _fit(NoisyMean(), _loader(4), [BudgetLRDecay()], max_epochs=-1)


@pytest.mark.parametrize("options, name", [({"decay_from": 1.0}, "decay_from"), ({"final_factor": 1.5}, "final_factor"),
                                           ({"final_factor": -0.1}, "final_factor")])
def test_refuses_settings_outside_their_range(options, name):
    with pytest.raises(ConfigValueError, match=name):
        BudgetLRDecay(**options)
