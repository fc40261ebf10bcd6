"""The launcher: configs, overrides, misspelled keys, run folders, resume, and refusals that keep runs safe."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_gen.cli import LightningGenCLI, main
from lightning_gen.models import AE, VAE
from tests.support.contract import file_digests
from tests.support.paths import CONFIGS, REPO

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
FAST = [  # a small, quick run of the default config
    "--data.init_args.subset", "600",
    "--trainer.max_epochs", "2",
    "--trainer.enable_progress_bar", "false",
    "--model.init_args.test_importance_samples", "4",
    "--model.init_args.val_importance_samples", "2",
]


def test_there_is_a_config_per_foundation_model():
    names = {p.name for p in ALL_CONFIGS}
    assert {"vae_fmnist.yaml", "ae_fmnist.yaml", "vae_mnist.yaml", "vae_cifar10.yaml"} <= names


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_instantiates_with_linked_shapes(config, in_tmp_dir):
    cli = LightningGenCLI(args=["--config", str(config)], run=False)
    declared = yaml.safe_load(config.read_text())
    assert f"{type(cli.model).__module__.rsplit('.', 1)[0]}.{type(cli.model).__name__}".endswith(
        declared["model"]["class_path"].rsplit(".", 1)[-1]
    )
    assert cli.model.data_shape == cli.datamodule.data_shape  # linked, never typed in the config
    assert "data_shape" not in declared["model"].get("init_args", {})


def test_command_line_overrides_any_key(in_tmp_dir):
    cli = LightningGenCLI(
        args=["--config", str(CONFIGS / "vae_fmnist.yaml"), "--trainer.max_epochs", "7",
              "--model.init_args.latent_dim", "5", "--data.init_args.batch_size", "16"],
        run=False,
    )
    assert cli.trainer.max_epochs == 7 and cli.model.latent_dim == 5 and cli.datamodule.batch_size == 16


def test_misspelled_key_on_the_command_line_is_named(in_tmp_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "vae_fmnist.yaml"), "--model.init_args.latnt_dim", "3"])
    assert exit_info.value.code != 0
    assert "latnt_dim" in capsys.readouterr().err


def test_misspelled_key_in_a_config_file_is_named(in_tmp_dir, capsys):
    config = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())
    config["model"]["init_args"]["kl_warmup_stepz"] = 10
    path = in_tmp_dir / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code != 0
    assert "kl_warmup_stepz" in capsys.readouterr().err


def test_print_config_shows_every_option_with_its_default(in_tmp_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "vae_fmnist.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())
    assert printed["data"]["init_args"]["val_fraction"] == 0.1  # a default not written in the config
    assert printed["model"]["init_args"]["channels"] == 32  # likewise
    assert printed["model"]["init_args"]["optimizer"]["init_args"]["lr"] == \
        written["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    assert printed["trainer"]["max_epochs"] == written["trainer"]["max_epochs"] and printed["test_after_fit"] is False


def _run_folders(root: Path) -> list[Path]:
    return sorted((root / "runs" / "vae_fmnist").glob("version_*"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fmnist_dir) -> Path:
    """One short `python -m lightning_gen fit` of the default config, as a user runs it."""
    root = tmp_path_factory.mktemp("cli_run")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gen", "fit", "--config", str(CONFIGS / "vae_fmnist.yaml"),
         "--test_after_fit", "true", *FAST],
        cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "stdout.txt").write_text(result.stdout)
    (root / "stderr.txt").write_text(result.stderr)
    return root


def test_fit_leaves_a_complete_run_folder_and_says_where(trained_run):
    (folder,) = _run_folders(trained_run)
    checkpoints = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch=") for name in checkpoints)
    assert (folder / "config.yaml").is_file() and (folder / "metrics.csv").is_file()
    pictures = {p.name for p in (folder / "images").glob("*.png")}
    for kind in ("samples", "reconstructions", "interpolations"):
        assert f"val_{kind}_epoch0001.png" in pictures and any(n.startswith(f"test_{kind}") for n in pictures)
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["data"]["init_args"]["subset"] == 600 and saved["trainer"]["max_epochs"] == 2
    stdout = (trained_run / "stdout.txt").read_text()
    closing = stdout[stdout.rindex("run folder:"):]  # the summary is the last thing printed
    assert closing.startswith(f"run folder: runs/vae_fmnist/{folder.name}")
    for line in ("config:", "best ckpt:", "last ckpt:", "metrics:", "pictures:", "test/nll_bpd", "val/elbo"):
        assert line in closing
    assert "Tip:" not in stdout + (trained_run / "stderr.txt").read_text()  # Lightning's litlogger advertisement


def test_validate_test_and_predict_use_a_checkpoint(trained_run, monkeypatch, capsys):
    monkeypatch.chdir(trained_run)
    (folder,) = _run_folders(trained_run)
    ckpt = str(folder / "checkpoints" / "last.ckpt")
    common = ["--config", str(CONFIGS / "vae_fmnist.yaml"), *FAST, "--ckpt_path", ckpt]
    validated = LightningGenCLI(args=["validate", *common])
    tested = LightningGenCLI(args=["test", *common])
    assert validated.trainer.callback_metrics["val/elbo"] < 0
    bpd = float(tested.trainer.callback_metrics["test/nll_bpd"])
    assert 0 < bpd < 8  # better than a uniform model over 256 levels
    predicted = LightningGenCLI(args=["predict", *common])
    outputs = torch.load(Path(predicted.trainer.log_dir) / "predictions.pt")
    latent_dim = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())["model"]["init_args"]["latent_dim"]
    assert outputs["z"].shape == (600, latent_dim) and outputs["reconstruction"].shape == (600, 1, 28, 28)


def test_fit_resumes_with_the_same_counters_in_a_new_folder(trained_run, monkeypatch):
    monkeypatch.chdir(trained_run)
    (first,) = _run_folders(trained_run)[:1]
    before = file_digests(first)
    batch_size = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())["data"]["init_args"]["batch_size"]
    batches_per_epoch = -(-540 // batch_size)  # 600 images, 10% held out for validation
    cli = LightningGenCLI(args=["fit", "--config", str(CONFIGS / "vae_fmnist.yaml"), *FAST,
                                "--trainer.max_epochs", "3", "--ckpt_path", str(first / "checkpoints" / "last.ckpt")])
    assert cli.trainer.current_epoch == 3 and cli.trainer.global_step == 3 * batches_per_epoch
    resumed = Path(cli.trainer.log_dir)
    assert resumed != first
    epochs = {int(row["epoch"]) for row in csv.DictReader(open(resumed / "metrics.csv")) if row["epoch"]}
    assert epochs == {2}  # only the third epoch ran
    assert file_digests(first) == before  # the earlier run's checkpoints are untouched


def test_a_checkpoint_of_another_model_is_refused_before_any_work(trained_run, monkeypatch, capsys):
    monkeypatch.chdir(trained_run)
    before = file_digests(trained_run / "runs")
    ckpt = _run_folders(trained_run)[0] / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "ae_fmnist.yaml"), "--ckpt_path", str(ckpt),
              "--data.init_args.subset", "600"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lightning_gen.models.autoencoder.VAE" in err and "AE" in err and "Traceback" not in err
    after = file_digests(trained_run / "runs")
    assert {k: after[k] for k in before} == before  # nothing existing was changed or deleted
    assert not (trained_run / "runs" / "ae_fmnist").exists()


def test_missing_data_is_one_clear_message_without_traceback(in_tmp_dir):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gen", "fit", "--config", str(CONFIGS / "vae_fmnist.yaml"),
         "--data.init_args.data_dir", str(in_tmp_dir / "no_such_folder")],
        cwd=in_tmp_dir, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "no_such_folder" in result.stderr and "$LIGHTNING_GEN_DATA" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "lightning-gen"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout


def test_loaded_checkpoint_is_the_trained_model(trained_run):
    (folder,) = _run_folders(trained_run)[:1]
    model = VAE.load_checkpoint(folder / "checkpoints" / "last.ckpt")
    declared = yaml.safe_load((CONFIGS / "vae_fmnist.yaml").read_text())["model"]["init_args"]
    assert model.latent_dim == declared["latent_dim"] and model.data_shape == (1, 28, 28)
    assert model.decode_statistic == declared["decode_statistic"]
    with pytest.raises(Exception, match="VAE"):
        AE.load_checkpoint(folder / "checkpoints" / "last.ckpt")


def test_a_corrupt_checkpoint_is_one_clear_message(in_tmp_dir, capsys):
    broken = in_tmp_dir / "broken.ckpt"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "vae_fmnist.yaml"), "--ckpt_path", str(broken)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "broken.ckpt" in err and "corrupt" in err and "Traceback" not in err
    assert broken.read_bytes() == b"\x00" * 100


def test_evaluate_needs_only_a_checkpoint_and_writes_metrics_json(trained_run, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(trained_run)
    monkeypatch.setenv("LIGHTNING_GEN_CACHE", str(tmp_path / "cache"))
    ckpt = _run_folders(trained_run)[0] / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    main(["evaluate", "--ckpt_path", str(ckpt), "--metrics", "fid,precision_recall,nll_bpd",
          "--num_samples", "300", "--max_real", "300", "--importance_samples", "3"])
    printed = capsys.readouterr().out
    assert "fid_fmnist_clf" in printed and "nll_bpd" in printed and "metrics.json" in printed
    record = json.loads((ckpt.parent / "metrics.json").read_text())["last.ckpt"]
    by_name = {r["name"]: r for r in record["results"]}
    assert set(by_name) == {"fid_fmnist_clf", "precision_fmnist_clf", "recall_fmnist_clf", "nll_bpd"}
    assert by_name["fid_fmnist_clf"]["protocol"]["real_split"] == "test"
    assert by_name["fid_fmnist_clf"]["protocol"]["num_real"] == 300
    assert by_name["fid_fmnist_clf"]["protocol"]["real_selection"]["subset"] == "600"  # recorded by the checkpoint
    assert by_name["nll_bpd"]["protocol"]["estimator"] == "IWAE bound" and 0 < by_name["nll_bpd"]["value"] < 8
    assert by_name["nll_bpd"]["protocol"]["importance_samples"] == 3
    assert ckpt.read_bytes() == before


def test_sample_reproduces_from_a_seed(trained_run, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(trained_run)
    ckpt = str(_run_folders(trained_run)[0] / "checkpoints" / "last.ckpt")
    for out, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        main(["sample", "--ckpt_path", ckpt, "--num_samples", "10", "--out", str(tmp_path / out), "--seed", seed])
    a, b, c = (np.load(tmp_path / name / "samples.npz")["images"] for name in "abc")
    assert a.dtype == np.uint8 and a.shape == (10, 1, 28, 28)  # NCHW
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (tmp_path / "a" / "samples.png").is_file()


def test_sample_draws_all_into_the_npz_and_a_grid_of_the_first_64_into_the_png(trained_run, monkeypatch, tmp_path,
                                                                               capsys):
    monkeypatch.chdir(trained_run)
    ckpt = str(_run_folders(trained_run)[0] / "checkpoints" / "last.ckpt")
    # with the training config: the Trainer options that sample does not use are still accepted
    main(["sample", "--config", str(CONFIGS / "vae_fmnist.yaml"), "--ckpt_path", ckpt, "--num_samples", "70",
          "--batch_size", "32", "--out", str(tmp_path)])
    assert np.load(tmp_path / "samples.npz")["images"].shape == (70, 1, 28, 28)
    with Image.open(tmp_path / "samples.png") as grid:
        assert grid.size == (8 * 30 + 2, 8 * 30 + 2)  # 8 x 8 images of 28 pixels, 2 pixels apart
    assert "samples.png (the first 64)" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_evaluate_and_sample_help_lists_only_the_trainer_options_they_use(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--ckpt_path", "--num_samples", "--seed", "--trainer.accelerator", "--trainer.devices"):
        assert option in shown
    for option in ("--trainer.max_epochs", "--trainer.gradient_clip_val", "--trainer.callbacks", "--test_after_fit"):
        assert option not in shown
    assert len(shown.splitlines()) < 200


def test_fit_help_still_lists_every_trainer_option(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    shown = capsys.readouterr().out
    assert "--trainer.max_epochs" in shown and "--trainer.gradient_clip_val" in shown and "--test_after_fit" in shown


def test_evaluate_and_sample_refuse_bad_requests(trained_run, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(trained_run)
    ckpt = str(_run_folders(trained_run)[0] / "checkpoints" / "last.ckpt")
    for args, expected in (
        (["evaluate", "--ckpt_path", ckpt, "--metrics", "fid,crispness"], "unknown metric"),
        (["sample", "--ckpt_path", ckpt, "--num_samples", "0"], "num_samples must be at least 1"),
        (["sample", "--ckpt_path", str(tmp_path / "missing.ckpt")], "does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


def test_help_names_every_command_including_those_on_finished_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m lightning_gen")
    for command in ("fit", "validate", "test", "predict", "evaluate", "sample", "compare", "dashboard"):
        assert command in shown, command


@pytest.mark.parametrize("spelling", ["--model.init_args.val_importance_samples", "--model.val_importance_samples"])
def test_a_model_option_typed_on_the_command_line_wins_over_the_checkpoint(trained_run, monkeypatch, tmp_path,
                                                                          spelling):
    monkeypatch.chdir(trained_run)
    ckpt = str(_run_folders(trained_run)[0] / "checkpoints" / "last.ckpt")
    command = ["validate", "--config", str(CONFIGS / "vae_fmnist.yaml"), "--ckpt_path", ckpt, *FAST[:2],
               "--trainer.limit_val_batches", "1", "--trainer.callbacks", "[]", "--trainer.default_root_dir",
               str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    from_checkpoint = LightningGenCLI(args=command).model
    assert from_checkpoint.val_importance_samples == 2  # the trained run's value beats the config file's 1
    typed = LightningGenCLI(args=[*command, spelling, "3"]).model
    assert typed.val_importance_samples == 3 and typed.latent_dim == from_checkpoint.latent_dim
    typed = LightningGenCLI(args=[*command, f"{spelling}=5"]).model
    assert typed.val_importance_samples == 5


@pytest.mark.parametrize("buffered", [True, False])
def test_output_into_a_closed_pipe_ends_quietly(buffered):
    # a reader that went away (`lightning-gen configs | head -1`): here, a pipe whose reading end is closed before
    # the command starts, so its first write fails, whether Python buffers the output or writes each line
    reading, writing = os.pipe()
    os.close(reading)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        result = subprocess.run([sys.executable, "-m", "lightning_gen", "configs"], stdout=writing,
                                stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    finally:
        os.close(writing)
    assert result.returncode == 128 + 13  # as a tool killed by SIGPIPE
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
