"""`python -m lightning_gen compare`: six model families side by side, checked in a real headless browser;
the report's layout, number formats, NFE curve and likelihood table."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_gen.cli import main
from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.errors import LightningGenError
from lightning_gen.metrics.registry import METRICS, EvaluationSettings, MetricResult
from lightning_gen.models import FlowMatching, PixelCNN
from lightning_gen.report.compare import ComparedRun, check_protocols
from lightning_gen.report.groups import assign_groups
from lightning_gen.report.html import html_table, write_report
from lightning_gen.report.nfe_curve import nfe_curve
from lightning_gen.report.numbers import format_rate, format_value, significant
from lightning_gen.report.tables import Table, table_rows
from tests.support.paths import CONFIGS

CHECKPOINT_ONLY = '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]'
FAMILIES = {  # config -> budget-only overrides
    "ae_fmnist": [],
    "vae_fmnist": ["--model.init_args.test_importance_samples", "8"],
    "gan_fmnist": [],
    "pixelcnn_fmnist": ["--model.init_args.hidden", "12", "--model.init_args.layers", "2"],
    "flow_fmnist": ["--model.init_args.steps_per_level", "1", "--model.init_args.hidden", "8"],
    "flow_matching_fmnist": ["--model.init_args.base_width", "8", "--model.init_args.channel_multipliers", "[1, 2]",
                             "--model.init_args.nfe", "4", "--model.init_args.likelihood_nfe", "2",
                             "--model.init_args.hutchinson_probes", "2"],
}
METRIC_NAMES = "fid,kid,precision_recall,density_coverage,sharpness,nll_bpd,elbo"
ESTIMATORS = {  # as each model's likelihood_protocol() names it, written out once more on purpose
    "vae_fmnist": "IWAE bound; k = 8",
    "pixelcnn_fmnist": "exact autoregressive likelihood",
    "flow_fmnist": "exact change of variables",
    "flow_matching_fmnist": "ODE instantaneous change of variables, Hutchinson trace estimator (2 Rademacher probes); "
                            "euler ODE solver, NFE = 2",
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
    # sampling speed at batches 1 and 8 with a 2 s cap per sampler: the PixelCNN's reference sampler took
    # ~20 s of this fixture at batch 8 uncapped; the NFE curve on 50 samples at NFE 1, 2 and the default 4;
    # likelihoods on 100 of the 200 real images
    main(["compare", *map(str, runs), "--out", str(out), "--num_samples", "200", "--max_real", "200",
          "--speed_batch", "8", "--speed_seconds", "2", "--metrics", METRIC_NAMES, "--nfe_samples", "50",
          "--nfe_values", "1,2", "--likelihood_images", "100"])
    return root, runs, out


def _markdown_section(markdown: str, title: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under ``### title``: run -> cells."""
    section = markdown.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows[1:]}


