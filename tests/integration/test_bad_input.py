"""The bad-input catalogue: every mistake a user can make at the boundary (command line, config, data,
checkpoints, evaluation requests, run folders) ends with exit code != 0, one `lightning-gen: error:` line
that names the bad value and the fix, no traceback (unless --debug), and nothing changed on disk."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_gen.callbacks import PictureLogger
from lightning_gen.checkpoints import FORMAT_KEY
from lightning_gen.cli import main
from lightning_gen.data import FashionMNISTDataModule, ToyMixtureDataModule
from lightning_gen.errors import ConfigValueError
from lightning_gen.metrics.precision_recall import PrecisionRecall
from lightning_gen.models import AE, GAN, VAE, PixelCNN
from lightning_gen.nets.conv import ConvEncoder
from lightning_gen.nets.gan import MLPGenerator
from lightning_gen.trainer import LightningGenTrainer
from tests.support.paths import CONFIGS, FMNIST_DIR, write_idx

VAE_CONFIG, GAN_CONFIG = str(CONFIGS / "vae_fmnist.yaml"), str(CONFIGS / "gan_fmnist.yaml")
ONE_STEP = ["--data.init_args.subset", "128", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks",
            '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]']


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with a VAE run and a GAN run (one step each) and a box of broken inputs beside them."""
    root = tmp_path_factory.mktemp("bad_input")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("LIGHTNING_GEN_CACHE", str(root.parent / f"{root.name}_cache"))
        main(["fit", "--config", VAE_CONFIG, *ONE_STEP])
        main(["fit", "--config", GAN_CONFIG, *ONE_STEP])
    inputs = root / "inputs"
    inputs.mkdir()
    vae_ckpt = root / "runs/vae_fmnist/version_0/checkpoints/last.ckpt"
    (inputs / "notes.ckpt").write_text("not a checkpoint, just text\n")
    (inputs / "truncated.ckpt").write_bytes(vae_ckpt.read_bytes()[: vae_ckpt.stat().st_size // 2])
    newer = torch.load(vae_ckpt, map_location="cpu", weights_only=True)
    newer[FORMAT_KEY] = 99
    torch.save(newer, inputs / "from_the_future.ckpt")
    torch.save({"fc.weight": torch.zeros(10, 4)}, inputs / "not_inception.pth")
    # Fashion-MNIST with its training images cut short
    cut = inputs / "cut_fmnist"
    cut.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(FMNIST_DIR / f"{name}.gz", cut / f"{name}.gz")
    write_idx(cut / "train-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    (cut / "train-images-idx3-ubyte").write_bytes((cut / "train-images-idx3-ubyte").read_bytes()[:-100])
    (inputs / "empty_folder").mkdir()
    broken_images = inputs / "broken_images"
    broken_images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(broken_images / f"{i}.png")
    (broken_images / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    odd_size = inputs / "thirty_pixels"
    odd_size.mkdir()
    for i in range(8):
        Image.fromarray(np.full((30, 30, 3), 20 * i, np.uint8)).save(odd_size / f"{i}.png")
    (inputs / "a_file").write_text("a file where a folder should go\n")
    (inputs / "earlier_run").mkdir()
    (inputs / "earlier_run" / "config.yaml").write_text("trainer: {}\n")
    (inputs / "misspelled.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"latnt_dim": 8}}}))
    return root


def _cases(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (command line, what the message must say: the bad value and the fix)."""
    vae = str(root / "runs/vae_fmnist/version_0/checkpoints/last.ckpt")
    gan = str(root / "runs/gan_fmnist/version_0/checkpoints/last.ckpt")
    inputs = root / "inputs"
    misspelled = inputs / "misspelled.yaml"
    folder_data = ["--data", "lightning_gen.data.ImageFolderDataModule", "--data.init_args.data_dir"]
    return {
        # command line and config
        "unknown key in a config file": (["fit", "--config", VAE_CONFIG, "--config", str(misspelled)],
                                         ["latnt_dim", "Did you mean 'latent_dim'"]),
        "unknown trainer option": (["fit", "--config", VAE_CONFIG, "--trainer.max_epchs", "3"],
                                   ["max_epchs", "Did you mean 'trainer.max_epochs'"]),
        "wrong type": (["fit", "--config", VAE_CONFIG, "--model.init_args.latent_dim", "sixteen"],
                       ["latent_dim", "int", "sixteen"]),
        "value out of range": (["fit", "--config", VAE_CONFIG, "--data.init_args.val_fraction", "1.5"],
                               ["val_fraction must be in (0, 1)", "1.5"]),
        "unknown model class": (["fit", "--config", VAE_CONFIG, "--model", "lightning_gen.models.DiffusionModel"],
                                ["lightning_gen.models.DiffusionModel", "has no attribute"]),
        "config file that does not exist": (["fit", "--config", str(inputs / "vae.yml")],
                                            ["vae.yml", "does not exist"]),
        "image shape the model cannot take": (["fit", "--config", GAN_CONFIG, *folder_data,
                                               str(inputs / "thirty_pixels"), "--data.init_args.image_size", "30"],
                                              ["30x30", "divisible by 4", "--data.init_args.image_size 32"]),
        # data
        "data folder that does not exist": (["fit", "--config", VAE_CONFIG, "--data.init_args.data_dir",
                                             str(inputs / "fashion")], ["fashion", "$LIGHTNING_GEN_DATA"]),
        "truncated data file": (["fit", "--config", VAE_CONFIG, "--data.init_args.data_dir",
                                 str(inputs / "cut_fmnist")],
                                ["train-images-idx3-ubyte", "truncated"]),
        "empty image folder": (["fit", "--config", GAN_CONFIG, *folder_data, str(inputs / "empty_folder")],
                               ["empty_folder", "holds no"]),
        "undecodable image in a folder": (["fit", "--config", GAN_CONFIG, *folder_data, str(inputs / "broken_images"),
                                           "--data.init_args.batch_size", "5"],
                                          ["4.png", "cannot decode", "Remove or replace"]),
        # checkpoints
        "checkpoint of another model family": (["fit", "--config", str(CONFIGS / "ae_fmnist.yaml"), "--ckpt_path", vae],
                                               ["lightning_gen.models.autoencoder.VAE", "AE"]),
        "checkpoint that does not exist": (["sample", "--ckpt_path", str(inputs / "gone.ckpt")],
                                           ["gone.ckpt", "does not exist"]),
        "run folder given as a checkpoint": (["sample", "--ckpt_path", str(root / "runs")],
                                             ["runs is a folder, not a file", vae]),
        "text file named .ckpt": (["evaluate", "--ckpt_path", str(inputs / "notes.ckpt")],
                                  ["notes.ckpt", "cannot be read"]),
        "truncated checkpoint": (["fit", "--config", VAE_CONFIG, "--ckpt_path", str(inputs / "truncated.ckpt")],
                                 ["truncated.ckpt", "corrupt"]),
        "checkpoint of a newer format": (["sample", "--ckpt_path", str(inputs / "from_the_future.ckpt")],
                                         ["from_the_future.ckpt", "format 99", "Upgrade lightning-gen"]),
        # evaluation and sampling requests
        "num_samples of zero": (["sample", "--ckpt_path", vae, "--num_samples", "0"],
                                ["num_samples must be at least 1"]),
        "negative num_samples": (["evaluate", "--ckpt_path", vae, "--num_samples", "-5"], ["num_samples", "-5"]),
        "unknown metric": (["evaluate", "--ckpt_path", vae, "--metrics", "fid,crispness"],
                           ["crispness", "unknown metric"]),
        "likelihood metric of a GAN": (["evaluate", "--ckpt_path", gan, "--metrics", "nll_bpd"], ["nll_bpd", "GAN"]),
        "Inception weights that do not exist": (["evaluate", "--ckpt_path", vae, "--metrics", "fid", "--features",
                                                 "inception", "--features_weights", str(inputs / "inception.pth")],
                                                ["inception.pth", "do not exist", "LIGHTNING_GEN_INCEPTION_WEIGHTS"]),
        "Inception weights of another network": (["evaluate", "--ckpt_path", vae, "--metrics", "fid", "--features",
                                                  "inception", "--features_weights", str(inputs / "not_inception.pth")],
                                                 ["not_inception.pth", "does not hold the FID Inception-v3 network"]),
        # run folders
        "run folder under a file": (["fit", "--config", VAE_CONFIG,
                                     "--trainer.default_root_dir", str(inputs / "a_file/runs"),
                                     "--trainer.logger.init_args.save_dir", str(inputs / "a_file/runs")],
                                    ["a_file", "is a file", "--trainer.default_root_dir"]),
        **_rejected_values(root),
    }


def _rejected_values(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Values that Lightning, torch, the DataLoader or our own constructors refuse, or accepted silently
    before: each one named with its full option path, caught before the run folder exists."""
    vae = str(root / "runs/vae_fmnist/version_0/checkpoints/last.ckpt")
    return {
        "trainer option Lightning refuses": (["fit", "--config", VAE_CONFIG, "--trainer.max_time", "00:00:5:00"],
                                             ["--trainer.max_time 00:00:5:00", "DD:HH:MM:SS"]),
        "callback option Lightning refuses": (["fit", "--config", VAE_CONFIG, "--trainer.callbacks+=ModelCheckpoint",
                                               "--trainer.callbacks.every_n_epochs", "-1"],
                                              ["every_n_epochs -1", "Must be >= 0"]),
        "negative learning rate": (["fit", "--config", VAE_CONFIG, "--model.init_args.optimizer.init_args.lr", "-1"],
                                   ["--model.init_args.optimizer.init_args.lr -1.0", "Invalid learning rate"]),
        "Adam beta of a GAN player out of range": (
            ["fit", "--config", GAN_CONFIG, "--model.init_args.discriminator_optimizer.init_args.betas", "[1.5, 0.9]"],
            ["--model.init_args.discriminator_optimizer.init_args.betas", "Invalid beta parameter"]),
        "batch size of zero": (["fit", "--config", VAE_CONFIG, "--data.init_args.batch_size", "0"],
                               ["--data.init_args.batch_size must be at least 1, got 0"]),
        "latent size of zero": (["fit", "--config", VAE_CONFIG, "--model.init_args.latent_dim", "0"],
                                ["--model.init_args.latent_dim must be at least 1, got 0"]),
        "network width of zero (shorthand option)": (["fit", "--config", GAN_CONFIG, "--model.width", "0"],
                                                     ["--model.init_args.width must be at least 1, got 0"]),
        "counter Lightning would divide by": (["fit", "--config", VAE_CONFIG, "--trainer.check_val_every_n_epoch", "0"],
                                              ["--trainer.check_val_every_n_epoch must be at least 1, got 0"]),
        "existing file as sample --out": (["sample", "--ckpt_path", vae, "--out", str(root / "inputs/a_file")],
                                          ["--out", "a_file", "is a file, not a folder"]),
        "run folder of an earlier run without a logger": (
            ["fit", "--config", VAE_CONFIG, "--trainer.logger", "false", "--trainer.callbacks", "[]",
             "--trainer.default_root_dir", str(root / "inputs/earlier_run")],
            ["earlier_run/config.yaml exists", "--trainer.default_root_dir"]),
    }


CASE_NAMES = list(_cases(Path("/nonexistent")))


def _paths(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, files with their content's hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def test_the_catalogue_is_at_least_fifteen_cases():
    assert len(CASE_NAMES) >= 15 and len(set(CASE_NAMES)) == len(CASE_NAMES)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_is_one_message_naming_value_and_fix_and_changes_nothing(workspace, case, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("LIGHTNING_GEN_DATA", raising=False)
    monkeypatch.setenv("LIGHTNING_GEN_CACHE", str(workspace.parent / f"{workspace.name}_cache"))
    args, expected = _cases(workspace)[case]
    before = _paths(workspace)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("lightning-gen: error:") == 1, err[-3000:]
    message = err[err.index("lightning-gen: error:"):]
    assert len(message.splitlines()) <= 8, message  # short: the problem and the fix, no usage dump
    for text in expected:
        assert text in message, f"{text!r} missing from: {message}"
    assert _paths(workspace) == before  # no run folder, checkpoint or input was created or touched


def test_debug_shows_the_traceback(workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    args, _ = _cases(workspace)["checkpoint that does not exist"]
    with pytest.raises(Exception) as raised:
        main([*args, "--debug"])
    assert type(raised.value).__name__ == "CheckpointError" and "gone.ckpt" in str(raised.value)
    monkeypatch.setenv("LIGHTNING_GEN_DEBUG", "1")
    with pytest.raises(Exception) as raised:
        main(args)
    assert type(raised.value).__name__ == "CheckpointError"


def test_an_error_is_the_error_without_advertisements(tmp_path):
    """Lightning logs a "💡 Tip: ... litlogger" line when it builds a Trainer; the launcher drops it (its
    logging bypasses pytest's capture, hence a real process)."""
    plain = subprocess.run([sys.executable, "-c", "import lightning.pytorch as pl; pl.Trainer(logger=False)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Tip:" in plain.stdout + plain.stderr  # the control: Lightning alone shows it
    result = subprocess.run([sys.executable, "-m", "lightning_gen", "fit", "--config", VAE_CONFIG,
                             "--trainer.max_time", "00:00:5:00"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "Tip:" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("lightning-gen: error:") == 1 and "--trainer.max_time" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_error_after_the_trainer_is_built_comes_without_lightnings_start_up_lines(tmp_path):
    """A data folder is checked after the Trainer exists, whose start-up lines ("GPU available: ...") would
    come first; they are held back until the checks pass, then written (the control: a run that starts)."""
    command = [sys.executable, "-m", "lightning_gen", "fit", "--config", VAE_CONFIG, "--trainer.logger", "false",
               "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--data.init_args.subset", "64",
               "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"]
    refused = subprocess.run([*command, "--data.init_args.data_dir", str(tmp_path / "no_data")], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "no_data" in refused.stderr
    assert "GPU available" not in refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines()[0].startswith("lightning-gen: error:")
    started = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    assert "GPU available" in started.stdout + started.stderr


OUT_OF_RANGE = [  # (class, arguments, the message): sizes, counts, weights, fractions of our own classes
    (VAE, {"latent_dim": 0}, "latent_dim must be at least 1, got 0"),
    (AE, {"channels": -4}, "channels must be at least 1, got -4"),
    (VAE, {"hidden": 0}, "hidden must be at least 1, got 0"),
    (VAE, {"beta": -0.5}, "beta must be at least 0, got -0.5"),
    (VAE, {"test_importance_samples": 0}, "test_importance_samples must be at least 1, got 0"),
    (GAN, {"width": 0}, "width must be at least 1, got 0"),
    (GAN, {"data_shape": (2,), "hidden": 0}, "hidden must be at least 1, got 0"),
    (GAN, {"gp_weight": -1.0}, "gp_weight must be at least 0, got -1.0"),
    (GAN, {"ema_decay": float("nan")}, "ema_decay must be in [0, 1), got nan"),
    (PixelCNN, {"layers": 0}, "layers must be at least 1, got 0"),
    (PixelCNN, {"distribution": "logistic_mixture", "mixture_components": 0}, "mixture_components must be at least 1"),
    (PixelCNN, {"first_kernel_size": 4}, "first_kernel_size must be odd and at least 3, got 4"),
    (PictureLogger, {"every_n_epochs": 0}, "every_n_epochs must be at least 1, got 0"),
    (PrecisionRecall, {"k": 0}, "k must be at least 1, got 0"),
    (FashionMNISTDataModule, {"batch_size": 0}, "batch_size must be at least 1, got 0"),
    (FashionMNISTDataModule, {"eval_batch_size": -8}, "eval_batch_size must be at least 1, got -8"),
    (FashionMNISTDataModule, {"num_workers": -1}, "num_workers must be at least 0, got -1"),
    (ToyMixtureDataModule, {"std": 0.0}, "std must be greater than 0, got 0.0"),
    (ToyMixtureDataModule, {"num_train": 1}, "num_train must be at least 2, got 1"),
    (lambda **kw: ConvEncoder((1, 28, 28), **kw), {"out_features": 0}, "out_features must be at least 1, got 0"),
    (lambda **kw: MLPGenerator(2, 4, **kw), {"depth": 0}, "depth must be at least 1, got 0"),
    (LightningGenTrainer, {"accumulate_grad_batches": 0}, "accumulate_grad_batches must be at least 1, got 0"),
    (LightningGenTrainer, {"val_check_interval": -0.5}, "val_check_interval must be greater than 0, got -0.5"),
]


@pytest.mark.parametrize("build, arguments, message", OUT_OF_RANGE,
                         ids=[f"{getattr(c, '__name__', 'net')}-{list(a)[-1]}" for c, a, _ in OUT_OF_RANGE])
def test_numeric_arguments_out_of_range_are_refused_by_name(build, arguments, message):
    with pytest.raises(ConfigValueError) as refused:
        build(**arguments)
    assert message in str(refused.value)
