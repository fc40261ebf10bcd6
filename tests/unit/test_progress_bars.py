"""Progress bars obey one switch, the Trainer's: ``--trainer.enable_progress_bar false`` silences ``sample``
and ``evaluate``, and bars drawn during ``fit`` (evaluation callbacks) appear only under Lightning's tqdm
bar, never inside a Rich progress bar's live display."""

from __future__ import annotations

import io
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import yaml
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

import lightning_gen.callbacks.evaluation as evaluation
from lightning_gen.callbacks import EvaluationCallback
from lightning_gen.callbacks.progress import LogFileProgressBar, inner_progress_enabled, progress_enabled
from lightning_gen.cli import main
from lightning_gen.trainer import LightningGenTrainer
from tests.support.contract import QUICK_RUN, one_torch_thread
from tests.support.paths import CONFIGS

BAR = ("%|", "it/s", "s/it")  # what every tqdm line holds: the bar's edge and the rate


def drawn_bars(stderr: str) -> list[str]:
    return [marker for marker in BAR if marker in stderr]


def bar_option(enabled: bool) -> list[str]:
    """The control keeps the default (bars on); the other run turns the Trainer's bar off."""
    return [] if enabled else ["--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def pixelcnn_checkpoint(tmp_path_factory, fmnist_dir):
    """A tiny PixelCNN fitted for one epoch on 48 images through the CLI, without pictures or evaluation:
    a model whose `sample` draws an inner bar (row by row) and that has a likelihood to `evaluate`."""
    folder = tmp_path_factory.mktemp("progress_bars")
    config = yaml.safe_load((CONFIGS / "pixelcnn_fmnist.yaml").read_text())
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]  # the ModelCheckpoint only
    (folder / "pixelcnn_tiny.yaml").write_text(yaml.safe_dump(config))
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("LIGHTNING_GEN_DATA", raising=False)
    try:
        with one_torch_thread():
            main(["fit", "--config", "pixelcnn_tiny.yaml", *QUICK_RUN,
                  "--model.init_args.hidden", "8", "--model.init_args.layers", "2"])
    finally:
        monkeypatch.undo()
    (ckpt,) = folder.glob("runs/pixelcnn_fmnist/version_0/checkpoints/last.ckpt")
    return ckpt


def _run(capsys, tmp_path, *args: str) -> str:
    capsys.readouterr()
    with one_torch_thread():
        main(list(args))
    return capsys.readouterr().err


@pytest.mark.parametrize("enabled", [False, True], ids=["bar_off", "bar_on"])
def test_sample_draws_bars_only_with_the_trainers_progress_bar(pixelcnn_checkpoint, capsys, tmp_path, enabled):
    err = _run(capsys, tmp_path, "sample", "--ckpt_path", str(pixelcnn_checkpoint), "--num_samples", "4",
               "--out", str(tmp_path / "samples"), *bar_option(enabled))
    assert (tmp_path / "samples" / "samples.npz").is_file()
    if enabled:  # the control: the outer bar and the PixelCNN's own row-by-row bar inside it
        assert drawn_bars(err) and "sampling:" in err and "sampling rows" in err, err[-2000:]
    else:
        assert not drawn_bars(err) and "sampling" not in err, err[-2000:]


@pytest.mark.parametrize("enabled", [False, True], ids=["bar_off", "bar_on"])
def test_evaluate_draws_bars_only_with_the_trainers_progress_bar(pixelcnn_checkpoint, capsys, tmp_path, monkeypatch,
                                                                 enabled):
    monkeypatch.setenv("LIGHTNING_GEN_CACHE", str(tmp_path / "cache"))
    err = _run(capsys, tmp_path, "evaluate", "--ckpt_path", str(pixelcnn_checkpoint), "--metrics", "nll_bpd",
               "--max_real", "16", "--batch_size", "8", *bar_option(enabled))
    if enabled:
        assert drawn_bars(err) and "likelihood on test" in err, err[-2000:]
    else:
        assert not drawn_bars(err) and "likelihood on test" not in err, err[-2000:]


class RichBarWithoutRich(RichProgressBar):
    """Lightning's RichProgressBar as the Trainer sees it, without the `rich` package (not installed here):
    only its constructor, which checks for `rich`, is skipped."""

    def __init__(self):
        ProgressBar.__init__(self)


def test_the_switch_follows_the_trainers_progress_bar():
    quiet = dict(logger=False, enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    tqdm_bar, no_bar = pl.Trainer(**quiet), pl.Trainer(enable_progress_bar=False, **quiet)
    rich_bar = pl.Trainer(callbacks=[RichBarWithoutRich()], **quiet)
    assert isinstance(rich_bar.progress_bar_callback, RichProgressBar)
    assert progress_enabled(tqdm_bar) and not progress_enabled(no_bar)
    # inside fit: nested under Lightning's tqdm bar, never inside Rich's live display
    assert inner_progress_enabled(tqdm_bar)
    assert not inner_progress_enabled(rich_bar) and not inner_progress_enabled(no_bar)


@pytest.mark.parametrize("bar, shown", [("tqdm", True), ("rich", False), ("none", False)])
def test_evaluation_during_fit_draws_bars_only_under_the_tqdm_bar(bar, shown, monkeypatch):
    quiet = dict(logger=False, enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    trainer = {"tqdm": lambda: pl.Trainer(**quiet), "none": lambda: pl.Trainer(enable_progress_bar=False, **quiet),
               "rich": lambda: pl.Trainer(callbacks=[RichBarWithoutRich()], **quiet)}[bar]()
    asked = []

    class Asked(Exception):
        pass

    def record(model, datamodule, settings, device):
        asked.append(settings.progress)
        raise Asked  # stop here: what was asked for is all this test reads

    monkeypatch.setattr(evaluation, "evaluate_model", record)
    callback = EvaluationCallback(metrics=["fid"])
    with pytest.raises(Asked):
        callback._evaluate(trainer, SimpleNamespace(device="cpu"), "val", callback.settings)
    assert asked == [shown]


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("every, frames", [(10.0, 10), (0.0, 100)], ids=["throttled", "control: every batch"])
def test_lightnings_bar_into_a_log_file_redraws_at_most_once_every_few_seconds(every, frames):
    """100 batches a second apart, each followed by Lightning's explicit redraw: a frame every 10 s of the
    fake clock (plus the closing one), against one per batch without the throttle."""
    bar_callback = LogFileProgressBar(every_seconds=every)
    clock = _FakeClock()
    out = io.StringIO()
    bar = bar_callback._throttled(Tqdm(total=100, file=out, mininterval=0))
    bar._time = clock
    for _ in range(100):
        clock.now += 1.0
        bar.n += 1
        bar.refresh()
    bar.close()
    drawn = out.getvalue().count("\r") - 1  # less the closing frame
    assert frames <= drawn <= frames + 1


def test_the_trainer_uses_the_throttled_bar_when_output_is_not_a_terminal(monkeypatch):
    def output(terminal: bool) -> SimpleNamespace:
        return SimpleNamespace(isatty=lambda: terminal, write=len, flush=lambda: None)

    monkeypatch.setattr("sys.stdout", output(terminal=False))
    assert type(LightningGenTrainer(logger=False).progress_bar_callback) is LogFileProgressBar
    monkeypatch.setattr("sys.stdout", output(terminal=True))
    assert type(LightningGenTrainer(logger=False).progress_bar_callback) is not LogFileProgressBar
