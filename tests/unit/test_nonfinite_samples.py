"""Samples with NaN or inf are refused with one line naming how many values are bad and where they came from,
before any statistics, on every path: a file (`evaluate --samples`), the `sample` command, `evaluate` of a
checkpoint, `compare` (a failed run) and the EvaluationCallback (a logged failure); never a crash. Before this
check, `evaluate --samples` of a NaN file died in FID's matrix square root (MKL's DGEBAL, exit 139)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_gen.callbacks import EvaluationCallback
from lightning_gen.cli import main
from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.metrics.finite import NonFiniteSamplesError, check_finite_samples
from lightning_gen.metrics.frechet import FrechetReference, GuardedFrechetInceptionDistance
from tests.support.image_bank import ImageBankModel
from tests.support.paths import CONFIGS
from tests.support.stand_ins import SampleOnlyModel

FMNIST = ["--data", "vae_fmnist", "--data_dir", "/usr/share/datasets/fashion-mnist"]


def _one_error_line(err: str) -> str:
    """The error's one line (stderr may also hold progress bars), with no traceback."""
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("lightning-gen: error: ") and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_the_check_counts_nan_and_inf_values_and_the_samples_holding_them():
    images = torch.rand(10, 1, 4, 4)
    images[0, 0, 0, :3] = math.nan
    images[7, 0, 2, 2] = -math.inf
    with pytest.raises(NonFiniteSamplesError, match=r"^here: 4 non-finite values \(NaN or ±inf\) in 2 of 10 samples"):
        check_finite_samples(images, "here")
    check_finite_samples(images.nan_to_num(), "here")  # the same images made finite pass


def test_a_file_of_nan_images_exits_2_with_one_line_not_a_crash(tmp_path, fmnist_dir):
    images = np.random.default_rng(0).random((40, 1, 28, 28), dtype=np.float32)
    images[:30] = np.nan  # 30 images of 784 NaN values
    images[35, 0, 0, 0] = np.inf
    np.savez(tmp_path / "diverged.npz", images=images)
    result = subprocess.run([sys.executable, "-m", "lightning_gen", "evaluate", "--samples",
                             str(tmp_path / "diverged.npz"), *FMNIST, "--metrics", "fid", "--max_real", "100"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])  # was 139 (segmentation fault)
    line = _one_error_line(result.stderr)
    assert f"--samples {tmp_path / 'diverged.npz'}: 23,521 non-finite values (NaN or ±inf) in 31 of 40" in line
    assert "refused before any statistics" in line
    assert not (tmp_path / "metrics.json").exists()


def test_fid_refuses_non_finite_feature_statistics_instead_of_crashing():
    """Finite samples whose features overflow (here: given as inf) reach FID's statistics: a clear error."""
    fid = GuardedFrechetInceptionDistance(feature=_Identity(3))
    fid.update(torch.randn(20, 3, dtype=torch.float64), real=True)
    fid.update(torch.full((20, 3), math.inf, dtype=torch.float64), real=False)
    with pytest.raises(NonFiniteSamplesError, match="FID: the generated features' mean has 3 non-finite entries"):
        fid.compute()
    cov = torch.eye(3, dtype=torch.float64)
    cov[0, 1] = math.nan
    with pytest.raises(NonFiniteSamplesError, match="real features' covariance has 1 non-finite"):
        FrechetReference(torch.zeros(3, dtype=torch.float64), cov)


class _Identity(torch.nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def test_evaluation_of_a_model_refuses_at_the_first_bad_batch(fmnist_dir, tmp_path):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    images = torch.rand(90, 1, 28, 28)
    images[40:45] = math.nan  # in the second batch of 30
    settings = EvaluationSettings(metrics=["fid", "kid"], num_samples=90, batch_size=30, max_real=60,
                                  cache_dir=str(tmp_path), progress=False)
    with pytest.raises(NonFiniteSamplesError, match=r"^samples of ImageBankModel \(seed 0\): 3,920 non-finite values "
                                                    r"\(NaN or ±inf\) in 5 of 60 samples"):
        evaluate_model(ImageBankModel(images), data, settings, "cpu")


# --- the commands on a checkpoint whose weights are finite but whose samples are NaN ---------------------------

CHECKPOINT_ONLY = '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]'


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist_dir) -> tuple[Path, Path]:
    """A healthy AE run and a copy whose code statistics are NaN: every parameter is finite (so `compare`
    scores it), but every code it samples, and so every image it decodes, is NaN (decoded to p(x|z)'s mean: its
    median is rounded to 8-bit levels, which would hide the NaN)."""
    root = tmp_path_factory.mktemp("nonfinite")
    main(["fit", "--config", str(CONFIGS / "ae_fmnist.yaml"), "--model.init_args.decode_statistic", "mean",
          "--data.init_args.subset", "128",
          "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(root / "runs"), "--trainer.logger.init_args.save_dir", str(root / "runs"),
          "--trainer.callbacks", CHECKPOINT_ONLY])
    healthy = max((root / "runs" / "ae_fmnist").glob("version_*"))
    broken = healthy.with_name("version_99")
    shutil.copytree(healthy, broken)
    checkpoint = torch.load(broken / "checkpoints" / "last.ckpt", weights_only=False)
    checkpoint["state_dict"]["code_mean"].fill_(math.nan)
    torch.save(checkpoint, broken / "checkpoints" / "last.ckpt")
    return healthy, broken


