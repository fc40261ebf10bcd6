"""``python -m lightning_gen dashboard --entity E [--project lightning-gen] [--dry-run]``: a W&B workspace
and report that compare the model families on the shared metrics.

Runs are compared by their W&B run group, which is the model family (``ae``, ``vae``, ``gan``,
``pixelcnn``, ``vqvae``, ``vqvaeprior``, ``flow``, ``flowmatching``: the model's class name in lower case; see
configs/logger/wandb.yaml). ``dashboard_plan`` describes everything as plain data
(sections, panels, the logged keys each panel shows); ``build_dashboard`` turns the plan into
wandb-workspaces objects without touching the network; ``main`` saves them and prints their URLs, or,
offline (``--dry-run``, ``WANDB_MODE=offline``, or no API key), prints the plan and creates nothing.
``--claims`` puts the textbook claims that ``compare`` computed (its ``comparison.json``) at the top of the
report, as a markdown list: the dashboard shows logged curves, the verdicts come from compare's evaluation.
"""

from __future__ import annotations

import json
import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from lightning_gen.errors import LightningGenError
from lightning_gen.metrics.registry import METRICS, spec_of
from lightning_gen.parser import command_parser

# the W&B groups of the Fashion-MNIST configs' runs: their model class names in lower case (lightning_gen/cli.py)
FAMILIES = ("ae", "vae", "gan", "pixelcnn", "vqvae", "vqvaeprior", "flow", "flowmatching")
FEATURES = "fmnist_clf"  # every family's config trains on Fashion-MNIST, scored in its classifier's features


def shared_metrics(features: str = FEATURES) -> tuple[str, ...]:
    """The logged keys of the metrics whose spec puts them on the dashboard, in the registry's order."""
    return tuple(f"val/{name}" for spec in METRICS.values() if spec.on_dashboard
                 for name in spec.result_names(features))


SHARED_METRICS = shared_metrics()
PICTURES = ("val/samples", "val/reconstructions", "val/interpolations")
# WandbLogger logs every metric with `trainer/global_step` = the step Lightning passes to loggers, which
# counts batches (not optimizer steps: a 5:1 GAN would otherwise run 6x faster): one x-axis for every model.
STEP = "trainer/global_step"
RUNTIME = "_runtime"  # W&B: seconds since the run started, recorded with every logged row
TITLE = "lightning-gen: model families on the shared metrics"

_SECTIONS = {  # section name -> what a reader needs to know to read its panels
    "Sample quality": "Generated samples against real validation images, in the features of the Fashion-MNIST "
                      "classifier (fmnist_clf); every model is scored the same way, GANs included.",
    "Likelihood": "Negative log-likelihood in bits per dimension: exact for PixelCNN, the IWAE bound for the VAE, "
                  "exact change of variables for the flow (of dequantised images: an upper bound on the 8-bit "
                  "data's). AEs and GANs define no likelihood and log none; flow matching's ODE estimate is a test-"
                  "time number (test/nll_bpd), so they are absent here.",
    "More metrics": "Further logged values asked for with --metrics.",
    "Training time": "Wall-clock seconds as W&B records them (_runtime: since the run started, evaluation included).",
    "Pictures": "The grids PictureLogger logs every validation epoch: samples (every model); reconstructions and "
                "latent interpolations (models that encode and decode: AE, VAE).",
}
_TITLES = {  # logged key -> panel title (otherwise the key); section and direction come from the spec
    "val/fid_fmnist_clf": "FID, classifier features",
    "val/kid_fmnist_clf": "KID, classifier features",
    "val/precision_fmnist_clf": "precision (k = 3), classifier features",
    "val/recall_fmnist_clf": "recall (k = 3), classifier features",
    "val/nll_bpd": "NLL, bits/dim",
    "val/elbo": "ELBO, nats per image",
}
CLAIMS_TITLE = "What the field says, and what compare's runs show"
_COLORS = ("#4E79A7", "#F28E2B", "#E15759", "#59A14F", "#B07AA1", "#76B7B2", "#EDC948", "#FF9DA7")


def _metric_title(key: str) -> tuple[str, str]:
    """(section, panel title) of a logged key."""
    spec = spec_of(key)
    if spec is None:
        return "More metrics", key
    section = "Sample quality" if spec.needs == "sample" else "Likelihood"
    return section, f"{_TITLES.get(key, key)} ({spec.better} is better)"


