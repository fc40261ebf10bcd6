"""A ``LightningGenTrainer`` built from Python gets the run policy the command line has: atomic checkpoint
writes, a graceful stop on SIGTERM with a checkpoint of the step it stopped at, and a current last.ckpt.

Each run is a small script in a subprocess (signals and kills end processes). The control builds Lightning's
own Trainer from the same script: SIGTERM stops it without a checkpoint of the step it stopped at.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from lightning_gen.faults import KILL_AT_VARIABLE

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
