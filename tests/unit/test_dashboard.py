"""The W&B dashboard: its plan, the wandb-workspaces objects built from it, and `main`, all without network."""

from __future__ import annotations

import json
import socket

import pytest
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
import yaml

from lightning_gen.errors import LightningGenError
from lightning_gen.report import dashboard
from lightning_gen.report.dashboard import (
    FAMILIES,
    PICTURES,
    RUNTIME,
    SHARED_METRICS,
    STEP,
    build_dashboard,
    dashboard_plan,
    main,
    plan_keys,
)
from tests.support.paths import CONFIGS

SHARED = ("val/fid_fmnist_clf", "val/kid_fmnist_clf", "val/precision_fmnist_clf", "val/recall_fmnist_clf",
          "val/nll_bpd")  # the names every model logs (README, "Evaluation"), spelled out once more on purpose


def panels_of(plan, kind=None):
    return [p for section in plan["sections"] for p in section["panels"] if kind in (None, p["kind"])]


def test_the_default_metrics_are_the_shared_names():
    assert SHARED_METRICS == SHARED
    assert FAMILIES == ("ae", "vae", "gan", "pixelcnn", "vqvae", "vqvaeprior", "flow", "flowmatching")


def test_every_fashion_mnist_config_logs_into_a_family_on_the_dashboard():
    """The CLI gives a W&B run its model class in lower case as group (lightning_gen/cli.py); a config whose
    family the dashboard does not list would be filtered out of every panel."""
    families = {yaml.safe_load(path.read_text())["model"]["class_path"].rsplit(".", 1)[-1].lower()
                for path in CONFIGS.glob("*_fmnist.yaml")}
    assert {"flow", "flowmatching", "vae", "pixelcnn"} <= families  # the configs this test reads
    assert families <= set(FAMILIES)


def test_every_shared_metric_has_a_curve_over_batches_and_a_bar_per_family():
    plan = dashboard_plan("me", "lightning-gen")
    lines = [p for p in panels_of(plan, "line") if p["x"] == STEP]
    bars = panels_of(plan, "bar")
    for key in SHARED:
        assert [p["keys"] for p in lines if key in p["keys"]] == [[key]], key
        assert [p["keys"] for p in bars if key in p["keys"]] == [[key]], key
    assert {k for p in lines for k in p["keys"]} == set(SHARED)
    sections = {s["name"]: s for s in plan["sections"]}
    assert {k for p in sections["Sample quality"]["panels"] for k in p["keys"]} == set(SHARED[:4])
    assert {k for p in sections["Likelihood"]["panels"] for k in p["keys"]} == {"val/nll_bpd"}


def test_runs_are_grouped_and_filtered_by_model_family():
    plan = dashboard_plan("me", "lightning-gen")
    assert plan["runs"]["group_by"] == "group"  # the W&B run group: the family (configs/logger/wandb.yaml)
    assert plan["runs"]["families"] == list(FAMILIES)
    assert len(set(plan["runs"]["colors"].values())) == len(FAMILIES) == 8
    chosen = dashboard_plan("me", "p", families=("gan", "vae", "gan"))
    assert chosen["runs"]["families"] == ["gan", "vae"] and set(chosen["runs"]["colors"]) == {"gan", "vae"}


def test_pictures_and_training_time_have_their_panels():
    plan = dashboard_plan("me", "lightning-gen")
    assert [p["keys"] for p in panels_of(plan, "images")] == [[key] for key in PICTURES]
    assert ["val/samples"] in [p["keys"] for p in panels_of(plan, "images")]
    (time_section,) = [s for s in plan["sections"] if s["name"] == "Training time"]
    assert {"kind": "bar", "keys": [RUNTIME]}.items() <= time_section["panels"][0].items()
    assert {p["x"] for p in time_section["panels"][1:]} == {RUNTIME}
    assert {p["keys"][0] for p in time_section["panels"][1:]} == {"val/fid_fmnist_clf", "val/nll_bpd"}


def test_other_metrics_get_their_own_section_and_empty_choices_are_refused():
    plan = dashboard_plan("me", "p", metrics=["val/fid_fmnist_clf", "train/d_loss"], pictures=())
    assert plan_keys(plan) == {"val/fid_fmnist_clf", "train/d_loss", RUNTIME}
    (more,) = [s for s in plan["sections"] if s["name"] == "More metrics"]
    assert {k for p in more["panels"] for k in p["keys"]} == {"train/d_loss"}
    with pytest.raises(LightningGenError, match="family"):
        dashboard_plan("me", "p", families=())
    with pytest.raises(LightningGenError, match="metric"):
        dashboard_plan("me", "p", metrics=())


def _keys(panel) -> tuple[str, ...]:
    if isinstance(panel, wr.LinePlot):
        return tuple(panel.y)
    if isinstance(panel, wr.BarPlot):
        return tuple(panel.metrics)
    if isinstance(panel, wr.MediaBrowser):
        return tuple(panel.media_keys)
    raise AssertionError(f"unexpected panel {panel!r}")


def test_the_workspace_shows_the_planned_panels_grouped_by_family():
    built = build_dashboard("me", "lightning-gen")
    planned = [[tuple(p["keys"]) for p in s["panels"]] for s in built.plan["sections"]]
    assert [s.name for s in built.workspace.sections] == [s["name"] for s in built.plan["sections"]]
    assert [[_keys(p) for p in s.panels] for s in built.workspace.sections] == planned
    assert (built.workspace.entity, built.workspace.project) == ("me", "lightning-gen")
    # what would be sent: serialised without the network
    spec = json.loads(built.workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))["spec"]
    (runset,) = spec["section"]["runSets"]
    assert runset["grouping"] == [{"section": "run", "name": "group"}]
    (family_filter,) = runset["filters"]["filters"]
    assert family_filter["key"]["name"] == "group" and family_filter["value"] == list(FAMILIES)
    sent = [p for section in spec["section"]["panelBankConfig"]["sections"] for p in section["panels"]]
    plotted = {k for p in sent for k in p["config"].get("metrics", []) + p["config"].get("mediaKeys", [])}
    assert plotted == set(SHARED) | set(PICTURES) | {RUNTIME}
    assert {p["config"].get("groupBy") for p in sent if p["viewType"] != "Media Browser"} == {"group"}
    assert {p["config"]["xAxis"] for p in sent if p["viewType"] == "Run History Line Plot"} == {STEP, RUNTIME}