def dashboard_plan(entity: str, project: str, families: Sequence[str] = FAMILIES,
                   metrics: Sequence[str] = SHARED_METRICS, pictures: Sequence[str] = PICTURES,
                   claims: Sequence[str] = ()) -> dict[str, Any]:
    """The dashboard as plain data: which runs, how they are grouped, and the sections of panels.

    Every panel is ``{"kind": "line" | "bar" | "images", "title": str, "keys": [logged keys], "x": key}``
    (``x`` for lines only). For each metric: its curve over training (``x``: batches seen) and a bar of
    its last value per family (mean over the family's runs, min-max range). Training time: seconds per
    run, and the first metric of each section against seconds.
    """
    if not families:
        raise LightningGenError("the dashboard needs at least one model family, e.g. --families vae,gan")
    if not metrics:
        raise LightningGenError(f"the dashboard needs at least one metric, e.g. --metrics {','.join(SHARED_METRICS)}")
    sections: dict[str, list[dict[str, Any]]] = {}
    for key in dict.fromkeys(metrics):  # in the given order, once each
        section, title = _metric_title(key)
        sections.setdefault(section, []).append({"kind": "line", "title": title, "keys": [key], "x": STEP})
    for panels in sections.values():
        panels += [{"kind": "bar", "title": f"{panel['title']}: last value by family", "keys": panel["keys"]}
                   for panel in list(panels)]
    headline = [panels[0]["keys"][0] for panels in sections.values()]
    seconds = {"kind": "bar", "title": "seconds per run: last value by family", "keys": [RUNTIME]}
    sections["Training time"] = [seconds] + [
        {"kind": "line", "title": f"{_metric_title(key)[1]} against seconds", "keys": [key], "x": RUNTIME}
        for key in headline
    ]
    if pictures:
        sections["Pictures"] = [{"kind": "images", "title": key, "keys": [key]} for key in pictures]
    families = list(dict.fromkeys(families))
    return {
        "entity": entity,
        "project": project,
        "title": TITLE,
        "runs": {"group_by": "group", "families": families,
                 "colors": {family: _COLORS[i % len(_COLORS)] for i, family in enumerate(families)}},
        "x_axis": STEP,
        "claims": list(claims),
        "sections": [{"name": name, "about": _SECTIONS[name], "panels": panels} for name, panels in sections.items()],
    }


