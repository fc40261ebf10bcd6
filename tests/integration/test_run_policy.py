"""A ``LightningGenTrainer`` built from Python gets the run policy the command line has: atomic checkpoint
writes, a graceful stop on SIGTERM with a checkpoint of the step it stopped at, a current last.ckpt, checks of
the run folder, ``ckpt_path="last"``, DDP for models trained in phases, ``run.json`` and the closing summary.

Each run is a small script in a subprocess (signals and kills end processes). The control builds Lightning's
own Trainer from the same script: SIGTERM stops it without a checkpoint of the step it stopped at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch.callbacks.timer as lightning_timer
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

import lightning_gen.trainer as trainer_module
from lightning_gen.errors import RunFolderError
from lightning_gen.faults import KILL_AT_VARIABLE
from lightning_gen.trainer import LightningGenTrainer
from tests.support.stand_ins import TinyRegression

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import torch
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_gen.errors import TrainingStopped
    from lightning_gen.trainer import LightningGenTrainer

    trainer_kind, sigterm_at = sys.argv[1], int(sys.argv[2])

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            if self.global_step == sigterm_at:  # as a scheduler would: mid-step, in the middle of an epoch
                os.kill(os.getpid(), signal.SIGTERM)
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)  # 16 steps per epoch
    trainer_class = LightningGenTrainer if trainer_kind == "lightning-gen" else pl.Trainer
    trainer = trainer_class(default_root_dir="run", max_epochs=2, logger=False, enable_progress_bar=False,
                            enable_model_summary=False,
                            callbacks=[ModelCheckpoint(dirpath="run/checkpoints", save_last=True)])
    try:
        trainer.fit(Tiny(), data)
    except TrainingStopped as stopped:
        print("TrainingStopped:", stopped)
    except BaseException as other:
        print("stopped by", type(other).__name__)
    print("global step", trainer.global_step)
''')


def run_script(folder: Path, trainer_kind: str, sigterm_at: int = -1, env: dict | None = None):
    (folder / "script.py").write_text(SCRIPT)
    environment = {key: value for key, value in os.environ.items() if key != KILL_AT_VARIABLE}
    environment.update(env or {})
    return subprocess.run([sys.executable, "script.py", trainer_kind, str(sigterm_at)], cwd=folder,
                          env=environment, capture_output=True, text=True, timeout=300)


def _global_step(stdout: str) -> int:
    return int(stdout.rsplit("global step", 1)[1].split()[0])


def _saved_step(path: Path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


def test_sigterm_saves_the_step_it_stopped_at_from_python(tmp_path):
    result = run_script(tmp_path, "lightning-gen", sigterm_at=5)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TrainingStopped: stopped by SIGTERM" in result.stdout, result.stdout
    stopped_at = _global_step(result.stdout)
    assert stopped_at == 6  # the step running when the signal came (the sixth) finished, and no further
    assert _saved_step(tmp_path / "run" / "checkpoints" / "last.ckpt") == stopped_at


def test_control_lightnings_trainer_stops_on_sigterm_without_that_checkpoint(tmp_path):
    result = run_script(tmp_path, "lightning", sigterm_at=5)
    stopped_at = _global_step(result.stdout)
    assert stopped_at < 32  # it does stop early...
    saved = [_saved_step(path) for path in (tmp_path / "run" / "checkpoints").glob("*.ckpt")]
    assert stopped_at not in saved  # ...but no checkpoint holds the state it stopped in


def test_a_kill_half_way_through_a_save_from_python_leaves_no_torn_checkpoint(tmp_path):
    result = run_script(tmp_path, "lightning-gen", env={KILL_AT_VARIABLE: "checkpoint_half_written:2"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    complete = sorted(folder.glob("*.ckpt"))
    assert complete, "the first save (the end of epoch 0) finished before the kill"
    assert all(_saved_step(path) == 16 for path in complete)  # each one loads, and holds epoch 0's end
    (partial,) = folder.glob(".*.partial-*")  # the torn bytes sit in a hidden file no --ckpt_path picks
    assert not partial.name.endswith(".ckpt")


class _Tiny(TinyRegression):
    """The run policy under test, not the model."""

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())


class _TrainedInPhases(_Tiny):
    ddp_find_unused_parameters = True


def _trainer(root: Path, **kwargs) -> LightningGenTrainer:
    options = dict(default_root_dir=root, max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                   logger=CSVLogger(root, name="tiny"),
                   callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)])
    return LightningGenTrainer(**{**options, **kwargs})


def _data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(32, 2)), batch_size=4)


class TickingClock:
    """A fake clock for the run record's durations: every reading is ``tick`` seconds after the last, so a
    duration is a count of readings, the same on a fast idle machine and a slow loaded one."""

    def __init__(self, tick: float = 1.0):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def fake_clock(monkeypatch) -> TickingClock:
    """The two clocks a run record reads, Lightning's Timer (``time.monotonic``: the training time kept in
    checkpoints) and the trainer's own (``time.perf_counter``: ``fit_seconds``), replaced in those two modules
    only by one ticking clock."""
    clock = TickingClock()
    monkeypatch.setattr(lightning_timer, "time", SimpleNamespace(monotonic=clock))
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=clock))
    return clock


def test_fit_from_python_writes_the_run_record_and_the_closing_summary(tmp_path, capsys, fake_clock):
    trainer = _trainer(tmp_path)
    trainer.fit(_Tiny(), _data(), _data())
    record = json.loads((tmp_path / "tiny" / "version_0" / "run.json").read_text())
    assert record["global_step"] == 8 and record["epochs"] == 1 and record["resumed_from"] is None
    assert 0 < record["train_seconds_total"] <= record["fit_seconds"]
    printed = capsys.readouterr().out
    closing = printed[printed.rindex("run folder:"):]
    assert f"last ckpt:   {tmp_path / 'checkpoints' / 'last.ckpt'}" in closing and "val/loss" in closing


def test_resuming_last_from_python_finds_the_checkpoint_and_adds_up_the_training_time(tmp_path, fake_clock):
    first = _trainer(tmp_path)
    first.fit(_Tiny(), _data())
    last = tmp_path / "checkpoints" / "last.ckpt"
    carried = torch.load(last, weights_only=False)["callbacks"]["Timer"]["time_elapsed"]["train"]
    fake_clock.tick = 0.001  # the resumed process's clock runs 1000x slower than the first's
    resumed = _trainer(tmp_path, max_epochs=2)
    resumed.fit(_Tiny(), _data(), ckpt_path="last")  # the new version folder has no last.ckpt of its own
    record = json.loads((tmp_path / "tiny" / "version_1" / "run.json").read_text())
    assert record["resumed_from"] == str(last) and record["global_step"] == 16
    # the total is the training time saved in last.ckpt plus what the resumed process trained, which its whole
    # fit call bounds; the saved time alone is more than that call measured (a total that forgot it fails)
    assert record["fit_seconds"] < carried
    assert round(carried, 2) <= record["train_seconds_total"] <= round(carried + record["fit_seconds"], 2) + 0.01


def test_a_run_folder_that_cannot_exist_fails_before_training_from_python(tmp_path):
    (tmp_path / "taken").write_text("a file where the run folder would go")
    trainer = _trainer(tmp_path / "taken" / "run")
    model = _Tiny()
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        trainer.fit(model, _data())
    assert trainer.global_step == 0


@pytest.mark.parametrize("model_class, strategy, expected", [
    (_TrainedInPhases, "ddp", True),  # the GAN's case: the policy turns detection on
    (_Tiny, "ddp", None),  # a model trained in one phase keeps DDP's faster default
    (_TrainedInPhases, DDPStrategy(find_unused_parameters=False), False),  # an explicit choice stands
])
def test_ddp_detects_unused_parameters_for_models_trained_in_phases(tmp_path, model_class, strategy, expected):
    trainer = LightningGenTrainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, strategy=strategy,
                                  logger=False)
    trainer.adapt_strategy(model_class())
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is expected