def test_the_report_has_a_grid_per_section_with_the_runs_grouped_by_family():
    built = build_dashboard("me", "lightning-gen", families=("vae", "gan"))
    grids = [b for b in built.report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == len(built.plan["sections"])
    for grid, section in zip(grids, built.plan["sections"]):
        assert [_keys(p) for p in grid.panels] == [tuple(p["keys"]) for p in section["panels"]]
        (runset,) = grid.runsets
        assert runset.groupby == ["group"] and (runset.entity, runset.project) == ("me", "lightning-gen")
        assert "vae" in str(runset.filters) and "gan" in str(runset.filters) and "pixelcnn" not in str(runset.filters)
        for panel in grid.panels:
            panel._to_model()  # every panel converts without the network (a runset would look up the project)
    assert [b.text for b in built.report.blocks if isinstance(b, wr.H2)] == [s["name"] for s in built.plan["sections"]]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to save, to ask the W&B API or to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(wr.Report, "save", refuse)
    monkeypatch.setattr(ws.Workspace, "save", refuse)
    monkeypatch.setattr("wandb.Api", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_dry_run_prints_the_plan_and_sends_nothing(no_network, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # credentials present: only --dry-run keeps it offline
    monkeypatch.delenv("WANDB_MODE", raising=False)
    main(["--entity", "me", "--project", "lightning-gen", "--dry-run"])
    out = capsys.readouterr().out
    assert out.startswith("dry run (--dry-run): nothing was created")
    assert "me/lightning-gen" in out
    for key in (*SHARED, *PICTURES, RUNTIME, STEP):
        assert key in out, key
    for family in FAMILIES:
        assert family in out


@pytest.mark.parametrize("setting", ["WANDB_MODE=offline", "no API key"])
def test_offline_mode_or_a_missing_key_also_send_nothing(setting, no_network, monkeypatch, tmp_path, capsys):
    if setting == "WANDB_MODE=offline":
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_MODE", "offline")
    else:
        for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
        (tmp_path / "netrc").write_text("machine example.org login user password secret\n")  # not W&B's host
    main(["--entity", "me", "--project", "p"])
    out = capsys.readouterr().out
    assert out.startswith(("W&B is offline (WANDB_MODE=offline)", "no W&B API key"))
    assert "val/fid_fmnist_clf" in out and "val/samples" in out


def test_a_netrc_entry_for_wandb_counts_as_a_key(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai login user password {'x' * 40}\n")
    assert dashboard.offline_reason() is None
    assert dashboard.offline_reason(dry_run=True) == "dry run (--dry-run)"


def test_online_saves_the_workspace_and_the_report_and_prints_their_urls(monkeypatch, capsys):
    saved = []
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self))
    monkeypatch.setattr(wr.Report, "save", lambda self, *a, **k: saved.append(self))
    monkeypatch.setattr(ws.Workspace, "url", property(lambda self: f"https://wandb.test/{self.entity}/ws"))
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://wandb.test/{self.entity}/report"))
    main(["--entity", "me", "--project", "lightning-gen"])
    assert [type(x) for x in saved] == [ws.Workspace, wr.Report]
    assert saved[0].project == saved[1].project == "lightning-gen"
    out = capsys.readouterr().out
    assert "workspace: https://wandb.test/me/ws" in out and "report:    https://wandb.test/me/report" in out


def test_a_failed_save_is_one_error_naming_the_project(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def fail(self):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(ws.Workspace, "save", fail)
    with pytest.raises(LightningGenError, match="me/p: api.wandb.ai unreachable"):
        main(["--entity", "me", "--project", "p"])


def test_the_entity_is_required(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run"])
    assert exit_info.value.code == 2 and "--entity" in capsys.readouterr().err


def test_compare_claims_open_the_report_as_a_markdown_list(no_network, tmp_path, capsys):
    claims = ["VAE samples are blurrier than GAN samples: confirmed: VAE 0.400 vs GAN 0.900",
              "VAEs are easy to train, GANs are hard: not measured (needs seed groups of a VAE and a GAN)"]
    (tmp_path / "comparison.json").write_text(json.dumps({"claims": claims, "groups": [], "runs": []}))
    built = build_dashboard("me", "lightning-gen", claims=dashboard.read_claims(tmp_path))
    headings = [b.text for b in built.report.blocks if isinstance(b, wr.H2)]
    assert headings == [dashboard.CLAIMS_TITLE] + [s["name"] for s in built.plan["sections"]]
    (listed,) = [b for b in built.report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert listed.text == f"- {claims[0]}\n- {claims[1]}"
    assert build_dashboard("me", "lightning-gen").plan["claims"] == []  # none unless asked for
    main(["--entity", "me", "--dry-run", "--claims", str(tmp_path / "comparison.json")])
    assert f"  - {claims[1]}" in capsys.readouterr().out
    (tmp_path / "old.json").write_text("[]")  # an older compare wrote a list of runs
    with pytest.raises(LightningGenError, match="no claims"):
        dashboard.read_claims(tmp_path / "old.json")
