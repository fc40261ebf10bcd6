"""SIGKILL during training, then resume: checkpoints are never half-written and counters continue."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import lightning.pytorch as pl
import torch
import yaml

from lightning_gen.checkpoints import read_checkpoint
from lightning_gen.cli import LightningGenCLI
from tests.support.paths import CONFIGS


class RecordStart(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.global_step, self.epoch = trainer.global_step, trainer.current_epoch


def test_sigkill_mid_epoch_then_resume_from_last(tmp_path):
    config = yaml.safe_load((CONFIGS / "gan_toy_ring.yaml").read_text())
    checkpoints = tmp_path / "checkpoints"
    config["trainer"]["max_epochs"] = 1000
    config["trainer"]["enable_progress_bar"] = False
    config["trainer"]["callbacks"] = [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(checkpoints), "every_n_train_steps": 30, "save_last": True, "save_top_k": -1},
    }]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "lightning_gen", "fit", "--config", str(path)],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # a hung run, not a slow machine: the condition is the checkpoint count
    while len(list(checkpoints.glob("*.ckpt"))) < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(random.Random(0).uniform(0.0, 0.5))  # somewhere inside the epoch, perhaps mid-save
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]

    saved = {p.name: read_checkpoint(p) for p in checkpoints.glob("*.ckpt")}  # every file loads
    assert len(saved) >= 4 and "last.ckpt" in saved
    last = saved["last.ckpt"]
    # Lightning writes the step checkpoint, then last.ckpt: a kill between the two leaves last one save behind
    assert max(c["global_step"] for c in saved.values()) - last["global_step"] in (0, 30)
    assert last["global_step"] % 30 == 0 and last["global_step"] > 0

    os.chdir(tmp_path)
    resume_config = dict(config)
    resume_config["trainer"] = {**config["trainer"], "max_epochs": last["epoch"] + 1, "callbacks": []}
    path.write_text(yaml.safe_dump(resume_config))
    cli = LightningGenCLI(args=["--config", str(path)], run=False)
    recorder = RecordStart()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(checkpoints / "last.ckpt"))
    assert (recorder.global_step, recorder.epoch) == (last["global_step"], last["epoch"])
    assert cli.trainer.global_step > last["global_step"] and cli.trainer.current_epoch == last["epoch"] + 1
    (saved_stream,) = last["lightning_gen_rng"]["training"]  # one process: one training generator
    restored_latents = torch.Generator().set_state(saved_stream)
    assert restored_latents.initial_seed() == cli.model.training_rng.initial_seed()
