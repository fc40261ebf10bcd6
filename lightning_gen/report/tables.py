"""The report's tables as data: a title, a header and rows of cells ``(text, is the column's best)``, the first
cell of a row naming its run (or seed group). ``html.py`` and the Markdown report render the same tables.

A row per run and a table per metric group keeps every table narrow however many metrics are asked for:
sample quality (the metrics scored in one feature extractor's space: FID, KID, precision/recall,
density/coverage, FID-infinity, memorisation), sharpness, likelihood (bits/dim and ELBO, each with its
estimator), latent holes and toy mixtures, then size and speed, capabilities, NFE curves and protocols. A
column's arrow (better direction) and its bold best value come from the metric's spec in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_gen.metrics.registry import best_of, better_direction, shared_protocol, spec_of
from lightning_gen.report.numbers import format_rate, format_seconds, format_value, significant

ARROWS = {"lower": "↓", "higher": "↑", "nearer 1": "→1"}
Cell = tuple[str, bool]


@dataclass
class Table:
    """One table of the report. ``key``: its HTML id; ``kind``: what a row is ("run" or "group")."""

    key: str
    title: str
    about: str
    header: list[str]
    rows: list[list[Cell]]
    kind: str = "run"


def _plain(cells) -> list[Cell]:
    return [(text, False) for text in cells]


def _model(run) -> str:
    return run.model_class.rsplit(".", 1)[-1]


# --- the metric columns --------------------------------------------------------------------------------
def metric_columns(runs) -> list[str]:
    names = []
    for run in runs:
        for result in run.results + run.latent_holes:
            if result.name not in names:
                names.append(result.name)
    return names


def column_bests(values: dict[str, list[float]]) -> dict[str, float]:
    """Per metric column with two values or more, the best one by its spec's direction."""
    return {name: best_of(name, column) for name, column in values.items() if len(column) > 1}


def best_values(runs) -> dict[str, float]:
    """Per metric column with values from two runs or more, the best value by its spec's direction."""
    return column_bests({name: [r.value for run in runs for r in run.results + run.latent_holes if r.name == name]
                         for name in metric_columns(runs)})


def _features_of(runs, name: str) -> str | None:
    return next((r.protocol.get("features") for run in runs for r in run.results + run.latent_holes
                 if r.name == name), None)


def short_name(name: str, features: str | None) -> str:
    """A column's title inside its group's table: the result name without the features its group names,
    words apart (``memorised_share_fmnist_clf`` -> ``memorised share``)."""
    if features and name.endswith(f"_{features}"):
        name = name[: -len(features) - 1]
    return name.replace("_", " ")


def metric_groups(runs) -> list[tuple[str, str, list[str]]]:
    """(key, title, result names) of each metric group with a value, in the order of the registry's rows."""
    holes = {r.name for run in runs for r in run.latent_holes}
    groups: dict[tuple[str, str], list[str]] = {}
    for name in metric_columns(runs):
        spec, features = spec_of(name), _features_of(runs, name)
        if name in holes:
            group = ("latent_holes", "Latent holes (models that encode and decode)")
        elif spec.features:
            group = (f"quality_{features}", f"Sample quality in {features} features" if features else "Sample quality")
        elif spec.spectrum:
            group = ("sharpness", "Sharpness")
        elif spec.needs != "sample":
            group = ("likelihood", "Likelihood")
        else:
            group = (f"{spec.data}", f"Sample quality on {spec.data}")
        groups.setdefault(group, []).append(name)
    return [(key, title, names) for (key, title), names in groups.items()]


def table_rows(runs, columns: list[str] | None = None, lead: bool = True,
               short: str | None = None) -> tuple[list[str], list[list[Cell]]]:
    """The header (metric columns marked ↓ or ↑) and, per run, its cells as (text, is the column's best).
    ``columns``: the metric columns (default: all); ``lead``: start with parameters, fit time and samples/s
    (the one-table view) rather than only the run and its model; ``short``: title the columns without these
    features (``short_name``)."""
    columns, best = columns if columns is not None else metric_columns(runs), best_values(runs)
    title = (lambda name: short_name(name, short)) if short is not None else (lambda name: name)
    header = ["run", "model", *(["parameters", "fit time (s)", "samples/s"] if lead else []),
              *(f"{title(name)} {ARROWS[better_direction(name)]}" for name in columns)]
    rows = []
    for run in runs:
        values = {r.name: r.value for r in run.results + run.latent_holes}
        if lead:
            cells = [run.label, _model(run), format_value(run.parameters), format_seconds(run.fit_seconds),
                     format_rate(run.samples_per_second)]
        else:
            cells = [run.label, _model(run)]
        marked = [(format_value(values.get(name)), name in best and values.get(name) == best[name])
                  for name in columns]
        rows.append(_plain(cells) + marked)
    return header, rows


