"""`python -m lightning_gen compare`: four model families side by side, checked in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CONFIGS

from lightning_gen.cli import main

CHECKPOINT_ONLY = '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]'
FAMILIES = {  # config -> budget-only overrides
    "ae_fmnist": [],
    "vae_fmnist": ["--model.init_args.test_importance_samples", "8"],
    "gan_fmnist": [],
    "pixelcnn_fmnist": ["--model.init_args.hidden", "12", "--model.init_args.layers", "2"],
}


def _fit(root: Path, config: str, subset: int, extra: list[str]) -> Path:
    main(["fit", "--config", str(CONFIGS / f"{config}.yaml"), "--data.init_args.subset", str(subset),
          "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(root / "runs"),
          "--trainer.logger.init_args.save_dir", str(root / "runs"), "--trainer.callbacks", CHECKPOINT_ONLY, *extra])
    return max((root / "runs" / config).glob("version_*"))


# session scope: under `make test`'s workers, spread tests of other modules can run between this module's
# tests, and a module-scoped fixture is torn down at each switch (the suite built this one twice: 99 s and 123 s)
@pytest.fixture(scope="session")
def compared(tmp_path_factory, fmnist_dir):
    root = tmp_path_factory.mktemp("compare")
    runs = [_fit(root, config, 400, extra) for config, extra in FAMILIES.items()]
    out = root / "report"
    # sampling speed at batches 1 and 8: at 64 the PixelCNN's reference sampler took ~40 s of this fixture
    main(["compare", *map(str, runs), "--out", str(out), "--num_samples", "200", "--max_real", "200",
          "--speed_batch", "8"])
    return root, runs, out


def test_table_has_every_run_with_the_metrics_its_model_supports(compared):
    _, runs, out = compared
    compared = json.loads((out / "comparison.json").read_text())
    records = {Path(r["folder"]).parent.name: r for r in compared["runs"]}
    assert compared["groups"] == []  # one run of each config: no seed group
    assert list(records) == list(FAMILIES)
    names = {family: {m["name"] for m in r["results"] + r["latent_holes"]} for family, r in records.items()}
    sample_metrics = {"fid_fmnist_clf", "kid_fmnist_clf", "precision_fmnist_clf", "recall_fmnist_clf",
                      "hf_energy_ratio"}
    holes = {"prior_fid_fmnist_clf", "midpoint_fid_fmnist_clf"}
    assert names["ae_fmnist"] == sample_metrics | holes  # an AE has no likelihood
    assert names["vae_fmnist"] == sample_metrics | holes | {"nll_bpd"}
    assert names["gan_fmnist"] == sample_metrics  # implicit density, no encoder
    assert names["pixelcnn_fmnist"] == sample_metrics | {"nll_bpd"}
    estimators = {f: next(m["protocol"]["estimator"] for m in r["results"] if m["name"] == "nll_bpd")
                  for f, r in records.items() if "nll_bpd" in names[f]}
    assert estimators == {"vae_fmnist": "IWAE bound", "pixelcnn_fmnist": "exact autoregressive likelihood"}
    for record in records.values():
        assert record["parameters"] > 0 and record["samples_per_second"] > 0 and record["fit_seconds"] > 0
        assert record["samples_per_second"] == record["sampling"]["batch 8"]  # the table's rate: --speed_batch
        assert "val/fid_fmnist_clf" not in record["curves"]  # this budget-only run had no evaluation callback
    assert records["vae_fmnist"]["curves"]["val/elbo"][0][0] == 0  # (epoch, value) pairs from metrics.csv
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(FAMILIES) and all(f"{family}/version_0" in "".join(table) for family in FAMILIES)
    # what each model can do, read from its surface
    likelihoods = {family: r["capabilities"]["likelihood"] for family, r in records.items()}
    assert likelihoods == {"ae_fmnist": "none (implicit density)", "vae_fmnist": "explicit: IWAE bound",
                           "gan_fmnist": "none (implicit density)",
                           "pixelcnn_fmnist": "explicit: exact autoregressive likelihood"}
    assert [f for f, r in records.items() if r["capabilities"]["encoder"] == "yes"] == ["ae_fmnist", "vae_fmnist"]
    assert set(records["pixelcnn_fmnist"]["sampling"]) == {"batch 1", "batch 8", "batch 1, reference sampler",
                                                         "batch 8, reference sampler"}
    assert set(records["gan_fmnist"]["sampling"]) == {"batch 1", "batch 8"}
    claims = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("- ")]
    assert len(claims) == 4 and "implicit density and only generates" in claims[1]
    assert claims[1].split(": ")[1] == "confirmed"  # a fact of the four models' surfaces
    assert claims[3].endswith("not measured (needs seed groups of a VAE and a GAN: several seeds of each config)")
    assert compared["claims"] == [line[2:] for line in claims]


def test_runs_measured_on_other_data_are_refused(compared, capsys):
    root, runs, _ = compared
    other = _fit(root, "ae_fmnist", 300, [])  # its checkpoint records subset 300: other real images
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(runs[0]), str(other), "--out", str(root / "refused"), "--num_samples", "50",
              "--max_real", "50", "--metrics", "fid", "--no_latent_holes"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "different protocols" in message and "real_selection" in message
    assert not (root / "refused" / "report.html").exists()


def test_missing_run_is_one_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tmp_path / "runs" / "nothing")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_a_speed_batch_below_one_is_refused_before_any_run_is_loaded(compared, capsys):
    root, runs, _ = compared
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(runs[0]), "--out", str(root / "no_speed"), "--speed_batch", "0"])
    assert exit_info.value.code == 2 and "speed_batch must be at least 1, got 0" in capsys.readouterr().err
    assert not (root / "no_speed").exists()


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium is expected (installed by `make install`)"
    return browser


def test_report_loads_in_a_headless_browser_with_every_row_and_image(compared):
    _, _, out = compared
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", (out / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    rows = re.findall(r"<tr class=\"run\" data-run=\"([^\"]+)\"", dom)
    assert rows == [f"{family}/version_0" for family in FAMILIES]
    total = int(re.search(r'data-images-total="(\d+)"', dom)[1])
    broken = int(re.search(r'data-images-broken="(\d+)"', dom)[1])
    # learning curves + power spectra + AE: samples, reconstructions, interpolations + VAE: the same and its
    # prior samples + GAN and PixelCNN: samples
    assert (total, broken) == (1 + 1 + 3 + 4 + 1 + 1, 0)
