"""Seed groups: runs of one configuration that differ only in their seed, summarised as the mean ± std of
every metric, the number of runs and the share of runs that failed.

The grouping rule (``group_key``): two runs belong together when they record the same

- model class and model hyperparameters (the checkpoint's ``hyper_parameters``) and the run folder's
  ``config.yaml`` ``model`` section (the optimisers and their learning rates live only there),
- data class and data arguments (the checkpoint's data entry), except the ones that say where the files are
  or how they are read (``DATA_LOCATION_KEYS``: they change neither the images nor the order they come in),
- training budget (``BUDGET_KEYS`` of ``trainer`` in ``config.yaml``) and the set of callback classes (an
  EMA of the generator changes what is sampled; evaluation settings do not),

whatever their ``seed_everything``. A checkpoint outside a run folder has no ``config.yaml``: its key is the
checkpoint part alone. Two runs or more with one key form a group; a run alone renders as a single run.
``compare --group NAME=RUN,RUN,...`` names a group by hand (its runs join no automatic group).

A run failed when it

- diverged: a non-finite weight, samples with a NaN or inf (refused by ``metrics/finite.py``), a non-finite
  value in its ``metrics.csv`` (a loss or a metric), a non-finite evaluated metric, or a ``run.json`` that says
  it stopped on a non-finite loss (``diverged``);
- collapsed: recall below ``RECALL_COLLAPSE`` (share of real images on the sample manifold; see there).

Means and standard deviations (sample std, n - 1) are over the finite values of a group's runs, failed runs
included: a collapsed run is a real outcome of the recipe and stays in its mean.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_gen.checkpoints import DATAMODULE_KEY, MODEL_CLASS_KEY, model_hyperparameters

# Recall of a one-class degenerate generator: a set of real images of a single class (sneakers) has recall
# 0.076 against the test set in fmnist_clf features (benchmarks/README.md, "evaluation"), while the default
# configs reach 0.3-0.6 at a 5-minute budget (quality_at_budget). 0.15 is twice the one-class value and half
# the lowest healthy one: a run below it covers about as little of the data as a generator of one class.
RECALL_COLLAPSE = 0.15
DATA_LOCATION_KEYS = frozenset({"data_dir", "download", "num_workers", "pin_memory", "eval_batch_size"})
BUDGET_KEYS = ("max_epochs", "max_steps", "max_time", "limit_train_batches", "accumulate_grad_batches",
               "precision", "devices", "num_nodes", "strategy")
DIVERGED_RECORD_KEY = "diverged"  # run.json: true (or a message) when fit stopped on a non-finite loss


def run_config(folder: Path | None) -> dict[str, Any]:
    """The run folder's ``config.yaml`` (LightningCLI's record of the fit), or {} when there is none."""
    path = folder / "config.yaml" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def seed_of(config: dict[str, Any]) -> int | None:
    seed = config.get("seed_everything")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def group_key(checkpoint: dict[str, Any], config: dict[str, Any]) -> str:
    """A short hash of everything that defines a run's recipe except its seed (the module docstring's rule)."""
    data = checkpoint.get(DATAMODULE_KEY) or {}
    trainer = config.get("trainer") or {}
    callbacks = trainer.get("callbacks") or []
    recipe = {
        "model": checkpoint.get(MODEL_CLASS_KEY),
        "hyperparameters": model_hyperparameters(checkpoint),
        "model_config": config.get("model"),
        "data": data.get("class_path"),
        "data_arguments": {k: v for k, v in (data.get("init_args") or {}).items() if k not in DATA_LOCATION_KEYS},
        "budget": {k: trainer.get(k) for k in BUDGET_KEYS} if trainer else None,
        "callbacks": sorted(c.get("class_path", "") for c in callbacks if isinstance(c, dict)) if trainer else None,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _non_finite_logged(folder: Path | None) -> str | None:
    """The first non-finite number in the run's ``metrics.csv`` as ``"<column> = <value>"``, else None."""
    path = folder / "metrics.csv" if folder is not None else None
    if path is None or not path.is_file():
        return None
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for column, text in row.items():
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                if not math.isfinite(value):
                    return f"{column} = {text}"
    return None