def _about_quality(runs, names: list[str]) -> str:
    protocol = next((r.protocol for run in runs for r in run.results if r.name in names), {})
    if "num_generated" not in protocol:
        return ""
    seed = f" (seed {protocol['sample_seed']})" if protocol.get("sample_seed") is not None else ""
    return (f"{format_value(protocol['num_generated'])} generated images{seed} against "
            f"{format_value(protocol.get('num_real'))} real images of the {protocol.get('real_split')} split.")


_ABOUT = {
    "sharpness": "hf_energy_ratio: power above half the Nyquist frequency, samples over real images: below 1 "
                 "blurrier than real images, above 1 noisier.",
    "latent_holes": "prior fid: decoded N(0, I) samples; midpoint fid: decoded midpoints of encoded test pairs. "
                    "A VAE's codes stay near its prior, so both stay near its sample FID; an AE's may not.",
}


def metric_tables(runs) -> list[Table]:
    """A table per metric group (the likelihood group as ``likelihood_table``), runs as rows."""
    tables = []
    for key, title, names in metric_groups(runs):
        if key == "likelihood":
            tables.append(likelihood_table(runs, names))
            continue
        members = [run for run in runs if any(r.name in names for r in run.results + run.latent_holes)]
        header, rows = table_rows(members, names, lead=False, short=_features_of(runs, names[0]) or "")
        about = _about_quality(runs, names) if key.startswith("quality_") else _ABOUT.get(key, "")
        tables.append(Table(key, title, about, header, rows))
    return tables


# --- likelihood ------------------------------------------------------------------------------------------
def estimator_text(protocol: dict) -> str:
    """The estimator a likelihood result was measured with, and its parameters (importance samples k, the
    ODE's solver and evaluations)."""
    parts = [str(protocol.get("estimator", "log_likelihood"))]
    if protocol.get("importance_samples") is not None:
        parts.append(f"k = {protocol['importance_samples']}")
    if protocol.get("likelihood_nfe") is not None:
        parts.append(f"{protocol.get('solver')} ODE solver, NFE = {protocol['likelihood_nfe']}")
    return "; ".join(parts)


def likelihood_table(runs, names: list[str]) -> Table:
    """Every run with a likelihood result, each with the estimator behind it (exact, a bound, an estimate) and
    the estimate's standard error in bits/dim where it has one (ODE + Hutchinson)."""
    members = [run for run in runs if any(r.name in names for r in run.results)]
    header, rows = table_rows(members, names, lead=False, short="")
    header += ["standard error (bits/dim)", "estimator", "dequantization", "images"]
    for run, row in zip(members, rows):
        protocol = next(r.protocol for r in run.results if r.name in names)
        error = protocol.get("standard_error_bpd")
        row += _plain([f"± {significant(error, 2)}" if error is not None else "—", estimator_text(protocol),
                       str(protocol.get("dequantization", "—")), format_value(protocol.get("num_images"))])
    return Table("likelihood", "Likelihood", "nll bpd: negative log-likelihood in bits per dimension of the 8-bit "
                 "images (exact, or a bound: see each estimator); elbo: nats per image.", header, rows)


# --- speed, capabilities, NFE --------------------------------------------------------------------------
def speed_table(runs) -> Table:
    """Parameters, fit time and samples/s by batch and sampler (a capped measurement says from how many
    images its rate is)."""
    keys = list(dict.fromkeys(key for run in runs for key in run.sampling))
    header = ["run", "model", "parameters", "fit time (s)", *(f"samples/s, {key}" for key in keys)]
    rows = []
    for run in runs:
        notes = run.sampling_notes
        rates = [format_rate(run.sampling.get(key)) + (f" ({notes[key].split(' (')[0]})" if key in notes else "")
                 for key in keys]
        rows.append(_plain([run.label, _model(run), format_value(run.parameters), format_seconds(run.fit_seconds),
                            *rates]))
    capped = sorted({note for run in runs for note in run.sampling_notes.values()})
    about = "Samples per second at each batch size, the default sampler and any other a model names." + \
        (" A rate from fewer images than its batch was measured within the time cap: " + "; ".join(capped) + "."
         if capped else "")
    return Table("speed", "Size and speed", about, header, rows)


