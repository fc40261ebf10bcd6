"""Faults during `fit`: the process killed at the worst moments, SIGTERM and Ctrl-C, a full or read-only
disk, and non-finite losses. Every run goes through `python -m lightning_gen fit` in a subprocess, as a
user's would; the kills come from the fault-injection seam in `lightning_gen/faults.py`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_gen.checkpoints import read_checkpoint
from lightning_gen.cli import main
from lightning_gen.faults import KILL_AT_VARIABLE
from tests.support.paths import CONFIGS, REPO

# the default VAE on 384 Fashion-MNIST images: 346 train images = 6 batches of 64 per epoch
STEPS_PER_EPOCH = 6
SMALL_RUN = {
    "trainer": {"max_epochs": 2, "num_sanity_val_steps": 0, "enable_progress_bar": False, "log_every_n_steps": 1},
    "data": {"init_args": {"subset": 384, "batch_size": 64}},
}
EVALUATION = ["--trainer.callbacks.init_args.num_samples", "32", "--trainer.callbacks.init_args.every_n_epochs", "1",
              "--model.init_args.val_importance_samples", "2"]
# at this learning rate val/elbo improves by ~100 nats from the first epoch to the second on these 384 images, so
# each epoch writes a best checkpoint (the kill points below count on it); the recipe's 2e-3 is noisier here
STEADY_LEARNING_RATE = ["--model.init_args.optimizer.init_args.lr", "0.001"]


def fit(folder: Path, *extra: str, env: dict | None = None, wait: bool = True):
    (folder / "small.yaml").write_text(yaml.safe_dump(SMALL_RUN))
    command = [sys.executable, "-m", "lightning_gen", "fit", "--config", str(CONFIGS / "vae_fmnist.yaml"),
               "--config", "small.yaml", *EVALUATION, *STEADY_LEARNING_RATE, *extra]
    environment = {key: value for key, value in os.environ.items() if key != KILL_AT_VARIABLE}
    environment.update(LIGHTNING_GEN_CACHE=str(folder / "cache"), **(env or {}))
    if not wait:
        return subprocess.Popen(command, cwd=folder, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=600)


def version_folder(folder: Path, n: int) -> Path:
    return folder / "runs" / "vae_fmnist" / f"version_{n}"


def assert_resumes_and_finishes(folder: Path, last: dict) -> dict:
    """`fit --ckpt_path last` continues from `last` and ends with the counters of an uninterrupted run."""
    result = fit(folder, "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((version_folder(folder, 1) / "run.json").read_text())
    assert record["resumed_from"] == str(Path("runs/vae_fmnist/version_0/checkpoints/last.ckpt"))
    assert (record["epochs"], record["global_step"]) == (2, 2 * STEPS_PER_EPOCH)
    with open(version_folder(folder, 1) / "metrics.csv") as file:
        steps = [int(row["step"]) for row in csv.DictReader(file)]
    assert min(steps) >= last["global_step"]  # counted on from the checkpoint, not from zero
    return record


# (point, the n-th time it is reached). Per epoch the run writes 2 checkpoints (the best one, then
# last.ckpt), 1 evaluation and 6 optimizer steps; 4 pictures (samples, prior samples, reconstructions,
# interpolations) in the second epoch only (the config's every 3 epochs, and the last): each n below falls
# in the second epoch.
KILLS = [
    ("checkpoint_half_written", 3),   # the second epoch's best checkpoint, half of its bytes on disk
    ("checkpoint_before_rename", 4),  # the second epoch's last.ckpt, complete but not yet in place
    ("evaluation", 2),
    ("pictures", 2),
    ("optimizer_step", STEPS_PER_EPOCH + 3),
]


@pytest.mark.parametrize("point,nth", KILLS, ids=[point for point, _ in KILLS])
def test_sigkill_at_the_worst_moments_loses_nothing_and_the_run_resumes(tmp_path, point, nth):
    killed = fit(tmp_path, env={KILL_AT_VARIABLE: f"{point}:{nth}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = version_folder(tmp_path, 0) / "checkpoints"
    saved = {path.name: read_checkpoint(path) for path in checkpoints.glob("*.ckpt")}  # each one loads
    last = saved["last.ckpt"]
    assert last["epoch"] == 0 and last["global_step"] == STEPS_PER_EPOCH  # saved at the end of the first epoch
    partials = list(checkpoints.glob(".*.partial-*"))
    # killed while writing the second epoch's best checkpoint: the first epoch's best and last remain;
    # killed before moving the second epoch's last.ckpt into place: its best (top-1, so the first
    # epoch's best is gone) and the first epoch's last.ckpt remain
    expected_steps = ([STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH] if point == "checkpoint_before_rename"
                      else [STEPS_PER_EPOCH] * 2)
    assert sorted(c["global_step"] for c in saved.values()) == expected_steps
    if point.startswith("checkpoint"):  # the kill did land inside a save, and left only a hidden partial
        assert len(partials) == 1 and not partials[0].name.endswith(".ckpt")
    else:
        assert partials == []
    for line in (version_folder(tmp_path, 0) / "evaluation.jsonl").read_text().splitlines():
        json.loads(line)  # no torn line
    assert_resumes_and_finishes(tmp_path, last)


def test_a_partial_file_left_by_a_kill_is_removed_by_the_next_save_in_its_folder(tmp_path):
    from lightning_gen.checkpoints import AtomicCheckpointIO

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.ckpt.partial-{dead.stdout.strip()}"  # a process that no longer runs
    stale.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt")
    assert not stale.exists()
    assert torch.equal(read_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.ones(2))


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
def test_sigterm_and_ctrl_c_save_a_checkpoint_of_the_current_step_then_resume(tmp_path, signal_number):
    # a second checkpoint callback saves at step 7 into probe/: the signal goes once training is in its second
    # epoch, whatever the machine's speed (the run's own last.ckpt holds step 6, the end of epoch 0)
    probe = tmp_path / "probe"
    process = fit(tmp_path, "--trainer.max_epochs", "1000", "--trainer.callbacks+=ModelCheckpoint",
                  "--trainer.callbacks.dirpath", str(probe), "--trainer.callbacks.every_n_train_steps",
                  str(STEPS_PER_EPOCH + 1), wait=False)
    checkpoints = version_folder(tmp_path, 0) / "checkpoints"
    deadline = time.monotonic() + 600  # a hung run, not a slow machine: the condition is the step
    while not list(probe.glob("*.ckpt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert list(probe.glob("*.ckpt")), process.stderr.read()[-3000:] if process.poll() is not None else "no step 7"
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal_number, stderr[-3000:]
    assert "Traceback" not in stderr
    last = read_checkpoint(checkpoints / "last.ckpt")
    message = stderr.strip().splitlines()[-1]
    relative = str(Path("runs/vae_fmnist/version_0/checkpoints/last.ckpt"))
    assert f"stopped by {signal.Signals(signal_number).name}" in message and relative in message
    # saved on the signal, which came after step 7: the state the message names, past the first epoch
    assert f"global step {last['global_step']};" in message
    assert last["global_step"] > STEPS_PER_EPOCH
    epochs = last["epoch"] + 1
    result = fit(tmp_path, "--ckpt_path", "last", "--trainer.max_epochs", str(epochs))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((version_folder(tmp_path, 1) / "run.json").read_text())
    assert record["resumed_from"] == relative
    assert record["global_step"] == epochs * STEPS_PER_EPOCH and record["epochs"] == epochs


def _in_small_filesystem(tmp_path: Path, size: str, script: str, read_only: bool = False) -> str:
    """Run `script` (sh) in a private mount namespace where `mnt/` is a tmpfs of `size`, then copy what
    it holds to `after/`. Unprivileged user namespaces stand in for a real small or read-only disk."""
    assert shutil.which("unshare"), "the disk tests need util-linux's unshare (Debian: apt-get install util-linux)"
    (tmp_path / "mnt").mkdir()
    (tmp_path / "after").mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    wrapped = (f"mount -t tmpfs -o {options} tmpfs mnt && cd mnt && ({script}); echo \"exit=$?\" >&2; "
               f"cd .. && cp -a mnt/. after/")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", wrapped], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "LIGHTNING_GEN_CACHE": str(tmp_path / "cache")})
    assert "exit=" in result.stderr, f"could not set up the small file system: {result.stderr[-2000:]}"
    return result.stderr


def _fit_command() -> str:
    return (f"{sys.executable} -m lightning_gen fit --config {CONFIGS / 'vae_fmnist.yaml'} --config ../small.yaml "
            + " ".join(EVALUATION))


def test_a_read_only_run_folder_stops_before_training_with_the_fix(tmp_path):
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL_RUN))
    stderr = _in_small_filesystem(tmp_path, "1m", _fit_command(), read_only=True)
    assert "exit=2" in stderr and "Traceback" not in stderr
    message = [line for line in stderr.splitlines() if line.startswith("lightning-gen: error:")]
    assert len(message) == 1 and "Read-only file system" in message[0] and "runs/vae_fmnist" in message[0]
    assert "--trainer.default_root_dir" in message[0]
    assert list((tmp_path / "after").iterdir()) == []


def test_a_disk_too_small_for_the_checkpoints_stops_before_training(tmp_path):
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL_RUN))
    stderr = _in_small_filesystem(tmp_path, "8m", _fit_command())
    message = [line for line in stderr.splitlines() if line.startswith("lightning-gen: error:")]
    assert "exit=2" in stderr and len(message) == 1 and "MiB free" in message[0], stderr[-2000:]
    assert not (tmp_path / "after" / "runs" / "vae_fmnist" / "version_0" / "checkpoints").exists()


def test_a_disk_that_fills_up_during_training_stops_at_the_save_and_keeps_the_checkpoints(tmp_path):
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL_RUN))
    # after the first epoch's checkpoints a filler takes the disk but 2 MiB (tests/support/fault_probe.py): room for
    # the pictures and logs of the next epoch, not for its 20 MB checkpoint
    fill = ("--trainer.callbacks+=tests.support.fault_probe.FillDiskAfterFirstEpoch "
            "--trainer.callbacks.init_args.keep_bytes 2097152")
    stderr = _in_small_filesystem(tmp_path, "96m", f"PYTHONPATH={REPO} {_fit_command()} {fill}")
    assert "exit=2" in stderr and "Traceback" not in stderr, stderr[-3000:]
    message = [line for line in stderr.splitlines() if line.startswith("lightning-gen: error:")]
    assert len(message) == 1 and "No space left on device" in message[0], stderr[-3000:]
    checkpoints = tmp_path / "after" / "runs" / "vae_fmnist" / "version_0" / "checkpoints"
    saved = {path.name: read_checkpoint(path) for path in checkpoints.glob("*.ckpt")}
    assert "last.ckpt" in saved and saved["last.ckpt"]["global_step"] == STEPS_PER_EPOCH
    assert list(checkpoints.glob(".*partial*")) == []  # the failed write cleaned up after itself
    assert "last.ckpt" in message[0]


CHECKPOINT_AND_POISON = json.dumps([
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
    {"class_path": "tests.support.fault_probe.PoisonWeights", "init_args": {"epoch": 1, "batch": 1}},
])


@pytest.mark.parametrize("config", ["ae_fmnist", "vae_fmnist", "gan_fmnist", "pixelcnn_fmnist"])
def test_a_non_finite_loss_stops_any_model_and_keeps_the_last_good_checkpoint(in_tmp_dir, capsys, config):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / f"{config}.yaml"), "--trainer.callbacks", CHECKPOINT_AND_POISON,
              "--data.init_args.subset", "200", "--data.init_args.batch_size", "50", "--trainer.max_epochs", "3",
              "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if line.startswith("lightning-gen: error:")]
    assert len(message) == 1 and "training diverged" in message[0] and "nan" in message[0] and "Traceback" not in err
    (last,) = in_tmp_dir.glob(f"runs/{config}/version_0/checkpoints/last.ckpt")
    assert str(last.relative_to(in_tmp_dir)) in message[0] and "epoch 1" in message[0]
    record = json.loads((last.parent.parent / "run.json").read_text())  # compare counts the run as diverged
    assert "training diverged" in record["diverged"] and "nan" in record["diverged"]
    checkpoint = read_checkpoint(last)
    assert checkpoint["epoch"] == 0  # the end of the first epoch, before the poison
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values() if value.is_floating_point())
