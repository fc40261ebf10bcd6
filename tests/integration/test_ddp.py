"""Every model family through `python -m lightning_gen fit ... --trainer.devices 2 --trainer.strategy ddp`
on the CPU (gloo), as a user launches it: the processes see different shards and draw different noise,
gradients are synchronised (identical parameters at the end), logged metrics are reduced across
processes, only rank 0 writes files, and nothing hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.data.resident import epoch_indices
from tests.support.ddp_probe import sample_digests
from tests.support.paths import CONFIGS, REPO, lean_vae_config

PROBE = "--trainer.callbacks+=tests.support.ddp_probe.RankProbe"  # tests/support/ddp_probe.py, in every process
FAMILIES = ["ae_fmnist", "vae_fmnist", "gan_fmnist", "pixelcnn_fmnist", "flow_matching_fmnist", "flow_fmnist"]
SMALL = {"pixelcnn_fmnist": ["--model.init_args.hidden", "12", "--model.init_args.layers", "2"],
         "flow_matching_fmnist": ["--model.init_args.base_width", "8", "--model.init_args.nfe", "2"],
         "flow_fmnist": ["--model.init_args.hidden", "16", "--model.init_args.steps_per_level", "2"]}


def _small_config(name: str, folder: Path) -> Path:
    """The shipped config with the evaluation callback's sample count cut to 200 (budget only) and every
    callback due after the one epoch these tests train."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    for callback in config["trainer"].get("callbacks") or []:
        if "every_n_epochs" in callback.get("init_args", {}):
            callback["init_args"]["every_n_epochs"] = 1
        if callback["class_path"].endswith("EvaluationCallback"):
            callback["init_args"]["num_samples"] = 200
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(folder: Path, *args: str, devices: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RANK_PROBE_DIR": str(folder / "probe"),
           "LIGHTNING_GEN_CACHE": str(folder / "cache")}
    command = [sys.executable, "-m", "lightning_gen", *args, "--trainer.accelerator", "cpu",
               "--trainer.devices", str(devices), "--trainer.enable_progress_bar", "false"]
    if devices > 1:
        command += ["--trainer.strategy", "ddp"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", FAMILIES)
def test_two_process_ddp_fit_of_every_family(name, tmp_path, fmnist_dir):
    config = _small_config(name, tmp_path)
    result = _launch(tmp_path, "fit", "--config", str(config), "--data.init_args.subset", "600",
                     "--trainer.max_epochs", "1", PROBE, *SMALL.get(name, []),
                     devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "probe" / f"fit_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # each process trains on its own shard and draws its own noise ...
    assert not set(ranks[0]["first_batches"]) & set(ranks[1]["first_batches"])
    assert ranks[0]["noise"] != ranks[1]["noise"]
    # ... yet the gradients are averaged, so every parameter ends identical on both processes
    assert ranks[0]["global_step"] == ranks[1]["global_step"] > 1
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    # logged validation metrics are reduced: both processes report the same numbers
    val = lambda r: {k: v for k, v in r["callback_metrics"].items() if k.startswith("val/")}  # noqa: E731
    assert val(ranks[0]) == val(ranks[1]) and val(ranks[0])
    # one writer: a single run folder, each picture once, one line per evaluation result
    (run,) = (tmp_path / "runs").glob("*/version_*")
    assert not list((tmp_path / "runs").glob("*/version_1"))
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2, checkpoints
    assert sorted(p.name for p in (run / "images").glob("val_samples_*.png")) == ["val_samples_epoch0000.png"]
    lines = (run / "evaluation.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["name"] for line in lines}) == 4  # fid, kid, precision, recall


def test_ddp_validation_metric_equals_the_single_process_value(tmp_path, fmnist_dir):
    """PixelCNN's likelihood is exact (no sampling), so the 2-process val/nll_bpd of the final weights
    must equal a single-process `validate` of the saved checkpoint on the same validation images."""
    config = _small_config("pixelcnn_fmnist", tmp_path)
    common = ["--config", str(config), "--data.init_args.subset", "600", *SMALL["pixelcnn_fmnist"]]
    fit = _launch(tmp_path, "fit", *common, "--trainer.max_epochs", "1", PROBE,
                  devices=2)
    assert fit.returncode == 0, fit.stderr[-3000:]
    two_process = json.loads((tmp_path / "probe" / "fit_rank0.json").read_text())["callback_metrics"]["val/nll_bpd"]
    (last,) = (tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")
    validate = _launch(tmp_path, "validate", *common, "--ckpt_path", str(last),
                       PROBE, devices=1)
    assert validate.returncode == 0, validate.stderr[-3000:]
    single = json.loads((tmp_path / "probe" / "validate_rank0.json").read_text())["val/nll_bpd"]
    assert single == pytest.approx(two_process, rel=1e-6), (single, two_process)


@pytest.mark.parametrize("snippet, processes", [("cpu", 1), ("ddp_cpu", 2)])
def test_trainer_snippets_compose_with_a_model_config(snippet, processes, in_tmp_dir):
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_gen.cli import LightningGenCLI

    cli = LightningGenCLI(args=["--config", str(CONFIGS / "gan_fmnist.yaml"),
                                "--config", str(CONFIGS / "trainer" / f"{snippet}.yaml")], run=False)
    assert cli.trainer.num_devices == processes
    assert isinstance(cli.trainer.strategy, DDPStrategy) == (processes > 1)
    cli.trainer.adapt_strategy(cli.model)  # what fit does first
    if processes > 1:  # the GAN's phases need unused-parameter detection (LightningGenTrainer.adapt_strategy)
        assert cli.trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True
    assert cli.trainer.max_epochs == 10  # the model config's own settings survive the composition


def test_two_ddp_processes_train_on_disjoint_shards_of_one_permutation(tmp_path, fmnist_dir):
    config = lean_vae_config(tmp_path, max_epochs=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RANK_PROBE_DIR": str(tmp_path / "probe"),
           "LIGHTNING_GEN_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "lightning_gen", "fit", "--config", str(config), "--config",
               str(CONFIGS / "trainer" / "ddp_cpu.yaml"), "--data.init_args.subset", "601",
               "--data.init_args.device_resident", "true", "--trainer.callbacks+=tests.support.ddp_probe.ShardProbe",
               PROBE]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "probe" / f"resident_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["loader"]) for r in ranks] == [(0, 2, "ResidentLoader"),
                                                                          (1, 2, "ResidentLoader")]

    data = FashionMNISTDataModule(subset=601)  # the train split the processes shared: 541 images
    data.setup("fit")
    images = sample_digests(torch.stack([data.train_set[i][0] for i in range(len(data.train_set))]))
    assert len(set(images)) == len(images) == 541
    for epoch in ("0", "1"):
        seen = [r["seen"][epoch] for r in ranks]
        assert len(seen[0]) == len(seen[1]) == 271  # 541 padded to 542, half each
        assert set(seen[0]) | set(seen[1]) == set(images)  # together the whole split ...
        (repeated,) = set(seen[0]) & set(seen[1])  # ... overlapping only in the one padded image
        # exactly the shard of epoch_indices' permutation: seeded by seed_everything (0), cut by rank
        for rank in (0, 1):
            assert seen[rank] == [images[i] for i in epoch_indices(541, 0, int(epoch), rank, 2)]
    assert ranks[0]["seen"]["0"] != ranks[0]["seen"]["1"]
    # gradients were still averaged: identical parameters on both processes at the end
    synced = [json.loads((tmp_path / "probe" / f"fit_rank{r}.json").read_text()) for r in (0, 1)]
    assert synced[0]["parameters"] == synced[1]["parameters"] and synced[0]["global_step"] == 2 * 5