def test_table_has_every_run_with_the_metrics_its_model_supports(compared):
    _, runs, out = compared
    compared = json.loads((out / "comparison.json").read_text())
    records = {Path(r["folder"]).parent.name: r for r in compared["runs"]}
    assert compared["groups"] == []  # one run of each config: no seed group
    assert list(records) == list(FAMILIES)
    names = {family: {m["name"] for m in r["results"] + r["latent_holes"]} for family, r in records.items()}
    sample_metrics = {"fid_fmnist_clf", "kid_fmnist_clf", "precision_fmnist_clf", "recall_fmnist_clf",
                      "density_fmnist_clf", "coverage_fmnist_clf", "hf_energy_ratio"}
    holes = {"prior_fid_fmnist_clf", "midpoint_fid_fmnist_clf"}
    assert names["ae_fmnist"] == sample_metrics | holes  # an AE has no likelihood
    assert names["vae_fmnist"] == sample_metrics | holes | {"nll_bpd", "elbo"}
    assert names["gan_fmnist"] == sample_metrics  # implicit density, no encoder
    assert names["pixelcnn_fmnist"] == sample_metrics | {"nll_bpd"}
    assert names["flow_fmnist"] == sample_metrics | holes | {"nll_bpd"}  # invertible: it encodes and decodes
    assert names["flow_matching_fmnist"] == sample_metrics | {"nll_bpd"}
    for record in records.values():
        assert record["parameters"] > 0 and record["samples_per_second"] > 0 and record["fit_seconds"] > 0
        assert record["samples_per_second"] == record["sampling"]["batch 8"]  # the table's rate: --speed_batch
        assert "val/fid_fmnist_clf" not in record["curves"]  # this budget-only run had no evaluation callback
    assert records["vae_fmnist"]["curves"]["val/elbo"][0][0] == 0  # (epoch, value) pairs from metrics.csv
    markdown = (out / "report.md").read_text()
    quality = _markdown_section(markdown, "Sample quality in fmnist_clf features")
    assert list(quality) == [f"{family}/version_0" for family in FAMILIES]
    # what each model can do and how it samples, read from its surface
    capabilities = {family: r["capabilities"] for family, r in records.items()}
    assert {family: c["likelihood"] for family, c in capabilities.items()} == {
        "ae_fmnist": "none (implicit density)", "vae_fmnist": "explicit: IWAE bound",
        "gan_fmnist": "none (implicit density)", "pixelcnn_fmnist": "explicit: exact autoregressive likelihood",
        "flow_fmnist": "explicit: exact change of variables",
        "flow_matching_fmnist": "explicit: ODE instantaneous change of variables, Hutchinson trace estimator "
                                "(2 Rademacher probes)"}
    assert {family: c["sampling"] for family, c in capabilities.items()} == {
        "ae_fmnist": "one network pass", "vae_fmnist": "one network pass", "gan_fmnist": "one network pass",
        "pixelcnn_fmnist": "one step per pixel and channel group (autoregressive: 784 steps; fast sampler)",
        "flow_fmnist": "one network pass", "flow_matching_fmnist": "ODE: NFE=4 Euler steps"}
    assert [f for f, c in capabilities.items() if c["encoder"] == "yes"] == ["ae_fmnist", "vae_fmnist", "flow_fmnist"]
    assert set(records["pixelcnn_fmnist"]["sampling"]) == {"batch 1", "batch 8", "batch 1, reference sampler",
                                                         "batch 8, reference sampler"}
    assert set(records["gan_fmnist"]["sampling"]) == {"batch 1", "batch 8"}
    assert records["flow_matching_fmnist"]["sampling_protocol"]["nfe"] == 4
    claims = [line[2:] for line in markdown.splitlines() if line.startswith("- ")]
    assert len(claims) == 6 and "implicit density and only generates" in claims[1]
    assert claims[1].split(": ")[1] == "confirmed"  # a fact of the models' surfaces
    assert claims[3].startswith("normalizing flows") and "not measured" not in claims[3]
    assert "Flow explicit: exact change of variables" in claims[3] and " samples/s at batch 8 vs PixelCNN " in claims[3]
    assert claims[4].startswith("flow matching") and " at NFE 1 vs " in claims[4] and " at NFE 4 (" in claims[4]
    assert claims[5].endswith("not measured (needs seed groups of a VAE and a GAN: several seeds of each config)")
    assert compared["claims"] == claims


def test_one_likelihood_table_names_each_runs_estimator(compared):
    """Comparing an ODE estimate with exact likelihoods and bounds passes the protocol check (the estimator's
    entries are model-specific in the registry), and the table says which number is which."""
    _, _, out = compared
    table = _markdown_section((out / "report.md").read_text(), "Likelihood")
    assert list(table) == [f"{family}/version_0" for family in ESTIMATORS]
    for family, estimator in ESTIMATORS.items():
        model, bpd, *rest = table[f"{family}/version_0"]
        error, named, dequantization, images = rest[-4:]
        assert named == estimator and images == "100" and float(bpd.strip("*")) > 0, family
        assert error.startswith("± ") if family == "flow_matching_fmnist" else error == "—", family
    record = next(r for r in json.loads((out / "comparison.json").read_text())["runs"]
                  if "flow_matching" in r["label"])
    protocol = next(m["protocol"] for m in record["results"] if m["name"] == "nll_bpd")
    assert protocol["standard_error_bpd"] > 0 and protocol["likelihood_nfe"] == 2


