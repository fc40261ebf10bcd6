"""W&B logging through configs/logger/wandb.yaml, offline: real fits through the CLI, then the run files
read back (the `.wandb` transaction log and the media files), never the network."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightning_gen.cli import LightningGenCLI
from tests.support.paths import CONFIGS

SNIPPET = CONFIGS / "logger" / "wandb.yaml"
EXPERIMENTS = sorted(CONFIGS.glob("*.yaml"))
# the default VAE samples its fitted posterior mixture, and shows prior samples of the same decoder beside them
PICTURES = ("val/samples", "val/prior_samples", "val/reconstructions", "val/interpolations")


# --- reading an offline run back -------------------------------------------------------------------
# wandb 0.31 has no public reader for the `.wandb` file. Its layout: a 7-byte header (b":W&B", magic
# 0xBEE1 as little-endian uint16, version byte), then LevelDB-log-style chunks in 32 KiB blocks, each with
# a 7-byte header (crc32 uint32, length uint16, kind uint8: 1 full, 2 first, 3 middle, 4 last); a block
# tail shorter than a chunk header is zero padding. Every assembled payload is one protobuf `Record`.
_BLOCK = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")


def read_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B transaction log"
    position, pending = 7, b""
    while position + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK - position % _BLOCK
        if room < _CHUNK_HEADER.size:  # padding at the end of a block
            position += room
            continue
        _crc, length, kind = _CHUNK_HEADER.unpack_from(data, position)
        if kind == 0:  # zero fill: the writer stopped here, or the rest of the block is padding
            position += room
            continue
        chunk = data[position + _CHUNK_HEADER.size : position + _CHUNK_HEADER.size + length]
        position += _CHUNK_HEADER.size + length
        if kind in (2, 3):
            pending = (b"" if kind == 2 else pending) + chunk
            continue
        payload, pending = (pending + chunk if kind == 4 else chunk), b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _nested(items) -> dict:
    """Config/summary/history items (``key`` or a ``nested_key`` path, ``value_json``) as nested dicts."""
    out: dict = {}
    for item in items:
        path = list(item.nested_key) or [item.key]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def read_run(run_dir: Path) -> dict:
    """What one offline run recorded: run attributes, config, history rows and the files it saved."""
    (log,) = run_dir.glob("run-*.wandb")
    run = {"dir": run_dir, "config": {}, "history": [], "files": []}
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, project=record.run.project, group=record.run.run_group,
                       tags=list(record.run.tags))
            run["config"].update(_nested(record.run.config.update))
        elif kind == "config":
            run["config"].update(_nested(record.config.update))
        elif kind == "history":
            run["history"].append(_nested(record.history.item))
        elif kind == "files":
            run["files"] += [f.path for f in record.files.files]
    return run


def logged(run: dict, key: str) -> list:
    return [row[key] for row in run["history"] if key in row]


# --- two real fits in one folder ------------------------------------------------------------------
def _offline_env(folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # no key, entity, project, ...
    return {
        **env,
        "WANDB_MODE": "offline",
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # nothing listens there: a stray request fails, never leaves
        "WANDB_DIR": str(folder),
        "WANDB_CONFIG_DIR": str(folder / ".wandb-config"),
        "WANDB_CACHE_DIR": str(folder / ".wandb-cache"),
        "WANDB_DATA_DIR": str(folder / ".wandb-data"),
        "WANDB_ARTIFACT_DIR": str(folder / ".wandb-artifacts"),
        "LIGHTNING_GEN_CACHE": str(folder / ".cache"),
    }


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, fmnist_dir):
    """The same command twice in one folder: configs/vae_fmnist.yaml (evaluation trimmed to FID of 64
    samples, a budget choice only) + the W&B snippet, 300 images, one epoch."""
    folder = tmp_path_factory.mktemp("wandb_runs")
    config = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("EvaluationCallback"):
            callback["init_args"].update(metrics=["fid"], num_samples=64, every_n_epochs=1)
    (folder / "vae_small.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "lightning_gen", "fit", "--config", "vae_small.yaml", "--config", str(SNIPPET),
               "--data.init_args.subset", "300", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
               "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.group", "vae"]
    fits = [subprocess.run(command, cwd=folder, env=_offline_env(folder), capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for fit in fits:
        assert fit.returncode == 0, fit.stderr[-3000:]
    run_dirs = sorted((folder / "runs" / "wandb").glob("offline-run-*"))  # named by start time: first run first
    return folder, fits, [read_run(d) for d in run_dirs]


def test_two_runs_in_one_folder_keep_their_own_files(two_runs):
    """The SaveConfigCallback pitfall (config.yaml in a shared folder refuses the second run) does not bite:
    each run has its own CSV version folder with its config, metrics and pictures, and its own W&B run."""
    folder, fits, runs = two_runs
    assert len(runs) == 2 and runs[0]["id"] != runs[1]["id"]
    for version, fit in enumerate(fits):
        run_folder = folder / "runs" / "vae_fmnist" / f"version_{version}"
        assert f"run folder: runs/vae_fmnist/version_{version}" in fit.stdout
        assert (run_folder / "config.yaml").is_file() and (run_folder / "metrics.csv").is_file()
        assert len(list((run_folder / "images").glob("*.png"))) == len(PICTURES)
        assert f"wandb sync runs/wandb/{runs[version]['dir'].name}" in fit.stdout + fit.stderr
    assert not (folder / "runs" / "config.yaml").exists() and not (folder / "config.yaml").exists()


def test_shared_metric_names_reach_the_run_with_the_csv_values(two_runs):
    folder, _, runs = two_runs
    for version, run in enumerate(runs):
        for key in ("val/elbo", "val/nll_bpd", "val/fid_fmnist_clf", "train/loss"):
            values = logged(run, key)
            assert values and all(isinstance(v, float) and math.isfinite(v) for v in values), key
        with open(folder / "runs" / "vae_fmnist" / f"version_{version}" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        for key in ("val/elbo", "val/nll_bpd", "val/fid_fmnist_clf"):
            in_csv = [float(row[key]) for row in rows if row.get(key)]
            assert logged(run, key) == pytest.approx(in_csv, rel=1e-6), key
        batch_size = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())["data"]["init_args"]["batch_size"]
        assert len(logged(run, "train/loss")) == -(-270 // batch_size)  # 270 training images, every step logged


def test_pictures_reach_the_run(two_runs):
    folder, _, runs = two_runs
    run = runs[0]
    for key in PICTURES:
        (entry,) = logged(run, key)
        assert entry["_type"] == "images/separated" and entry["count"] == 1
        (name,) = entry["filenames"]
        assert name in run["files"]
        in_wandb = Image.open(run["dir"] / "files" / name)
        assert in_wandb.size == (entry["width"], entry["height"])
        png = Image.open(folder / "runs" / "vae_fmnist" / "version_0" / "images"
                         / f"{key.replace('/', '_')}_epoch0000.png")
        assert in_wandb.size == png.size  # the same grid layout as the run folder's PNG


def test_pictures_in_the_run_show_what_the_run_folder_shows(two_runs):
    folder, _, runs = two_runs
    run = runs[0]
    for key in PICTURES:
        ((name,),) = [entry["filenames"] for entry in logged(run, key)]
        in_wandb = np.asarray(Image.open(run["dir"] / "files" / name).convert("RGB"), dtype=int)
        png = np.asarray(Image.open(folder / "runs" / "vae_fmnist" / "version_0" / "images"
                                    / f"{key.replace('/', '_')}_epoch0000.png").convert("RGB"), dtype=int)
        assert np.abs(png - in_wandb).max() <= 1, key  # 1: rounding, if the fix converts to uint8 itself
        assert in_wandb.std() > 10, key  # a picture, not a blank grid


def test_project_group_and_tags_are_as_configured(two_runs):
    for run in two_runs[2]:
        assert run["project"] == "lightning-gen"
        assert run["group"] == "vae"  # --trainer.logger.init_args.group vae
        assert run["tags"] == ["lightning-gen"]


def test_resolved_model_and_data_arguments_are_the_run_config(two_runs):
    """Lightning's log_hyperparams hands the model's and the data's init arguments to W&B as resolved:
    values from the config, defaults it does not write, the linked data shape, command-line overrides."""
    config = two_runs[2][0]["config"]
    declared = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())["model"]["init_args"]
    assert config["latent_dim"] == declared["latent_dim"] and config["likelihood"] == declared["likelihood"]
    assert config["channels"] == 32 and config["hidden"] == 256  # defaults
    assert config["data_shape"] == [1, 28, 28]  # linked from the DataModule
    assert config["subset"] == 300  # command line


def test_the_whole_resolved_config_is_the_run_config(two_runs):
    config = two_runs[2][0]["config"]
    assert config["model"]["class_path"] == "lightning_gen.models.VAE"
    declared = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())["model"]["init_args"]
    assert config["model"]["init_args"]["latent_dim"] == declared["latent_dim"]
    assert config["model"]["init_args"]["decode_statistic"] == declared["decode_statistic"]
    assert config["trainer"]["max_epochs"] == 1


# --- composing the snippet, in process (nothing is trained, no W&B run starts) ----------------------
@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.name)
def test_the_snippet_adds_wandb_to_every_experiment_and_keeps_its_run_folder(experiment, in_tmp_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = LightningGenCLI(args=["--config", str(experiment), "--config", str(SNIPPET)], run=False)
    csv_logger, wandb_logger = cli.trainer.loggers
    assert type(csv_logger).__name__ == "CSVLogger" and csv_logger.name == experiment.stem
    assert type(wandb_logger).__name__ == "WandbLogger"
    assert cli.config.trainer.logger[1].init_args.project == "lightning-gen"
    assert Path(wandb_logger.save_dir) == Path("runs")
    assert Path(cli.trainer.log_dir) == Path("runs", experiment.stem, "version_0")
    assert not (in_tmp_dir / "runs" / "wandb").exists()  # building the logger starts no W&B run


def test_replacing_the_logger_list_would_put_every_run_in_one_folder(in_tmp_dir, monkeypatch):
    """Why the snippet appends (`logger+:`): with W&B as the only logger the run folder is its save_dir,
    shared by every run (config.yaml there refuses the second one)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    replacing = yaml.safe_load(SNIPPET.read_text())
    replacing["trainer"]["logger"] = replacing["trainer"].pop("logger+")
    (in_tmp_dir / "replacing.yaml").write_text(yaml.safe_dump(replacing))
    cli = LightningGenCLI(args=["--config", str(CONFIGS / "vae_fmnist.yaml"), "--config", "replacing.yaml"], run=False)
    assert [type(logger).__name__ for logger in cli.trainer.loggers] == ["WandbLogger"]
    assert Path(cli.trainer.log_dir) == Path("runs")


@pytest.mark.parametrize("experiment, family", [("vae_fmnist.yaml", "vae"), ("gan_fmnist.yaml", "gan")])
def test_runs_are_grouped_by_model_family_without_typing_it(experiment, family, in_tmp_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = LightningGenCLI(args=["--config", str(CONFIGS / experiment), "--config", str(SNIPPET)], run=False)
    assert cli.config.trainer.logger[-1].init_args.group == family
