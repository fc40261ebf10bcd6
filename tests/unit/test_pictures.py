"""Picture logging: PNG files always, and each logger's own image call where it has one."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from PIL import Image

from lightning_gen.callbacks import PictureLogger
from lightning_gen.models import GAN, VAE
from tests.support.contract import fake_image_batches
from tests.support.stand_ins import SampleOnlyModel


class RecordingImageLogger(Logger):
    """A logger with a W&B-style ``log_image(key, images, step)``."""

    def __init__(self):
        super().__init__()
        self.images: dict[str, list] = {}
        self.metric_steps: dict[int, set[str]] = {}

    name = "recording"
    version = 0

    def log_image(self, key, images, step=None, **kwargs):
        self.images.setdefault(key, []).append((step, images))

    def log_metrics(self, metrics, step=None):
        self.metric_steps.setdefault(step, set()).update(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _fit_with_pictures(tmp_path: Path, model, loggers, max_epochs: int = 2,
                       **picture_kwargs) -> tuple[PictureLogger, pl.Trainer]:
    pictures = PictureLogger(**picture_kwargs)
    trainer = pl.Trainer(max_epochs=max_epochs, logger=loggers, callbacks=[pictures], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    loader = fake_image_batches(model.data_shape, n=32, batch_size=16)
    trainer.fit(model, loader, loader)
    return pictures, trainer


def _tile(png: Path, row: int, col: int, size: int = 28, padding: int = 2) -> np.ndarray:
    grid = np.asarray(Image.open(png).convert("L"))
    top, left = padding + row * (size + padding), padding + col * (size + padding)
    return grid[top : top + size, left : left + size]


def test_pictures_go_to_png_tensorboard_and_image_loggers(tmp_path):
    model = VAE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32)
    recorder = RecordingImageLogger()
    loggers = [CSVLogger(tmp_path, name="run"), TensorBoardLogger(tmp_path, name="tb"), recorder]
    pictures, trainer = _fit_with_pictures(tmp_path, model, loggers, num_samples=16, num_reconstructions=4,
                                           num_interpolations=2, interpolation_steps=5)
    run_images = Path(trainer.log_dir) / "images"
    names = {p.name for p in run_images.glob("*.png")}
    kinds = ("interpolations", "reconstructions", "samples")
    assert names == {f"val_{kind}_epoch{epoch:04d}.png" for epoch in (0, 1) for kind in kinds}
    assert set(recorder.images) == {"val/samples", "val/reconstructions", "val/interpolations"}
    assert len(recorder.images["val/samples"]) == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = (tmp_path / "tb").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"val/samples", "val/reconstructions", "val/interpolations"}


def test_reconstruction_grid_shows_inputs_above_outputs_and_interpolations_end_on_the_inputs(tmp_path):
    torch.manual_seed(0)
    model = VAE(data_shape=(1, 28, 28), latent_dim=4, channels=8, hidden=32)
    pictures, trainer = _fit_with_pictures(tmp_path, model, [CSVLogger(tmp_path)], num_samples=0,
                                           num_reconstructions=4, num_interpolations=2, interpolation_steps=5)
    held_out = pictures._held_out  # the first validation images, as the model received them
    images = Path(trainer.log_dir) / "images"
    expected = lambda i: (held_out[i, 0] * 255).round().numpy().astype(np.uint8)  # noqa: E731
    recon = images / "val_reconstructions_epoch0001.png"
    for i in range(4):
        assert np.array_equal(_tile(recon, 0, i), expected(i))  # top row: the inputs
    with torch.no_grad():
        model.eval()
        decoded = model.decode(model.encode(held_out[:4]))
    for i in range(4):
        assert np.abs(_tile(recon, 1, i).astype(int) - (decoded[i, 0] * 255).round().numpy()).max() <= 1
    interp = images / "val_interpolations_epoch0001.png"
    for pair in range(2):
        assert np.array_equal(_tile(interp, pair, 0), expected(pair))
        assert np.array_equal(_tile(interp, pair, 6), expected(2 + pair))  # 5 steps between the two inputs
    assert not (images / "val_samples_epoch0001.png").exists()  # num_samples=0 turns samples off


def test_a_model_without_encode_gets_only_samples(tmp_path):
    pictures, trainer = _fit_with_pictures(tmp_path, SampleOnlyModel(), [CSVLogger(tmp_path)])
    assert sorted(p.name for p in pictures.written) == ["val_samples_epoch0000.png", "val_samples_epoch0001.png"]


def test_every_n_epochs_is_respected(tmp_path):
    pictures, _ = _fit_with_pictures(tmp_path, SampleOnlyModel(), [CSVLogger(tmp_path)], every_n_epochs=2)
    assert [p.name for p in pictures.written] == ["val_samples_epoch0001.png"]


def test_the_last_epoch_gets_pictures_whatever_the_cadence(tmp_path):
    pictures, _ = _fit_with_pictures(tmp_path, SampleOnlyModel(), [CSVLogger(tmp_path)], max_epochs=5,
                                     every_n_epochs=3)
    assert [p.name for p in pictures.written] == ["val_samples_epoch0002.png", "val_samples_epoch0004.png"]


def test_pictures_share_the_x_position_of_the_scalars_when_global_step_runs_ahead(tmp_path):
    # a GAN steps two optimizers per batch: global_step is twice the batch count that scalars are logged at
    model = GAN(data_shape=(1, 28, 28), latent_dim=8, width=8)
    recorder = RecordingImageLogger()
    pictures, trainer = _fit_with_pictures(tmp_path, model, [recorder], num_samples=4)
    assert trainer.global_step == 2 * 2 * 2  # 2 epochs x 2 batches x (D + G)
    picture_steps = [step for step, _ in recorder.images["val/samples"]]
    validation_steps = sorted(step for step, names in recorder.metric_steps.items() if "val/value" in names)
    assert picture_steps == validation_steps == [1, 3]  # global_step was 4 and 8 there
