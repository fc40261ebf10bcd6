"""compare's seed groups: runs that differ only in their seed are grouped and summarised (mean ± std, failed
share), and the ease-of-training claim is computed from the groups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lightning_gen.cli import main
from lightning_gen.metrics.registry import MetricResult
from lightning_gen.report.claims import claim_summary, ease_of_training
from lightning_gen.report.compare import ComparedRun
from lightning_gen.report.groups import (
    assign_groups,
    failure_of,
    group_key,
    mean_std,
    summarise_groups,
)
from lightning_gen.report.html import render_html, write_report
from tests.support.paths import CONFIGS

FID, RECALL = "fid_fmnist_clf", "recall_fmnist_clf"


def _checkpoint(latent_dim: int = 16, data_dir: str = "/data/a") -> dict:
    return {"lightning_gen_model_class": "lightning_gen.models.VAE",
            "hyper_parameters": {"latent_dim": latent_dim, "_instantiator": "x"},
            "lightning_gen_datamodule": {"class_path": "lightning_gen.data.FashionMNISTDataModule",
                                         "init_args": {"data_dir": data_dir, "batch_size": 64, "num_workers": 0}}}


def _config(seed: int, max_epochs: int = 3, root: str = "runs", lr: float = 1e-3) -> dict:
    # the optimiser is a callable argument: only config.yaml records it, the checkpoint's hyperparameters do not
    return {"seed_everything": seed, "trainer": {"max_epochs": max_epochs, "default_root_dir": root,
                                                 "logger": [{"class_path": "CSVLogger",
                                                             "init_args": {"save_dir": root}}],
                                                 "callbacks": [{"class_path": "ModelCheckpoint"}]},
            "model": {"class_path": "lightning_gen.models.VAE",
                      "init_args": {"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}}}}}


def test_group_key_ignores_the_seed_and_file_locations_but_not_the_recipe():
    base = group_key(_checkpoint(), _config(0))
    assert group_key(_checkpoint(), _config(1)) == base  # another seed
    assert group_key(_checkpoint(data_dir="/elsewhere"), _config(2, root="/tmp/r")) == base  # other folders
    assert group_key(_checkpoint(latent_dim=8), _config(0)) != base  # another hyperparameter
    assert group_key(_checkpoint(), _config(0, lr=2e-3)) != base  # another learning rate
    assert group_key(_checkpoint(), _config(0, max_epochs=5)) != base  # another budget
    with_ema = _config(0)
    with_ema["trainer"]["callbacks"].append({"class_path": "lightning_gen.callbacks.GeneratorEMA"})
    assert group_key(_checkpoint(), with_ema) != base  # another callback class


def _run(label: str, model: str = "VAE", fid: float = 100.0, recall: float = 0.4, key: str = "k",
         seed: int | None = 0, folder: Path | None = None) -> ComparedRun:
    surface = {"likelihood": "none (implicit density)", "encoder": "no (generate only)"} if model == "GAN" else \
        {"likelihood": "explicit: IWAE bound", "encoder": "yes"}
    return ComparedRun(label, Path(f"{label}.ckpt"), folder, f"lightning_gen.models.{model}",
                       results=[MetricResult(FID, fid), MetricResult(RECALL, recall)], seed=seed, group_key=key,
                       capabilities=surface)


def test_runs_of_one_key_are_grouped_and_other_configs_stay_single(tmp_path):
    folders = [tmp_path / "vae_fmnist" / f"version_{i}" for i in range(3)]
    runs = [_run("a", key="vae", seed=0, folder=folders[0]), _run("b", key="vae", seed=1, folder=folders[1]),
            _run("c", key="vae-lr2", seed=0, folder=folders[2]), _run("d", model="GAN", key="gan", seed=0)]
    assign_groups(runs)
    assert [run.group for run in runs] == ["vae_fmnist", "vae_fmnist", None, None]
    (group,) = summarise_groups(runs)
    assert group.runs == ["a", "b"] and group.seeds == [0, 1]


def test_explicit_groups_take_their_runs_out_of_the_automatic_ones(tmp_path):
    runs = [_run("a", key="vae"), _run("b", key="vae"), _run("c", key="vae")]
    assign_groups(runs, {"mine": [Path("a.ckpt"), Path("c.ckpt")]})
    assert [run.group for run in runs] == ["mine", None, "mine"]  # b is left alone: a single run


def test_mean_and_std_over_a_group_are_the_sample_statistics():
    runs = [_run("a", fid=100.0), _run("b", fid=110.0), _run("c", fid=120.0)]
    for run in runs:
        run.group = "g"
    (group,) = summarise_groups(runs)
    assert group.metrics[FID] == {"mean": 110.0, "std": 10.0, "n": 3}  # sqrt(((-10)² + 0 + 10²) / 2)
    assert mean_std([1.0, float("nan"), 3.0]) == {"mean": 2.0, "std": math.sqrt(2.0), "n": 2}
    assert mean_std([5.0]) == {"mean": 5.0, "std": None, "n": 1}


def test_failure_counts_a_nan_run_and_a_collapsed_run_but_not_a_healthy_one(tmp_path):
    nan_folder = tmp_path / "nan" / "version_0"
    nan_folder.mkdir(parents=True)
    (nan_folder / "metrics.csv").write_text("epoch,step,train/loss\n0,10,3.5\n0,20,nan\n")
    healthy_folder = tmp_path / "ok" / "version_0"
    healthy_folder.mkdir(parents=True)
    (healthy_folder / "metrics.csv").write_text("epoch,step,train/loss\n0,10,3.5\n0,20,3.1\n")
    runs = [_run("nan", folder=nan_folder), _run("collapsed", recall=0.05), _run("healthy", folder=healthy_folder),
            _run("nan_fid", fid=float("inf")), _run("stopped")]
    records = {"stopped": {"diverged": "train/loss = nan at epoch 2"}}
    for run in runs:
        run.failure = failure_of(run, records.get(run.label))
        run.group = "g"
    assert runs[0].failure == "diverged: metrics.csv has train/loss = nan"
    assert runs[1].failure.startswith("collapsed: recall_fmnist_clf = 0.050 < 0.15")
    assert runs[2].failure is None
    assert runs[3].failure.startswith("diverged: fid_fmnist_clf = inf")
    assert runs[4].failure.startswith("diverged: stopped on a non-finite loss")
    (group,) = summarise_groups(runs)
    assert set(group.failures) == {"nan", "collapsed", "nan_fid", "stopped"} and group.failed_share == 0.8
    assert group.metrics[FID]["n"] == 4  # the infinite FID is left out of the mean


def _group(model: str, fids: list[float], recalls: list[float]) -> list[ComparedRun]:
    runs = [_run(f"{model.lower()}/version_{i}", model=model, fid=fid, recall=recall, seed=i)
            for i, (fid, recall) in enumerate(zip(fids, recalls))]
    for run in runs:
        run.group, run.failure = model.lower(), failure_of(run)
    return runs


STABLE = ([110.0, 112.0, 114.0], [0.40, 0.41, 0.39])  # CV 0.018, no failure
UNSTABLE = ([90.0, 140.0, 300.0], [0.50, 0.30, 0.05])  # CV 0.621, one collapsed run


def test_ease_of_training_is_confirmed_for_a_stable_vae_and_an_unstable_gan():
    line = ease_of_training(summarise_groups(_group("VAE", *STABLE) + _group("GAN", *UNSTABLE)))
    assert ": confirmed: VAE 0% of 3 runs failed, FID CV 0.018 (vae) vs GAN 33% of 3 runs failed, FID CV 0.621" \
        in line, line


def test_ease_of_training_is_not_confirmed_when_the_vae_is_the_unstable_one():
    line = ease_of_training(summarise_groups(_group("VAE", *UNSTABLE) + _group("GAN", *STABLE)))
    assert ": not confirmed: VAE 33% of 3 runs failed" in line, line


def test_ease_of_training_is_not_measured_without_groups():
    runs = [_run("vae/version_0"), _run("gan/version_0", model="GAN")]
    assert claim_summary(runs)[-1].endswith("not measured (needs seed groups of a VAE and a GAN: several seeds "
                                            "of each config)")


def test_report_shows_mean_std_and_failed_share(tmp_path):
    runs = _group("VAE", *STABLE) + _group("GAN", *UNSTABLE) + [_run("ae/version_0", model="AE", fid=150.0)]
    out = write_report(runs, tmp_path / "report")
    markdown = (out / "report.md").read_text()
    assert "| vae | VAE | 3 | 0, 1, 2 | 0/3 (0%) | **112.000 ± 2.000** |" in markdown
    assert "| gan | GAN | 3 | 0, 1, 2 | 1/3 (33%) | 176.667 ± 109.697 |" in markdown
    assert "- gan/version_2: collapsed: recall_fmnist_clf = 0.050 < 0.15" in markdown
    assert "| ae/version_0 | AE |" in markdown  # a single run keeps its row in the runs' table
    page = render_html(runs)
    assert "<tr class='group' data-group='gan'>" in page and "<td>1/3 (33%)</td>" in page
    assert "<td class='best'><b>112.000 ± 2.000</b></td>" in page
    summary = json.loads((out / "comparison.json").read_text())
    gan = next(group for group in summary["groups"] if group["name"] == "gan")
    assert gan["failed_share"] == pytest.approx(1 / 3) and gan["metrics"][FID]["n"] == 3
    assert len(summary["runs"]) == 7 and summary["claims"][-1] == claim_summary(runs)[-1]


def _fit(root: Path, seed: int, extra: list[str]) -> Path:
    main(["fit", "--config", str(CONFIGS / "ae_fmnist.yaml"), "--data.init_args.subset", "128",
          "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
          "--trainer.callbacks", '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
          '"init_args": {"save_last": true}}]', "--seed_everything", str(seed), *extra])
    return max((root / "ae_fmnist").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def test_compare_groups_real_runs_by_seed_and_by_hand(tmp_path, fmnist_dir):
    runs = [_fit(tmp_path / "runs", 0, []), _fit(tmp_path / "runs", 1, []),
            _fit(tmp_path / "runs", 0, ["--model.init_args.optimizer.init_args.lr", "0.004"])]
    out = tmp_path / "report"
    main(["compare", *map(str, runs), "--out", str(out), "--metrics", "fid", "--num_samples", "40",
          "--max_real", "40", "--no_latent_holes", "--device", "cpu"])
    (group,) = json.loads((out / "comparison.json").read_text())["groups"]
    assert group["name"] == "ae_fmnist" and group["seeds"] == [0, 1]
    assert group["runs"] == ["ae_fmnist/version_0", "ae_fmnist/version_1"]  # another learning rate: another recipe
    fids = [r["results"][0]["value"] for r in json.loads((out / "comparison.json").read_text())["runs"][:2]]
    assert group["metrics"]["fid_fmnist_clf"]["mean"] == pytest.approx(sum(fids) / 2)
    main(["compare", "--group", f"mixed={runs[0]},{runs[2]}", "--out", str(out), "--metrics", "fid",
          "--num_samples", "40", "--max_real", "40", "--no_latent_holes", "--device", "cpu"])
    (group,) = json.loads((out / "comparison.json").read_text())["groups"]
    assert group["name"] == "mixed" and group["runs"] == ["ae_fmnist/version_0", "ae_fmnist/version_2"]