def test_the_nfe_curve_of_the_flow_matching_run_is_stored_and_drawn(compared):
    _, _, out = compared
    records = {Path(r["folder"]).parent.name: r for r in json.loads((out / "comparison.json").read_text())["runs"]}
    curve = records["flow_matching_fmnist"]["nfe_curve"]
    assert curve["num_samples"] == 50 and curve["default_nfe"] == 4 and curve["solver"] == "euler"
    assert [point["nfe"] for point in curve["points"]] == [1, 2, 4]  # the values asked for, and the default
    assert all(point["fid_fmnist_clf"] > 0 and point["samples_per_second"] > 0 for point in curve["points"])
    assert all(record["nfe_curve"] == {} for family, record in records.items() if family != "flow_matching_fmnist")
    table = _markdown_section((out / "report.md").read_text(), "Sampling steps (NFE)")
    assert list(table) == ["flow_matching_fmnist/version_0"]  # (one key: the run's three rows share it)
    assert "alt=\"FID and samples/s against NFE\"" in (out / "report.html").read_text()


class _Blend(nn.Module):
    """A stand-in for an ODE sampler: training images blended with uniform noise, the images' share
    ``weight(nfe)``; flow matching's samples improve with NFE when ``weight`` grows with it."""

    data_shape = (1, 28, 28)

    def __init__(self, images: torch.Tensor, weight):
        super().__init__()
        self.images, self.weight = images, weight
        self.anchor = nn.Parameter(torch.zeros(()))

    def sample(self, n: int, generator: torch.Generator | None = None, nfe: int = 5) -> torch.Tensor:
        chosen = self.images[torch.randint(len(self.images), (n,), generator=generator)]
        noise = torch.rand(chosen.shape, generator=generator)
        return self.weight(nfe) * chosen + (1 - self.weight(nfe)) * noise

    def sampling_protocol(self) -> dict:
        return {"solver": "blend", "nfe": 5}


def test_the_nfe_curve_falls_for_a_sampler_that_improves_with_steps_and_rises_for_one_that_does_not(
        fmnist_dir, tmp_path):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=600)
    train = data.split_dataloader("train").dataset
    images = torch.stack([train[i][0] for i in range(200)])
    settings = EvaluationSettings(max_real=200, cache_dir=str(tmp_path), progress=False)
    curves = {name: nfe_curve(_Blend(images, weight), data, settings, (1, 20), num_samples=100, device="cpu")
              for name, weight in (("improving", lambda nfe: nfe / (nfe + 1)), ("control", lambda nfe: 1 / (nfe + 1)))}
    for curve in curves.values():
        assert curve["default_nfe"] == 5 and [point["nfe"] for point in curve["points"]] == [1, 5, 20]
    fid = {name: [point["fid_fmnist_clf"] for point in curve["points"]] for name, curve in curves.items()}
    assert fid["improving"][0] > fid["improving"][1] > fid["improving"][2]
    assert fid["control"][0] < fid["control"][1] < fid["control"][2]


