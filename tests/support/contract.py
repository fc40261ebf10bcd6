"""The contract every lightning-gen model meets. Each model's test module subclasses
``GenerativeModelContract`` and supplies ``make_model``; nothing here knows which model it tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from lightning_gen.cli import main
from lightning_gen.errors import CheckpointError
from lightning_gen.metrics.registry import SAMPLE_METRICS
from lightning_gen.models.base import GenerativeModule, has_surface
from tests.support.paths import CONFIGS


def fake_image_batches(shape, n: int = 32, batch_size: int = 16) -> DataLoader:
    images = torch.randint(0, 256, (n, *shape)).float() / 255
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)


def train_briefly(model: pl.LightningModule, root: Path, batches: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=batches,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
    )
    loader = fake_image_batches(model.data_shape)
    trainer.fit(model, loader, loader)
    return trainer


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- every command of the command line on a few batches --------------------------------------------
TEST_IMAGES = 64
# one epoch of two training batches (48 images), one batch of 16 validation and one of 64 test images:
# the commands' wiring is under test. (Sizes, not --trainer.limit_*_batches: the command line turns
# `1` into 1.0, which Lightning reads as "every batch".)
QUICK_RUN = [
    "--data.init_args.subset", str(TEST_IMAGES), "--data.init_args.val_fraction", "0.25",
    "--data.init_args.batch_size", "32", "--data.init_args.eval_batch_size", str(TEST_IMAGES),
    "--trainer.max_epochs", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]


def quick_config(name: str, folder: Path) -> Path:
    """``configs/<name>`` with every callback due after the one epoch, the evaluation callback cut to its
    first metric on 16 samples, and pictures without samples (a PixelCNN draws them pixel by pixel: the
    evaluation's are enough)."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    for callback in config["trainer"].get("callbacks") or []:
        init_args = callback.setdefault("init_args", {})
        if "every_n_epochs" in init_args:
            init_args["every_n_epochs"] = 1
        if callback["class_path"].endswith("EvaluationCallback"):
            metrics = init_args.get("metrics", list(SAMPLE_METRICS))[:1]
            init_args.update(metrics=metrics, num_samples=16, batch_size=16, max_real=TEST_IMAGES)
        if callback["class_path"].endswith("PictureLogger"):
            init_args["num_samples"] = 0
    path = folder / f"quick_{Path(name).name}"  # name: a file of configs/ or a path
    path.write_text(yaml.safe_dump(config))
    return path


def model_options(model: GenerativeModule) -> list[str]:
    """``--model.init_args.NAME VALUE`` for each of ``model``'s hyperparameters, except the data shape
    (the data's, linked by the CLI)."""
    return [arg for name, value in model.hparams.items() if name != "data_shape"
            for arg in (f"--model.init_args.{name}", value if isinstance(value, str) else json.dumps(value))]


def summary_metrics(printed: str) -> dict[str, float]:
    """The ``val/`` and ``test/`` metrics of the closing summary a command prints."""
    summary = printed[printed.rindex("final metrics"):]
    return {key: float(value) for key, value in re.findall(r"^  ((?:val|test)/\S+) +(\S+)$", summary, re.M)}


def run_command(capsys, *args: str) -> str:
    """``python -m lightning_gen ARGS`` in this process; what it printed."""
    capsys.readouterr()
    main(list(args))
    return capsys.readouterr().out


def with_prefix(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key.startswith(prefix)}


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models on a shared 2-core machine: per-op threading overhead dominates (a PixelCNN's pixel
    by pixel sampling ran 4x slower with two threads under load), so these runs use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_every_command(folder: Path, monkeypatch, capsys, config: str, options: list[str],
                        test_metrics: tuple[str, ...], predictions: tuple[str, ...]) -> None:
    """``fit --test_after_fit true``, then ``test``, ``validate`` and ``predict`` of its last checkpoint.

    ``test_metrics``: keys that ``test`` must report; ``predictions``: keys of predictions.pt, or ``()``
    for a model that refuses ``predict`` with a message naming ``sample``.
    """
    monkeypatch.setenv("LIGHTNING_GEN_CACHE", str(folder / "cache"))  # real-image features of this run only
    arguments = ["--config", str(quick_config(config, folder)), *QUICK_RUN, *options]
    with one_torch_thread():
        fitted = summary_metrics(run_command(capsys, "fit", *arguments, "--test_after_fit", "true"))
        (ckpt,) = folder.glob("runs/*/version_0/checkpoints/last.ckpt")
        tested = summary_metrics(run_command(capsys, "test", *arguments, "--ckpt_path", str(ckpt)))
        validated = summary_metrics(run_command(capsys, "validate", *arguments, "--ckpt_path", str(ckpt)))
        if predictions:
            run_command(capsys, "predict", *arguments, "--ckpt_path", str(ckpt))
        else:
            with pytest.raises(SystemExit) as refused:
                run_command(capsys, "predict", *arguments, "--ckpt_path", str(ckpt))

    validated_in_fit, tested_in_fit = with_prefix(fitted, "val/"), with_prefix(fitted, "test/")
    assert set(test_metrics) <= set(tested_in_fit), tested_in_fit
    # the same model scored on two splits: every validation number (the model's and the evaluation
    # callback's) has its test counterpart
    assert {key.replace("val/", "test/", 1) for key in validated_in_fit} <= set(tested_in_fit), fitted
    assert all(math.isfinite(value) for value in fitted.values()), fitted
    # one epoch: the checkpoint `fit` tested holds the weights of last.ckpt, and held-out noise is seeded
    assert tested == tested_in_fit
    # not equal numbers: the weights `fit` validated need not be the ones saved (the AE refits its code
    # Gaussian after validation, at the end of the epoch)
    assert set(validated) == set(validated_in_fit) and all(math.isfinite(v) for v in validated.values()), validated
    if predictions:
        (path,) = folder.glob("runs/*/version_*/predictions.pt")
        predicted = torch.load(path, weights_only=True)
        assert set(predicted) == set(predictions)
        assert all(len(value) == TEST_IMAGES and torch.isfinite(value).all() for value in predicted.values())
    else:
        error = capsys.readouterr().err
        assert refused.value.code == 2
        assert "lightning-gen: error:" in error and "python -m lightning_gen sample" in error


class GenerativeModelContract:
    """Subclasses set ``make_model`` (a fresh, small model), ``other_model_class`` (a different model
    class, whose checkpoints this model must refuse), and for the command-line test: ``config`` (a file
    in configs/ whose data and callbacks the commands run, with ``make_model``'s hyperparameters),
    ``test_metrics`` (keys `test` must report) and ``predictions`` (keys of predictions.pt, or ``()``
    where ``predict`` is refused with a pointer to ``sample``)."""

    def make_model(self) -> GenerativeModule:
        raise NotImplementedError

    other_model_class: type[GenerativeModule]
    config: str
    test_metrics: tuple[str, ...]
    predictions: tuple[str, ...]

    def test_fit_test_validate_and_predict_through_the_command_line(self, in_tmp_dir, monkeypatch, capsys):
        check_every_command(in_tmp_dir, monkeypatch, capsys, self.config, model_options(self.make_model()),
                            self.test_metrics, self.predictions)

    def test_samples_have_the_data_shape_and_pixel_range(self):
        model = self.make_model().eval()
        with torch.no_grad():
            images = model.sample(5, generator=torch.Generator().manual_seed(0))
        assert images.shape == (5, *model.data_shape)
        assert images.min() >= 0 and images.max() <= 1 and torch.isfinite(images).all()

    def test_samples_repeat_for_the_same_generator_and_differ_for_another(self):
        model = self.make_model().eval()
        with torch.no_grad():
            first = model.sample(4, generator=torch.Generator().manual_seed(7))
            again = model.sample(4, generator=torch.Generator().manual_seed(7))
            other = model.sample(4, generator=torch.Generator().manual_seed(8))
        assert torch.equal(first, again)
        assert not torch.equal(first, other)

    def test_log_likelihood_is_finite_and_negative_where_defined(self):
        model = self.make_model().eval()
        if not has_surface(model, "log_likelihood"):
            return  # an implicit model: nothing to check, and the surface says so
        x = torch.randint(0, 256, (3, *model.data_shape)).float() / 255
        x = model.prepare_input(x)
        log_p = model.log_likelihood(x)
        assert log_p.shape == (3,) and torch.isfinite(log_p).all() and (log_p < 0).all()

    def test_checkpoint_round_trip_gives_bit_identical_samples(self, tmp_path):
        model = self.make_model()
        trainer = train_briefly(model, tmp_path)
        path = tmp_path / "model.ckpt"
        trainer.save_checkpoint(path)
        restored = type(model).load_checkpoint(path)
        model.eval(), restored.eval()
        with torch.no_grad():
            expected = model.sample(6, generator=torch.Generator().manual_seed(3))
            actual = restored.sample(6, generator=torch.Generator().manual_seed(3))
        assert torch.equal(expected, actual)

    def test_checkpoint_of_another_model_is_refused_and_left_intact(self, tmp_path):
        model = self.make_model()
        trainer = train_briefly(model, tmp_path)
        path = tmp_path / "model.ckpt"
        trainer.save_checkpoint(path)
        before = file_digests(tmp_path)
        with pytest.raises(CheckpointError) as error:
            self.other_model_class.load_checkpoint(path)
        assert type(model).__name__ in str(error.value) and self.other_model_class.__name__ in str(error.value)
        assert file_digests(tmp_path) == before

    def test_corrupt_checkpoint_is_a_clear_error(self, tmp_path):
        path = tmp_path / "broken.ckpt"
        path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
        with pytest.raises(CheckpointError, match="broken.ckpt.*corrupt"):
            type(self.make_model()).load_checkpoint(path)
        with pytest.raises(CheckpointError, match="does not exist"):
            type(self.make_model()).load_checkpoint(tmp_path / "missing.ckpt")
