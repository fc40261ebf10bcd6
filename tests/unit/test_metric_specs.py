"""The metric registry is one table of specs: evaluation dispatches through it, and the report, the
protocol check and the dashboard read directions, model-specific protocol entries and default keys
from it (a spec added to the table shows up everywhere, with no other list to edit)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.data.toy import ToyMixtureDataModule, mixture_means
from lightning_gen.errors import LightningGenError
from lightning_gen.metrics import METRICS, EvaluationSettings, MetricError, MetricResult, MetricSpec, evaluate_model
from lightning_gen.metrics.registry import (
    better_direction,
    check_model_supports,
    parse_metric_names,
    spec_of,
    supported_metrics,
)
from lightning_gen.models.base import GenerativeModule
from lightning_gen.report import dashboard
from lightning_gen.report.compare import ComparedRun, check_protocols
from lightning_gen.report.html import markdown_table, render_html, table_rows
from tests.support.image_bank import ImageBankModel

SURFACES = {"sample", "log_likelihood", "elbo_terms"}  # of models/base.py


def _run(label: str, results: list[MetricResult], holes: list[MetricResult] = ()) -> ComparedRun:
    return ComparedRun(label, Path(f"{label}.ckpt"), None, "lightning_gen.models.Fake", list(results), list(holes))


def test_every_spec_is_complete_and_its_result_names_lead_back_to_it():
    for name, spec in METRICS.items():
        assert spec.name == name and spec.results and spec.unit and spec.needs in SURFACES, name
        assert spec.better in ("lower", "higher", "nearer 1") and spec.data in ("images", "points"), name
        for result in spec.result_names("fmnist_clf"):
            # as logged, under a stage, and derived by the report (compare's prior_/midpoint_ latent holes)
            for shown in (result, f"val/{result}", f"test/{result}", f"prior_{result}", f"midpoint_{result}"):
                assert spec_of(shown) is spec and better_direction(shown) == spec.better, shown
    for other in ("train/d_loss", "val/nll", "val/recon", "fid", "kid_", "val/samples"):
        assert spec_of(other) is None and better_direction(other) is None, other
    assert better_direction("midpoint_fid_inception") == "lower" and better_direction("val/recall_x") == "higher"


class _Explicit(ImageBankModel):
    """Samples from a bank, with a uniform likelihood and a made-up ELBO below it."""

    def log_likelihood(self, x):
        return torch.full((len(x),), -math.prod(self.data_shape) * math.log(256), dtype=torch.float64)

    def elbo_terms(self, x, generator=None):
        return self.log_likelihood(x), torch.ones(len(x), dtype=torch.float64)


class _Points(GenerativeModule):
    def __init__(self):
        super().__init__()
        self.data_shape = (2,)
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def sample(self, n, generator=None):
        return torch.randn(n, 2, generator=generator) * 0.001 + mixture_means("ring8")[0]  # all on one mode


def test_every_metric_returns_exactly_the_results_its_spec_names(fmnist_dir, tmp_path):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    images = torch.stack([data.split_dataloader("train").dataset[i][0] for i in range(60)])
    on_images = [name for name, spec in METRICS.items() if spec.data == "images"]
    settings = EvaluationSettings(metrics=on_images, num_samples=60, max_real=60, kid_subsets=2, kid_subset_size=20,
                                  cache_dir=str(tmp_path), progress=False)
    results = evaluate_model(_Explicit(images), data, settings, "cpu")
    toy = evaluate_model(_Points(), ToyMixtureDataModule(num_train=100, num_test=100),
                         EvaluationSettings(metrics=["mode_coverage"], num_samples=100, progress=False), "cpu")
    expected = [n for spec in METRICS.values() for n in spec.result_names("fmnist_clf")]
    assert [r.name for r in results + toy] == expected  # in the table's order, whatever order was asked
    assert all(math.isfinite(r.value) for r in results + toy)
    assert {r.name: r.value for r in toy}["modes_covered"] == 1.0


@pytest.mark.parametrize("name", [name for name, spec in METRICS.items() if spec.needs != "sample"])
def test_a_metric_is_refused_for_a_model_without_the_surface_it_needs(name):
    needed = METRICS[name].needs
    implicit = ImageBankModel(torch.zeros(4, 1, 28, 28))  # samples only, like a GAN
    assert supported_metrics(implicit, ["fid", name]) == ["fid"]
    with pytest.raises(MetricError, match=rf"{name} needs an explicit likelihood \(`{needed}`\), but ImageBankModel"):
        check_model_supports(implicit, ["fid", name])
    check_model_supports(_Explicit(torch.zeros(4, 1, 28, 28)), ["fid", name])


def test_the_report_marks_each_columns_best_value_by_its_specs_direction():
    columns = [n for spec in METRICS.values() for n in spec.result_names("fmnist_clf")]
    holes = ["prior_fid_fmnist_clf", "midpoint_fid_fmnist_clf"]
    runs = [_run(label, [MetricResult(n, value) for n in columns], [MetricResult(n, value) for n in holes])
            for label, value in (("small", 1.0), ("large", 2.0))]
    header, rows = table_rows(runs)
    arrows = {"lower": "↓", "higher": "↑", "nearer 1": "→1"}
    for index, name in enumerate(columns + holes, start=5):
        direction = spec_of(name).better
        assert header[index] == f"{name} {arrows[direction]}"
        # 1.0 against 2.0: the smaller is best when lower is better, and when nearer 1 is
        best, other = (rows[1], rows[0]) if direction == "higher" else (rows[0], rows[1])
        assert best[index][1] and not other[index][1], name
    table = markdown_table(runs).splitlines()
    fid = columns.index("fid_fmnist_clf") + 5
    recall = columns.index("recall_fmnist_clf") + 5
    assert table[2].split(" | ")[fid] == "**1.000**" and table[3].split(" | ")[fid] == "2.000"
    assert table[2].split(" | ")[recall] == "1.000" and table[3].split(" | ")[recall] == "**2.000**"
    assert "<td class='best'><b>1.000</b></td>" in render_html(runs).split("data-run='small'")[1].split("</tr>")[0]
    # one run alone has nothing to be better than
    assert not any(is_best for _, is_best in table_rows(runs[:1])[1][0])


def test_protocol_entries_that_a_spec_calls_model_specific_may_differ_between_runs():
    def nll(label, **protocol):
        return _run(label, [MetricResult("nll_bpd", 3.0, {"split": "test", **protocol})])

    check_protocols([nll("vae", estimator="IWAE bound", nll_nats_per_image=2000.0),
                     nll("pixelcnn", estimator="exact autoregressive likelihood", nll_nats_per_image=1800.0)])
    with pytest.raises(LightningGenError, match="nll_bpd of pixelcnn and vae .*split: 'val' vs 'test'"):
        check_protocols([nll("vae"), nll("pixelcnn", split="val")])


@pytest.fixture
def crispness(monkeypatch):
    """A made-up metric added to the table: one row, one compute function."""
    spec = MetricSpec("crispness", ("crispness_{features}",), "sample", "images", "a.u.", "higher",
                      compute=lambda run: [MetricResult("crispness_given", 0.5, {"temperature": 1.0})],
                      model_specific=frozenset({"temperature"}), on_dashboard=True)
    monkeypatch.setitem(METRICS, "crispness", spec)
    return spec


def test_a_spec_added_to_the_table_is_requested_computed_and_reported_with_its_direction(crispness):
    assert parse_metric_names("fid, crispness") == ["fid", "crispness"]
    with pytest.raises(MetricError, match="choose from .*crispness"):
        parse_metric_names("sharpnes")
    (result,) = evaluate_model(ImageBankModel(torch.zeros(4, 1, 28, 28)), None,
                               EvaluationSettings(metrics=["crispness"], progress=False), "cpu")
    assert result.name == "crispness_given" and spec_of(result.name) is crispness
    assert better_direction("prior_crispness_x") == "higher"

    def run(label, value, temperature):
        return _run(label, [MetricResult("crispness_x", value, {"temperature": temperature, "num_real": 10})])

    runs = [run("a", 0.2, 1.0), run("b", 0.9, 2.0)]
    check_protocols(runs)  # its model-specific entry may differ
    header, rows = table_rows(runs)
    assert header[-1] == "crispness_x ↑" and rows[1][-1] == ("0.900", True) and rows[0][-1] == ("0.200", False)
    plan = dashboard.dashboard_plan("me", "p", metrics=dashboard.shared_metrics())
    (quality,) = [s for s in plan["sections"] if s["name"] == "Sample quality"]
    titles = {p["keys"][0]: p["title"] for p in quality["panels"] if p["kind"] == "line"}
    assert titles["val/crispness_fmnist_clf"] == "val/crispness_fmnist_clf (higher is better)"


def test_the_dashboards_shared_keys_are_the_specs_that_ask_for_it(monkeypatch):
    on_dashboard = [spec for spec in METRICS.values() if spec.on_dashboard]
    expected = tuple(f"val/{n}" for spec in on_dashboard for n in spec.result_names("fmnist_clf"))
    assert dashboard.SHARED_METRICS == dashboard.shared_metrics() == expected
    assert "val/nll_bpd" in expected and "val/elbo" not in expected  # elbo: a VAE's own number
    monkeypatch.setitem(METRICS, "kid", replace(METRICS["kid"], on_dashboard=False))
    assert "val/kid_fmnist_clf" not in dashboard.shared_metrics()
    assert dashboard.shared_metrics("inception")[0] == "val/fid_inception"