def test_flow_matching_and_pixelcnn_likelihoods_pass_the_protocol_check_and_other_splits_do_not():
    matching = FlowMatching(data_shape=(1, 8, 8), base_width=8, channel_multipliers=(1, 2), likelihood_nfe=2,
                            hutchinson_probes=2)
    matching.log_likelihood(torch.rand(4, 1, 8, 8) * 255 / 256)  # gives its protocol a standard error
    pixelcnn = PixelCNN(data_shape=(1, 8, 8), hidden=8, layers=2)

    def run(label, model, split="test"):
        protocol = {"split": split, "num_images": 4, "seed": 0, **model.likelihood_protocol()}
        return ComparedRun(label, Path(f"{label}.ckpt"), None, "x.Model", [MetricResult("nll_bpd", 5.0, protocol)])

    flow_matching = run("flow_matching", matching)
    assert {"solver", "likelihood_nfe", "standard_error_bpd"} <= set(flow_matching.results[0].protocol)
    check_protocols([flow_matching, run("pixelcnn", pixelcnn)])
    with pytest.raises(LightningGenError, match="different protocols .*split"):
        check_protocols([flow_matching, run("pixelcnn", pixelcnn, split="val")])


def test_rates_print_with_significant_digits():
    assert [significant(v, 2) for v in (0.3123, 0.031, 3.04, 745.3, 12_345.6)] == ["0.31", "0.031", "3.0", "745",
                                                                                   "12,346"]
    assert format_rate(0.31) == "0.31" and format_rate(None) == "—"
    assert [format_value(v) for v in (112.0, 0.612, 0.00041, 0.0, 12)] == ["112.000", "0.612", "0.000410", "0.000",
                                                                          "12"]


def test_a_reference_sampler_at_a_third_of_a_sample_per_second_shows_as_such(tmp_path):
    """The PixelCNN's reference sampler at ~0.3 samples/s printed as 0.0 (one decimal); a capped rate says
    from how many images it is."""
    run = ComparedRun("pixelcnn/version_0", Path("x.ckpt"), None, "lightning_gen.models.PixelCNN",
                      sampling={"batch 1": 2.5, "batch 64": 41.0, "batch 1, reference sampler": 0.3123,
                                "batch 64, reference sampler": 0.31},
                      sampling_notes={"batch 64, reference sampler": "rate from 3 images (batch 3): batch 64 would "
                                                                     "pass the 10 s cap"},
                      samples_per_second=41.0)
    out = write_report([run], tmp_path)
    speed = _markdown_section((out / "report.md").read_text(), "Size and speed")["pixelcnn/version_0"]
    assert speed[-4:] == ["2.5", "41", "0.31", "0.31 (rate from 3 images)"]
    page = (out / "report.html").read_text()
    assert "<td>0.31</td>" in page and "<td class='text'>0.31 (rate from 3 images)</td>" in page
    assert "<td>0.0</td>" not in page


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium is expected (installed by `make install`)"
    return browser


def _rendered(page: Path) -> str:
    """The DOM of ``page`` after loading in a 1280 px wide headless browser."""
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
         "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout


def _widths(dom: str) -> dict[str, int]:
    """What the page's script measured: the viewport, the page's scroll width, the widest table's right edge."""
    return {key: int(re.search(rf'data-{key}="(\d+)"', dom)[1]) for key in ("viewport-width", "page-width",
                                                                            "widest-table", "tables")}


def test_report_loads_in_a_headless_browser_with_every_row_and_image_within_its_width(compared):
    _, _, out = compared
    dom = _rendered(out / "report.html")
    quality = dom.split("id=\"quality_fmnist_clf\"", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr class=\"run\" data-run=\"([^\"]+)\"", quality)
    assert rows == [f"{family}/version_0" for family in FAMILIES]
    total = int(re.search(r'data-images-total="(\d+)"', dom)[1])
    broken = int(re.search(r'data-images-broken="(\d+)"', dom)[1])
    # learning curves + power spectra + NFE curve + AE: samples, reconstructions, interpolations + VAE: the
    # same and its prior samples + GAN, PixelCNN: samples + flow: samples, reconstructions, interpolations +
    # flow matching: samples
    assert (total, broken) == (1 + 1 + 1 + 3 + 4 + 1 + 1 + 3 + 1, 0)
    widths = _widths(dom)
    assert widths["page-width"] <= widths["viewport-width"] and widths["widest-table"] <= widths["viewport-width"]