def test_the_sample_command_writes_no_file_of_nan(runs, tmp_path, capsys):
    healthy, broken = runs
    main(["sample", "--ckpt_path", str(healthy / "checkpoints" / "last.ckpt"), "--num_samples", "10",
          "--out", str(tmp_path / "healthy")])  # the control: the same command on the healthy run writes
    assert (tmp_path / "healthy" / "samples.npz").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--ckpt_path", str(broken / "checkpoints" / "last.ckpt"), "--num_samples", "10",
              "--out", str(tmp_path / "broken")])
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"sample --ckpt_path {broken / 'checkpoints' / 'last.ckpt'}: 7,840 non-finite values" in line
    assert "in 10 of 10 samples" in line and "no file was written" in line
    assert not (tmp_path / "broken" / "samples.npz").exists()


def test_evaluate_refuses_the_samples_of_a_model_in_one_line(runs, capsys):
    _, broken = runs
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--ckpt_path", str(broken / "checkpoints" / "last.ckpt"), "--metrics", "fid,kid",
              "--num_samples", "50", "--max_real", "50"])
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "samples of AE (seed 0): 39,200 non-finite values (NaN or ±inf) in 50 of 50 samples" in line
    assert not (broken / "checkpoints" / "metrics.json").exists()


def test_compare_counts_a_run_with_nan_samples_as_diverged_and_scores_the_others(runs, tmp_path):
    healthy, broken = runs
    main(["compare", str(healthy), str(broken), "--out", str(tmp_path / "report"), "--metrics", "fid",
          "--num_samples", "50", "--max_real", "50", "--speed_batch", "2"])
    compared = json.loads((tmp_path / "report" / "comparison.json").read_text())
    by_folder = {Path(run["folder"]).name: run for run in compared["runs"]}
    assert [r["name"] for r in by_folder[healthy.name]["results"]] == ["fid_fmnist_clf"]
    assert by_folder[healthy.name]["failure"] is None
    assert by_folder[broken.name]["results"] == [] and by_folder[broken.name]["latent_holes"] == []
    assert by_folder[broken.name]["failure"].startswith("diverged: samples of AE (seed 0): 39,200 non-finite values")
    (group,) = compared["groups"]  # the copy is the same recipe and seed: one group, half of it failed
    assert list(group["failures"]) == [f"ae_fmnist/{broken.name}"]


# --- the EvaluationCallback: a logged failure, and training goes on --------------------------------------------

class NaNFromEpochOne(SampleOnlyModel):
    """Finite samples in epoch 0; from epoch 1 half of each batch has 4 NaN pixels (a sampler that started to
    overflow). A uniform likelihood throughout: 8 bits/dim."""

    data_shape = (1, 28, 28)

    def sample(self, n, generator=None):
        images = torch.rand(n, *self.data_shape, generator=generator) * self.level.detach()
        if self.current_epoch >= 1:
            images[: n // 2, 0, 0, :4] = math.nan
        return images

    def log_likelihood(self, x):
        return torch.full((len(x),), -784 * math.log(256), dtype=torch.float64)


def test_the_callback_logs_the_failure_and_training_goes_on(fmnist_dir, tmp_path):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=200, batch_size=50)
    callback = EvaluationCallback(metrics=["fid", "nll_bpd"], num_samples=100, cache_dir=str(tmp_path / "cache"))
    trainer = pl.Trainer(max_epochs=3, logger=CSVLogger(tmp_path), callbacks=[callback], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match=r"val evaluation at epoch 1 refused the samples.*samples of NaNFromEpochOne "
                                         r"\(seed 0\): 200 non-finite values \(NaN or ±inf\) in 50 of 100 samples"):
        trainer.fit(NaNFromEpochOne(), datamodule=data)
    assert trainer.current_epoch == 3  # all epochs trained
    records = [json.loads(line) for line in (Path(trainer.log_dir) / "evaluation.jsonl").read_text().splitlines()]
    fid = [(r["epoch"], r["value"]) for r in records if r["name"] == "fid_fmnist_clf"]
    assert fid[0][1] > 0 and fid[1:] == [(1, None), (2, None)]
    assert all("200 non-finite values" in r["failure"] for r in records if r["value"] is None)
    assert [r["value"] for r in records if r["name"] == "nll_bpd"] == [pytest.approx(8.0)] * 3  # needs no samples
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as handle:
        logged = [float(row["val/fid_fmnist_clf"]) for row in csv.DictReader(handle) if row["val/fid_fmnist_clf"]]
    assert logged[0] > 0 and all(math.isnan(v) for v in logged[1:]) and len(logged) == 3  # compare: diverged