def capability_table(runs) -> Table:
    """What each model can do and how it samples (``report/claims.py: capabilities``)."""
    names = list(dict.fromkeys(name for run in runs for name in run.capabilities))
    rows = [_plain([run.label, _model(run), *(run.capabilities.get(name, "—") for name in names)]) for run in runs]
    return Table("capabilities", "Capabilities", "", ["run", "model", *names], rows)


def nfe_table(runs) -> Table | None:
    """Each NFE curve's points: FID and samples/s per number of function evaluations."""
    rows = []
    for run in runs:
        curve = run.nfe_curve
        for point in (curve or {}).get("points", []):
            default = " (default)" if point["nfe"] == curve["default_nfe"] else ""
            rows.append(_plain([run.label, f"{point['nfe']}{default}", format_value(point[curve["metric"]]),
                                format_rate(point["samples_per_second"]), format_value(point["batch_size"])]))
    if not rows:
        return None
    curve = next(run.nfe_curve for run in runs if run.nfe_curve)
    about = (f"FID of {format_value(curve['num_samples'])} samples at each number of function evaluations (one N for "
             "every point: these FIDs compare with each other, not with the sample-quality table's), and the rate "
             "of the sampling calls that drew them.")
    return Table("nfe", "Sampling steps (NFE)", about, ["run", "NFE", f"{curve['metric']} ↓", "samples/s", "batch"],
                 rows)


# --- protocols -----------------------------------------------------------------------------------------
_SHARED_COLUMNS = {  # protocol entries -> the column that shows them
    "features": "features", "num_generated": "generated", "num_real": "real images", "num_images": "real images",
    "real_split": "split", "split": "split", "resize": "resize", "sample_seed": "seed", "seed": "seed",
}
_HIDDEN = {"real_selection", "real_dataset", "feature_dim", "weights_sha256"}  # in comparison.json


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (isinstance(value, str) and len(value) > 200)


def _text(value) -> str:
    if isinstance(value, float):
        return significant(value, 3) if abs(value) < 1 else format_value(value)
    return format_value(value) if isinstance(value, int) and not isinstance(value, bool) else str(value)


def shared_protocol_table(runs) -> Table:
    """Per metric group, the protocol every run shares (``check_protocols`` made sure): features, sample and
    real counts, split, resize, seed, and each metric's own settings; lists and hashes stay in the JSON."""
    header = ["metrics", *dict.fromkeys(_SHARED_COLUMNS.values()), "settings"]
    rows = []
    for _, title, names in metric_groups(runs):
        shared: dict[str, str] = {}
        settings: dict[str, list[str]] = {}
        for name in names:
            result = next(r for run in runs for r in run.results + run.latent_holes if r.name == name)
            for key, value in shared_protocol(result).items():
                if key in _SHARED_COLUMNS:
                    text = _text(value)
                    if key == "features" and result.protocol.get("weights_sha256"):
                        text += f" (weights sha256 {str(result.protocol['weights_sha256'])[:12]})"
                    shared.setdefault(_SHARED_COLUMNS[key], text)
                elif key not in _HIDDEN and _scalar(value):
                    settings.setdefault(short_name(name, result.protocol.get("features")), []).append(
                        f"{key} {_text(value)}")
        own = "; ".join(f"{name}: {', '.join(dict.fromkeys(entries))}" for name, entries in settings.items())
        rows.append(_plain([title, *(shared.get(column, "—") for column in header[1:-1]), own or "—"]))
    return Table("protocols", "Protocols: shared by every run", "The evaluation every run went through, per metric "
                 "group; the full protocols (spectra, hashes, what chose the real images) are in comparison.json.",
                 header, rows, kind="metrics")


# shown by the likelihood table (or a value rather than a protocol): not repeated among the per-run entries
_IN_LIKELIHOOD_TABLE = {"estimator", "importance_samples", "solver", "likelihood_nfe", "standard_error_nats",
                        "standard_error_bpd", "dequantization", "nll_nats_per_image", "num_images"}