def plan_keys(plan: dict[str, Any]) -> set[str]:
    """Every logged key a panel of the plan shows (x-axes not included)."""
    return {key for section in plan["sections"] for panel in section["panels"] for key in panel["keys"]}


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a listing a person can check before anything is created."""
    runs = plan["runs"]
    lines = [f"W&B workspace and report {plan['title']!r} in {plan['entity']}/{plan['project']}",
             f"runs: grouped by W&B run group (the model family), only {', '.join(runs['families'])}",
             f"x-axis: {plan['x_axis']} (batches seen)"]
    if plan["claims"]:
        lines.append(f"\n[{CLAIMS_TITLE}] in the report, from compare's comparison.json")
        lines += [f"  - {claim}" for claim in plan["claims"]]
    for section in plan["sections"]:
        lines.append(f"\n[{section['name']}] {section['about']}")
        for panel in section["panels"]:
            against = f"  (x: {panel['x']})" if panel["kind"] == "line" else ""
            lines.append(f"  {panel['kind']:<6} {', '.join(panel['keys']):<26} {panel['title']}{against}")
    return "\n".join(lines)


@dataclass
class Dashboard:
    """What ``main`` saves: a project workspace (the live view) and a report (a document to share)."""

    plan: dict[str, Any]
    workspace: Any  # wandb_workspaces.workspaces.Workspace
    report: Any  # wandb_workspaces.reports.v2.Report


def build_dashboard(entity: str, project: str, families: Sequence[str] = FAMILIES,
                    metrics: Sequence[str] = SHARED_METRICS, pictures: Sequence[str] = PICTURES,
                    claims: Sequence[str] = ()) -> Dashboard:
    """The plan as wandb-workspaces objects; nothing is sent until their ``save()``. ``claims``: compare's
    claim lines, a markdown list under their own heading at the top of the report."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    plan = dashboard_plan(entity, project, families, metrics, pictures, claims)
    families = plan["runs"]["families"]

    def panel(spec: dict[str, Any], index: int):
        layout = wr.Layout(x=8 * (index % 3), y=6 * (index // 3), w=8, h=6)  # three per row in a report
        by_family = {"groupby": "Group", "groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}
        if spec["kind"] == "line":
            title_x = "batches seen" if spec["x"] == STEP else "seconds" if spec["x"] == RUNTIME else spec["x"]
            return wr.LinePlot(title=spec["title"], x=spec["x"], y=list(spec["keys"]), title_x=title_x,
                               layout=layout, **by_family)
        if spec["kind"] == "bar":
            return wr.BarPlot(title=spec["title"], metrics=list(spec["keys"]), orientation="v", layout=layout,
                              **by_family)
        if spec["kind"] == "images":
            return wr.MediaBrowser(title=spec["title"], media_keys=list(spec["keys"]), layout=layout)
        raise ValueError(f"unknown panel kind {spec['kind']!r}")

    workspace = ws.Workspace(
        entity=entity, project=project, name=plan["title"],
        sections=[ws.Section(name=section["name"], is_open=True,
                             panels=[panel(spec, i) for i, spec in enumerate(section["panels"])])
                  for section in plan["sections"]],
        settings=ws.WorkspaceSettings(x_axis=STEP),
        runset_settings=ws.RunsetSettings(
            groupby=[expr.Metric("Group")], filters=[expr.Metric("Group").isin(families)],
            group_colors=dict(plan["runs"]["colors"]),
            pinned_columns=[f"summary:{key}" for key in metrics],
        ),
    )
    blocks = [wr.P(f"Runs of {entity}/{project} grouped by their W&B run group, the model family "
                   f"({', '.join(families)}); curves are the mean of a family's runs with their min-max range.")]
    if plan["claims"]:
        blocks += [wr.H2(CLAIMS_TITLE), wr.MarkdownBlock(text="\n".join(f"- {claim}" for claim in plan["claims"]))]
    for section in plan["sections"]:
        runset = wr.Runset(entity=entity, project=project, name="runs by family", groupby=["group"],
                           filters=[expr.Metric("Group").isin(families)])
        blocks += [wr.H2(section["name"]), wr.P(section["about"]),
                   wr.PanelGrid(runsets=[runset], panels=[panel(spec, i) for i, spec in enumerate(section["panels"])])]
    report = wr.Report(entity=entity, project=project, title=plan["title"][:128], blocks=blocks,
                       description="AE, VAE, GAN and PixelCNN on the metrics every model logs under the same name.")
    return Dashboard(plan=plan, workspace=workspace, report=report)


def _has_api_key() -> bool:
    """Whether W&B credentials are configured (environment or ~/.netrc), decided without the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def offline_reason(dry_run: bool = False) -> str | None:
    """Why nothing may be sent to W&B now, or None when the dashboard can be saved."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if dry_run:
        return "dry run (--dry-run)"
    if mode in ("offline", "dryrun", "disabled"):
        return f"W&B is offline (WANDB_MODE={mode})"
    if not _has_api_key():
        return "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    return None


def read_claims(path: str | Path) -> list[str]:
    """The claim lines of a ``compare`` report: its output folder or its ``comparison.json``."""
    path = Path(path)
    path = path / "comparison.json" if path.is_dir() else path
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise LightningGenError(f"cannot read claims from {path} ({error}); pass the --out folder of "
                                "`python -m lightning_gen compare` or its comparison.json") from error
    claims = written.get("claims") if isinstance(written, dict) else None
    if not isinstance(claims, list):
        raise LightningGenError(f"{path} has no claims; it was written by an older compare: run compare again")
    return [str(claim) for claim in claims]


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("python -m lightning_gen dashboard", __doc__.split("\n\n")[0])
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"),
                        help="W&B user or team that owns the project (default: $WANDB_ENTITY)")
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "lightning-gen"),
                        help="W&B project of the runs (default: $WANDB_PROJECT, else lightning-gen)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="run groups to compare, comma-separated")
    parser.add_argument("--metrics", default=",".join(SHARED_METRICS), help="logged keys to plot, comma-separated")
    parser.add_argument("--claims", type=str | None, metavar="COMPARE_OUT",
                        help="put compare's computed claims (its --out folder or comparison.json) in the report")
    parser.add_argument("--dry-run", "--dry_run", action="store_true", dest="dry_run",
                        help="print what would be created; send nothing")
    args = parser.parse_args(argv)
    if not args.entity:
        parser.error("--entity is needed (the W&B user or team of the project), or set WANDB_ENTITY")
    claims = read_claims(args.claims) if args.claims else ()
    dashboard = build_dashboard(args.entity, args.project, _names(args.families), _names(args.metrics),
                                claims=claims)
    reason = offline_reason(args.dry_run)
    if reason:
        print(f"{reason}: nothing was created. Online, this command creates:\n\n{format_plan(dashboard.plan)}")
        return
    try:
        dashboard.workspace.save()
        dashboard.report.save()
    except Exception as error:  # the network, the key, the entity: all named in W&B's message
        raise LightningGenError(
            f"could not save the dashboard to W&B project {args.entity}/{args.project}: {error}. Check the "
            "entity and `wandb login`, or look at it first with --dry-run."
        ) from error
    print(f"workspace: {dashboard.workspace.url}\nreport:    {dashboard.report.url}")


if __name__ == "__main__":
    main()
