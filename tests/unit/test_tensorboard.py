"""TensorBoard beside the CSV run folder through configs/logger/tensorboard.yaml: two real fits through the
CLI in one folder, then the event files read back with TensorBoard's own reader."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from lightning_gen.cli import LightningGenCLI, main
from tests.support.contract import one_torch_thread
from tests.support.paths import CONFIGS

SNIPPET = CONFIGS / "logger" / "tensorboard.yaml"
PICTURES = ("val/samples", "val/prior_samples", "val/reconstructions", "val/interpolations")
EPOCHS = 2
TRAIN_BATCHES = 2  # 48 training images (64, a quarter held out for validation) in batches of 32


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, fmnist_dir):
    """The same command twice in one folder: configs/vae_fmnist.yaml without its evaluation callback (a
    budget choice), 16 samples per picture at every epoch, 64 images, two epochs of two batches, every step
    logged."""
    folder = tmp_path_factory.mktemp("tensorboard_runs")
    config = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())
    callbacks = [c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("EvaluationCallback")]
    for callback in callbacks:
        if callback["class_path"].endswith("PictureLogger"):
            callback["init_args"].update(num_samples=16, every_n_epochs=1)  # pictures at every epoch's step
    config["trainer"]["callbacks"] = callbacks
    (folder / "vae_small.yaml").write_text(yaml.safe_dump(config))
    command = ["fit", "--config", str(folder / "vae_small.yaml"), "--config", str(SNIPPET),
               "--data.init_args.subset", "64", "--data.init_args.val_fraction", "0.25",
               "--data.init_args.batch_size", "32", "--trainer.max_epochs", str(EPOCHS),
               "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "0",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("LIGHTNING_GEN_DATA", raising=False)
    try:
        with one_torch_thread():
            for _ in range(2):
                main(command)
    finally:
        monkeypatch.undo()
    return folder


def read_events(version_folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(version_folder), size_guidance={"scalars": 0, "images": 0})  # 0: keep all
    events.Reload()
    return events


def steps(events, tag: str) -> list[int]:
    kind = "images" if tag in events.Tags()["images"] else "scalars"
    return [event.step for event in (events.Images(tag) if kind == "images" else events.Scalars(tag))]


def test_each_run_gets_its_own_tensorboard_version_beside_its_own_run_folder(two_runs):
    tensorboard = sorted(p.relative_to(two_runs) for p in (two_runs / "runs" / "tensorboard").glob("*/version_*"))
    assert tensorboard == [Path("runs/tensorboard/vae_fmnist/version_0"), Path("runs/tensorboard/vae_fmnist/version_1")]
    for folder in tensorboard:
        assert len(list((two_runs / folder).glob("events.out.tfevents.*"))) == 1
    # the CSV logger stays first: it owns the run folders, which hold config, metrics, record and pictures
    run_folders = sorted(p.relative_to(two_runs) for p in (two_runs / "runs").glob("*/version_*")
                         if "tensorboard" not in p.parts)
    assert run_folders == [Path("runs/vae_fmnist/version_0"), Path("runs/vae_fmnist/version_1")]
    for folder in run_folders:
        files = {p.name for p in (two_runs / folder).iterdir()}
        assert {"config.yaml", "metrics.csv", "run.json", "checkpoints", "images"} <= files
        assert not list((two_runs / folder).glob("events.out.tfevents.*"))
    assert not (two_runs / "runs" / "config.yaml").exists()  # no shared config.yaml (pytorch-lightning#17168)
    assert not list((two_runs / "runs" / "tensorboard").rglob("config.yaml"))


def test_scalars_and_pictures_reach_tensorboard(two_runs):
    events = read_events(two_runs / "runs" / "tensorboard" / "vae_fmnist" / "version_0")
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"train/loss", "val/elbo", "val/nll_bpd"} <= scalars, scalars
    assert "hp_metric" not in scalars  # default_hp_metric: false
    assert images == set(PICTURES)
    assert steps(events, "train/loss") == list(range(EPOCHS * TRAIN_BATCHES))  # every step: log_every_n_steps 1


def test_pictures_share_the_scalars_x_axis(two_runs):
    """Both count batches that stepped: each epoch's pictures sit at the step of that epoch's validation
    scalars (the last training batch of the epoch), in TensorBoard and in metrics.csv alike."""
    events = read_events(two_runs / "runs" / "tensorboard" / "vae_fmnist" / "version_0")
    epoch_ends = [(epoch + 1) * TRAIN_BATCHES - 1 for epoch in range(EPOCHS)]
    assert steps(events, "val/elbo") == epoch_ends
    for key in PICTURES:
        assert steps(events, key) == epoch_ends, key
    with open(two_runs / "runs" / "vae_fmnist" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    in_csv = [(int(row["step"]), float(row["val/elbo"])) for row in rows if row.get("val/elbo")]
    assert in_csv == [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("val/elbo")]


def test_the_logger_is_named_after_the_experiment_unless_given(in_tmp_dir):
    experiment = ["--config", str(CONFIGS / "gan_fmnist.yaml"), "--config", str(SNIPPET)]
    cli = LightningGenCLI(args=experiment, run=False)
    csv_logger, tensorboard = cli.trainer.loggers
    assert type(tensorboard).__name__ == "TensorBoardLogger" and tensorboard.name == csv_logger.name == "gan_fmnist"
    assert Path(tensorboard.save_dir) == Path("runs/tensorboard")
    assert Path(cli.trainer.log_dir) == Path("runs/gan_fmnist/version_0")  # the CSV logger's: the run folder
    named = LightningGenCLI(args=[*experiment, "--trainer.logger.init_args.name", "ablation"], run=False)
    assert named.trainer.loggers[1].name == "ablation"