def per_run_protocol_table(runs) -> Table | None:
    """What may differ between runs: how each samples (its ``sampling_protocol``) and the entries each metric's
    spec calls model-specific (a KID's spread, the likelihood's distribution, ...), short scalars only; the
    likelihood's estimator and standard error are in the likelihood table."""
    rows = []
    for run in runs:
        sampling = run.sampling_protocol
        cells = ["; ".join(f"{k} {_text(v)}" for k, v in sampling.items() if v is not None and _scalar(v)) or "—"]
        own: dict[str, str] = {}
        for result in run.results + run.latent_holes:
            shared = shared_protocol(result)
            for key, value in result.protocol.items():
                if key not in shared and key not in own and key not in _IN_LIKELIHOOD_TABLE and _scalar(value):
                    own[key] = _text(value)
        cells.append("; ".join(f"{k}: {v}" for k, v in own.items()) or "—")
        rows.append(_plain([run.label, _model(run), *cells]))
    if all(row[2][0] == row[3][0] == "—" for row in rows):
        return None
    return Table("run_protocols", "Protocols: what differs between runs", "How each model samples and the "
                 "entries a metric's spec lets differ between models.", ["run", "model", "sampling",
                                                                         "model-specific entries"], rows)


# --- seed groups ---------------------------------------------------------------------------------------
def mean_std_text(entry: dict | None) -> str:
    if entry is None or entry["mean"] is None:
        return "—"
    return format_value(entry["mean"]) + (f" ± {format_value(entry['std'])}" if entry["std"] is not None else "")


def _failed(group) -> str:
    return f"{len(group.failures)}/{len(group.runs)} ({group.failed_share:.0%})"


def group_rows(groups, columns: list[str] | None = None, lead: bool = True,
               short: str | None = None) -> tuple[list[str], list[list[Cell]]]:
    """The seed groups' table: header and, per group, cells as (text, is the column's best mean).
    ``columns``, ``lead``, ``short``: as in ``table_rows`` (``lead``: the runs, seeds and failed share)."""
    all_columns = list(dict.fromkeys(name for group in groups for name in group.metrics))
    columns = all_columns if columns is None else [name for name in columns if name in all_columns]
    best = column_bests({name: [group.metrics[name]["mean"] for group in groups
                                if name in group.metrics and group.metrics[name]["mean"] is not None]
                         for name in columns})
    title = (lambda name: short_name(name, short)) if short is not None else (lambda name: name)
    header = ["group", "model", *(["runs", "seeds", "failed"] if lead else []),
              *(f"{title(name)} {ARROWS[better_direction(name)]}" for name in columns)]
    rows = []
    for group in groups:
        seeds = ", ".join("?" if seed is None else str(seed) for seed in group.seeds)
        cells = [group.name, group.model_class.rsplit(".", 1)[-1],
                 *([str(len(group.runs)), seeds, _failed(group)] if lead else [])]
        marked = [(mean_std_text(group.metrics.get(name)),
                   name in best and group.metrics.get(name, {}).get("mean") == best[name]) for name in columns]
        rows.append(_plain(cells) + marked)
    return header, rows


def group_tables(groups, runs) -> list[Table]:
    """The seed groups as the runs are shown: who they are, then a table per metric group."""
    if not groups:
        return []
    header, rows = group_rows(groups, columns=[])
    tables = [Table("groups", "Seed groups", "", header, rows, kind="group")]
    for key, title, names in metric_groups(runs):
        header, rows = group_rows(groups, names, lead=False, short=_features_of(runs, names[0]) or "")
        if len(header) > 2:
            tables.append(Table(f"groups_{key}", f"Seed groups: {title.lower()}", "", header, rows, kind="group"))
    return tables


# --- Markdown ------------------------------------------------------------------------------------------
def markdown(header: list[str], rows: list[list[Cell]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"**{text}**" if is_best else text for text, is_best in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown_table(runs) -> str:
    """Every run and metric in one table (parameters, fit time, samples/s first)."""
    return markdown(*table_rows(runs))


def markdown_tables(tables: list[Table]) -> str:
    return "".join(f"### {table.title}\n\n" + (f"{table.about}\n\n" if table.about else "")
                   + markdown(table.header, table.rows) + "\n" for table in tables)
