"""EvaluationCallback logs the registry's metrics the same way for every model."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_gen.callbacks import EvaluationCallback
from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.errors import ConfigValueError
from lightning_gen.metrics import MetricError
from lightning_gen.models import VAE
from tests.support.stand_ins import SampleOnlyModel


def _trainer(tmp_path, callback, **kwargs):
    return pl.Trainer(max_epochs=2, logger=CSVLogger(tmp_path), callbacks=[callback], enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_vae_gets_sample_and_likelihood_metrics_with_protocols(fmnist_dir, tmp_path):
    pl.seed_everything(0)
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=1200, batch_size=64)
    model = VAE(data_shape=(1, 28, 28), latent_dim=8, channels=8, hidden=64, test_importance_samples=4)
    callback = EvaluationCallback(metrics=["fid", "kid", "precision_recall", "nll_bpd", "elbo"], num_samples=300,
                                  cache_dir=str(tmp_path / "cache"), every_n_epochs=1)
    trainer = _trainer(tmp_path, callback)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    for name in ("fid_fmnist_clf", "kid_fmnist_clf", "precision_fmnist_clf", "recall_fmnist_clf", "nll_bpd", "elbo"):
        assert f"val/{name}" in metrics
    assert 0 <= float(metrics["val/precision_fmnist_clf"]) <= 1 and float(metrics["val/fid_fmnist_clf"]) > 0
    assert 0 < float(metrics["val/nll_bpd"]) < 8
    records = [json.loads(line) for line in (Path(trainer.log_dir) / "evaluation.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records].count(0) == 6 and [r["epoch"] for r in records].count(1) == 6
    fid = next(r for r in records if r["name"] == "fid_fmnist_clf")
    assert fid["protocol"]["real_split"] == "val" and fid["protocol"]["num_generated"] == 300
    assert fid["protocol"]["num_real"] == 120 and len(fid["protocol"]["weights_sha256"]) == 64
    assert callback.seconds_spent > 0


def test_testing_evaluates_against_the_test_split_under_test_names(fmnist_dir, tmp_path):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=100, batch_size=100)
    model = VAE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32, test_importance_samples=2)
    callback = EvaluationCallback(metrics=["fid", "nll_bpd"], num_samples=50, real_split="val",
                                  cache_dir=str(tmp_path / "cache"))
    trainer = _trainer(tmp_path, callback)
    (results,) = trainer.test(model, datamodule=data, verbose=False)
    assert {"test/fid_fmnist_clf", "test/nll_bpd"} <= set(results)
    assert not any(key.startswith("val/") for key in trainer.callback_metrics)
    records = [json.loads(line) for line in (Path(trainer.log_dir) / "evaluation.jsonl").read_text().splitlines()]
    by_name = {r["name"]: r for r in records}
    assert {r["stage"] for r in records} == {"test"}
    # real_split chooses the real images of validation only: test compares with the (100) test images
    assert by_name["fid_fmnist_clf"]["protocol"]["real_split"] == "test"
    assert by_name["fid_fmnist_clf"]["protocol"]["num_real"] == 100
    assert by_name["nll_bpd"]["protocol"]["split"] == "test" and by_name["nll_bpd"]["protocol"]["num_images"] == 100
    assert callback.seconds_spent == 0  # the share of fit time counts validation only


def test_a_model_without_likelihood_is_refused_before_training(tmp_path, fmnist_dir):
    callback = EvaluationCallback(metrics=["fid", "nll_bpd"], num_samples=10)
    trainer = _trainer(tmp_path, callback)
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=64, batch_size=16)
    with pytest.raises(MetricError, match="nll_bpd needs an explicit likelihood"):
        trainer.fit(SampleOnlyModel(), datamodule=data)
    assert trainer.global_step == 0


def test_unknown_metric_names_fail_at_construction():
    with pytest.raises(MetricError, match="fidd"):
        EvaluationCallback(metrics=["fidd"])


def test_kid_subsets_reach_the_protocol_and_nonsense_is_refused(fmnist_dir, tmp_path):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=100, batch_size=100)
    model = VAE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32)
    callback = EvaluationCallback(metrics=["kid"], num_samples=50, kid_subsets=7, cache_dir=str(tmp_path / "cache"))
    trainer = _trainer(tmp_path, callback)
    trainer.test(model, datamodule=data, verbose=False)
    (record,) = [json.loads(line) for line in (Path(trainer.log_dir) / "evaluation.jsonl").read_text().splitlines()]
    assert record["name"] == "kid_fmnist_clf" and record["protocol"]["kid_subsets"] == 7
    with pytest.raises(ConfigValueError, match="kid_subsets must be at least 1, got 0"):
        EvaluationCallback(metrics=["kid"], kid_subsets=0)


def test_training_is_identical_with_and_without_evaluation(fmnist_dir, tmp_path):
    """Evaluation uses its own generators and restores the global RNG, so it never changes training."""
    import torch

    def train(with_evaluation: bool):
        pl.seed_everything(0)
        data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=400, batch_size=50)
        model = VAE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32, val_importance_samples=1)
        callbacks = [EvaluationCallback(num_samples=100, cache_dir=str(tmp_path / "cache"))] if with_evaluation else []
        trainer = pl.Trainer(max_epochs=2, logger=False, default_root_dir=tmp_path, callbacks=callbacks,
                             enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                             num_sanity_val_steps=0)
        trainer.fit(model, datamodule=data)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(train(with_evaluation=True), train(with_evaluation=False))


def test_every_evaluation_takes_the_one_settings_type_and_the_callback_refuses_a_second_split(capsys):
    from dataclasses import fields

    from lightning_gen.cli import main
    from lightning_gen.metrics.registry import EvaluationSettings

    # `evaluate` has one option per field of EvaluationSettings (progress follows the Trainer's bar), with its
    # defaults: a field added to the type is an option without another signature to edit
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    shown = capsys.readouterr().out
    for field in fields(EvaluationSettings):
        assert (f"--{field.name} " in shown) == (field.name != "progress"), field.name
    callback = EvaluationCallback(num_samples=70, kid_subsets=3)
    assert (callback.settings.num_samples, callback.settings.kid_subsets, callback.settings.split) == (70, 3, "val")
    assert callback.settings.batch_size == EvaluationSettings().batch_size
    with pytest.raises(ConfigValueError, match="real_split"):
        EvaluationCallback(split="test")
    with pytest.raises(MetricError, match="unknown metric"):
        EvaluationCallback(metrics=["fid", "no_such_metric"])