def failure_of(run, record: dict[str, Any] | None = None) -> str | None:
    """Why ``run`` (a ``ComparedRun``) failed, "diverged: ..." or "collapsed: ...", or None for a healthy run.
    ``record``: its ``run.json``."""
    if run.failure:  # found while loading (non-finite weights) or evaluating (non-finite samples)
        return run.failure
    stopped = (record or {}).get(DIVERGED_RECORD_KEY)
    if stopped:
        return f"diverged: stopped on a non-finite loss ({stopped if isinstance(stopped, str) else 'run.json'})"
    logged = _non_finite_logged(run.folder)
    if logged:
        return f"diverged: metrics.csv has {logged}"
    for result in run.results + run.latent_holes:
        if not math.isfinite(result.value):
            return f"diverged: {result.name} = {result.value}"
    for result in run.results:
        if result.name.startswith("recall_") and result.value < RECALL_COLLAPSE:
            return f"collapsed: {result.name} = {result.value:.3f} < {RECALL_COLLAPSE}"
    return None


def _paths_match(run, path: Path) -> bool:
    path = path.resolve()
    return path in (run.checkpoint.resolve(), run.folder.resolve() if run.folder is not None else None)


def assign_groups(runs, explicit: dict[str, list[Path]] | None = None) -> None:
    """Set ``run.group``: the explicit groups' names first, then one name per ``group_key`` shared by two runs
    or more (the experiment folder's name when all its runs share one, else the model class), else None."""
    for name, paths in (explicit or {}).items():
        for path in paths:
            for run in runs:
                if _paths_match(run, Path(path)):
                    run.group = name
    by_key: dict[str, list] = {}
    for run in runs:
        if run.group is None and run.group_key:
            by_key.setdefault(run.group_key, []).append(run)
    taken = {run.group for run in runs if run.group}
    for members in by_key.values():
        if len(members) < 2:
            continue
        experiments = {run.folder.parent.name if run.folder is not None else None for run in members}
        base = next(iter(experiments)) if len(experiments) == 1 and None not in experiments else \
            members[0].model_class.rsplit(".", 1)[-1]
        name, number = base, 2
        while name in taken:
            name, number = f"{base} ({number})", number + 1
        taken.add(name)
        for run in members:
            run.group = name


@dataclass
class GroupSummary:
    """A seed group as the report shows it. ``metrics``: name -> {"mean", "std", "n"} over finite values
    (``std`` is None below two values); ``failures``: run label -> why it failed."""

    name: str
    model_class: str
    runs: list[str]
    seeds: list[int | None]
    metrics: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def failed_share(self) -> float:
        return len(self.failures) / len(self.runs)


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    finite = [v for v in values if math.isfinite(v)]
    return {"mean": statistics.fmean(finite) if finite else None,
            "std": statistics.stdev(finite) if len(finite) > 1 else None, "n": len(finite)}


def summarise_groups(runs) -> list[GroupSummary]:
    """One summary per group named on the runs (``assign_groups``), in the order of their first run."""
    members: dict[str, list] = {}
    for run in runs:
        if run.group:
            members.setdefault(run.group, []).append(run)
    summaries = []
    for name, group in members.items():
        summary = GroupSummary(name, group[0].model_class, [run.label for run in group], [run.seed for run in group],
                               failures={run.label: run.failure for run in group if run.failure})
        names = dict.fromkeys(r.name for run in group for r in run.results + run.latent_holes)
        for metric in names:
            summary.metrics[metric] = mean_std([r.value for run in group for r in run.results + run.latent_holes
                                                if r.name == metric])
        summaries.append(summary)
    return summaries


def coefficient_of_variation(summary: GroupSummary, prefix: str = "fid_") -> float | None:
    """std / mean of the group's FID over seeds (None without two finite values)."""
    entry = next((v for k, v in summary.metrics.items() if k.startswith(prefix)), None)
    if entry is None or entry["std"] is None or not entry["mean"]:
        return None
    return entry["std"] / entry["mean"]