def _many_runs(count: int = 8) -> list[ComparedRun]:
    """``count`` runs with every image metric of the registry, long labels, a likelihood estimator with its
    parameters, two samplers at two batches (one capped) and an NFE curve: the widest report we make."""
    names = [name for spec in METRICS.values() if spec.data == "images" for name in spec.result_names("fmnist_clf")]
    protocol = {"features": "fmnist_clf", "num_generated": 10_000, "num_real": 10_000, "real_split": "test",
                "estimator": "ODE instantaneous change of variables, Hutchinson trace estimator (4 Rademacher probes)",
                "solver": "heun", "likelihood_nfe": 32, "standard_error_bpd": 0.0012,
                "dequantization": "uniform: (k + u) / 256, u ~ U[0, 1), one draw per image, then 2 y - 1"}
    runs = []
    for index in range(count):
        label = f"flow_matching_fmnist_with_a_long_name/version_{index}"
        results = [MetricResult(name, 1234.5678 * (index + 1) if "fid" in name else 0.5 / (index + 1), protocol)
                   for name in names]
        holes = [MetricResult(f"{kind}_fid_fmnist_clf", 1234.5678, protocol) for kind in ("prior", "midpoint")]
        curve = {"metric": "fid_fmnist_clf", "num_samples": 500, "solver": "heun", "default_nfe": 10,
                 "points": [{"nfe": nfe, "fid_fmnist_clf": 100.0 / nfe, "samples_per_second": 1000.0 / nfe,
                             "batch_size": 250} for nfe in (1, 2, 5, 10, 20, 50)]}
        runs.append(ComparedRun(
            label, Path(f"{index}.ckpt"), Path(f"/runs/many/version_{index}"), "lightning_gen.models.FlowMatching",
            results, holes, parameters=12_345_678, fit_seconds=12_345.6, samples_per_second=1234.5,
            sampling={"batch 1": 12.3, "batch 64": 1234.5, "batch 1, reference sampler": 0.31,
                      "batch 64, reference sampler": 0.3},
            sampling_notes={"batch 64, reference sampler": "rate from 3 images (batch 3): batch 64 would pass the "
                                                           "10 s cap"},
            sampling_protocol={"solver": "heun", "nfe": 10, "weights": "EMA", "network_passes_per_evaluation": 1},
            capabilities={"likelihood": f"explicit: {protocol['estimator']}", "encoder": "no (generate only)",
                          "reconstructions": "no", "latent interpolation": "no", "sampling": "ODE: NFE=10 Heun steps"},
            nfe_curve=curve, seed=index % 2, group_key="same recipe" if index < 3 else f"recipe {index}"))
    assign_groups(runs)  # the first three: a seed group, with its own tables
    return runs


def test_eight_runs_with_every_metric_keep_to_a_1280_pixel_page(tmp_path):
    out = write_report(_many_runs(), tmp_path / "many")
    dom = _rendered(out / "report.html")
    widths = _widths(dom)
    assert widths["tables"] >= 10 and "id=\"groups_quality_fmnist_clf\"" in dom
    assert len(re.findall(r"<th>", dom.split("id=\"quality_fmnist_clf\"", 1)[1].split("</table>", 1)[0])) >= 10
    assert widths["page-width"] <= widths["viewport-width"] and widths["widest-table"] <= widths["viewport-width"]
    # the control: the same page with the one-table view (every metric a column, the layout before) added
    one_table = Table("wide", "Metrics", "", *table_rows(_many_runs()))
    wide = tmp_path / "wide.html"
    wide.write_text((out / "report.html").read_text().replace("<h1>", "\n".join(html_table(one_table)) + "<h1>", 1))
    widths = _widths(_rendered(wide))
    assert widths["widest-table"] > widths["viewport-width"] and widths["page-width"] > widths["viewport-width"]


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
