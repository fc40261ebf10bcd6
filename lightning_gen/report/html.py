"""Render compared runs: ``comparison.json`` (everything: ``{"claims", "groups", "runs"}``), ``report.md``
(the claims and the tables) and ``report.html`` (the tables, each metric's protocol, learning curves,
pictures; PNGs embedded, so it is one file). Seed groups (``report/groups.py``) get their own table above the
runs' one: mean ± std of every metric, the runs and seeds, and the share of runs that failed."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from lightning_gen.metrics.registry import best_of, better_direction, shared_protocol  # noqa: E402
from lightning_gen.report.claims import claim_summary  # noqa: E402
from lightning_gen.report.groups import RECALL_COLLAPSE, summarise_groups  # noqa: E402

_ARROWS = {"lower": "↓", "higher": "↑", "nearer 1": "→1"}


def _format(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def metric_columns(runs) -> list[str]:
    names = []
    for run in runs:
        for result in run.results + run.latent_holes:
            if result.name not in names:
                names.append(result.name)
    return names


def _column_bests(values: dict[str, list[float]]) -> dict[str, float]:
    """Per metric column with two values or more, the best one by its spec's direction."""
    return {name: best_of(name, column) for name, column in values.items() if len(column) > 1}


def best_values(runs) -> dict[str, float]:
    """Per metric column with values from two runs or more, the best value by its spec's direction."""
    return _column_bests({name: [r.value for run in runs for r in run.results + run.latent_holes if r.name == name]
                          for name in metric_columns(runs)})


def table_rows(runs) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """The header (metric columns marked ↓ or ↑) and, per run, its cells as (text, is the column's best)."""
    columns, best = metric_columns(runs), best_values(runs)
    header = ["run", "model", "parameters", "fit time (s)", "samples/s",
              *(f"{name} {_ARROWS[better_direction(name)]}" for name in columns)]
    rows = []
    for run in runs:
        values = {r.name: r.value for r in run.results + run.latent_holes}
        cells = [run.label, run.model_class.rsplit(".", 1)[-1], _format(run.parameters),
                 _format(run.fit_seconds, 1), _format(run.samples_per_second, 1)]
        marked = [(_format(values.get(name)), name in best and values.get(name) == best[name]) for name in columns]
        rows.append([(cell, False) for cell in cells] + marked)
    return header, rows


def _mean_std(entry: dict | None) -> str:
    if entry is None or entry["mean"] is None:
        return "—"
    return _format(entry["mean"]) + (f" ± {_format(entry['std'])}" if entry["std"] is not None else "")


def _failed(group) -> str:
    return f"{len(group.failures)}/{len(group.runs)} ({group.failed_share:.0%})"


def group_rows(groups) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """The seed groups' table: header and, per group, cells as (text, is the column's best mean)."""
    columns = list(dict.fromkeys(name for group in groups for name in group.metrics))
    best = _column_bests({name: [group.metrics[name]["mean"] for group in groups
                                 if name in group.metrics and group.metrics[name]["mean"] is not None]
                          for name in columns})
    header = ["group", "model", "runs", "seeds", "failed",
              *(f"{name} {_ARROWS[better_direction(name)]}" for name in columns)]
    rows = []
    for group in groups:
        seeds = ", ".join("?" if seed is None else str(seed) for seed in group.seeds)
        cells = [group.name, group.model_class.rsplit(".", 1)[-1], str(len(group.runs)), seeds, _failed(group)]
        marked = [(_mean_std(group.metrics.get(name)),
                   name in best and group.metrics.get(name, {}).get("mean") == best[name]) for name in columns]
        rows.append([(cell, False) for cell in cells] + marked)
    return header, rows


def _markdown(header: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"**{text}**" if is_best else text for text, is_best in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown_table(runs) -> str:
    return _markdown(*table_rows(runs))


_GROUPS_ABOUT = ("Runs of one config that differ only in their seed: mean ± std (sample std) over the runs' finite "
                 "values; failed: diverged (a non-finite weight, sample, loss or metric, or a fit stopped on a "
                 f"non-finite loss) or collapsed (recall below {RECALL_COLLAPSE}, about twice a one-class "
                 "generator's).")


def markdown_groups(groups) -> str:
    """The seed groups' table and each failed run with its reason ('' without groups)."""
    if not groups:
        return ""
    failures = "".join(f"- {label}: {reason}\n" for group in groups for label, reason in group.failures.items())
    return f"Seed groups. {_GROUPS_ABOUT}\n\n{_markdown(*group_rows(groups))}\n{failures}\n"


def _protocols(runs) -> dict[str, dict]:
    """Each metric's protocol: the part every run shares (from the first run), and per run the entries its
    spec calls model-specific (the estimator and the like)."""
    protocols: dict[str, dict] = {}
    for run in runs:
        for result in run.results + run.latent_holes:
            shared = shared_protocol(result)
            entry = protocols.setdefault(result.name, {"protocol": shared, "per_run": {}})
            if own := {k: v for k, v in result.protocol.items() if k not in shared}:
                entry["per_run"][run.label] = own
    return protocols


def _png_of(figure) -> bytes:
    """``figure`` as PNG bytes; the figure is closed."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _curves_png(runs) -> bytes | None:
    keys = sorted({key for run in runs for key in run.curves})
    if not keys:
        return None
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys):
        for run in runs:
            if key in run.curves:
                epochs, values = zip(*run.curves[key])
                axis.plot([e + 1 for e in epochs], values, marker="o", label=run.label)
        axis.set_title(key)
        axis.set_xlabel("epochs trained")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    return _png_of(figure)


def _spectra_png(runs) -> bytes | None:
    """The radially averaged power spectrum of each run's samples against the real images' (the sharpness
    metric's protocol keeps both)."""
    spectra = {run.label: result.protocol for run in runs for result in run.results
               if result.name == "hf_energy_ratio" and "sample_spectrum" in result.protocol}
    if not spectra:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    axis.semilogy(next(iter(spectra.values()))["real_spectrum"], color="black", linewidth=2.5, label="real images")
    for label, protocol in spectra.items():
        axis.semilogy(protocol["sample_spectrum"], marker=".", label=label)
    axis.set_xlabel("spatial frequency (cycles per image)")
    axis.set_ylabel("power per image")
    axis.legend(fontsize=7)
    return _png_of(figure)


def _capability_table(runs) -> list[str]:
    """Rows: each capability and each sampling speed; columns: the runs."""
    rows = {name: [run.capabilities.get(name, "—") for run in runs]
            for name in dict.fromkeys(name for run in runs for name in run.capabilities)}
    rows |= {f"samples/s, {name}": [_format(run.sampling.get(name), 1) for run in runs]
             for name in dict.fromkeys(name for run in runs for name in run.sampling)}
    if not rows:
        return []
    head = "".join(f"<th>{html.escape(run.label)}</th>" for run in runs)
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(v)}</td>" for v in values)
                   + "</tr>" for name, values in rows.items())
    return ["<h2>Capabilities</h2>", f"<table id='capabilities'><tr><th>capability</th>{head}</tr>{body}</table>"]


def _img(png: bytes, alt: str, css_class: str = "") -> str:
    return (f'<img class="{css_class}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


# after loading, the page records how many images decoded, so a headless browser can check it
_IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesBroken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
});
</script>"""


def _html_rows(rows, css_class: str, data: str) -> list[str]:
    return [f"<tr class='{css_class}' data-{data}='{html.escape(row[0][0])}'>" + "".join(
        f"<td class='best'><b>{html.escape(text)}</b></td>" if is_best else f"<td>{html.escape(text)}</td>"
        for text, is_best in row) + "</tr>" for row in rows]


def _groups_html(groups) -> list[str]:
    if not groups:
        return []
    header, rows = group_rows(groups)
    failures = [f"<li>{html.escape(label)}: {html.escape(reason)}</li>"
                for group in groups for label, reason in group.failures.items()]
    return ["<h2>Seed groups</h2>", f"<p>{html.escape(_GROUPS_ABOUT)}</p>",
            "<table id='groups'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
            *_html_rows(rows, "group", "group"), "</table>",
            *(["<ul id='failures'>", *failures, "</ul>"] if failures else [])]


def render_html(runs) -> str:
    header, rows = table_rows(runs)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lightning-gen comparison</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             "img{margin:4px;max-width:100%}img.grid{image-rendering:pixelated;zoom:2}</style></head><body>",
             "<h1>lightning-gen: runs side by side</h1>",
             "<p>↓: lower is better, ↑: higher is better, →1: nearer 1 is better; the best value of each column is "
             "in bold. "
             "prior_fid: decoded N(0, I) samples; midpoint_fid: decoded midpoints of encoded test pairs "
             "(the latent-hole comparison of AE and VAE).</p>",
             "<h2>What the field says, and what these runs show</h2><ul id='claims'>",
             *(f"<li>{html.escape(line)}</li>" for line in claim_summary(runs)), "</ul>",
             *_groups_html(summarise_groups(runs)),
             "<h2>Metrics</h2>",
             "<table id='metrics'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
             *_html_rows(rows, "run", "run"), "</table>"]
    parts += _capability_table(runs)
    parts.append("<h2>Protocols</h2><ul>")
    for name, entry in _protocols(runs).items():
        own = "".join(f"; {html.escape(label)}: {html.escape(json.dumps(e))}" for label, e in entry["per_run"].items())
        parts.append(f"<li><b>{html.escape(name)}</b>: {html.escape(json.dumps(entry['protocol']))}{own}</li>")
    parts.append("</ul>")
    curves = _curves_png(runs)
    if curves:
        parts += ["<h2>Learning curves</h2>", _img(curves, "learning curves")]
    spectra = _spectra_png(runs)
    if spectra:
        parts += ["<h2>Power spectra</h2><p>Power above half the Nyquist frequency, samples over real images, is "
                  "hf_energy_ratio: below 1 the samples are blurrier than real images, above 1 noisier.</p>",
                  _img(spectra, "power spectra")]
    for run in runs:
        parts.append(f"<h2 class='pictures' data-run='{html.escape(run.label)}'>{html.escape(run.label)}</h2>")
        for kind, png in run.pictures.items():
            parts.append(f"<h3>{html.escape(kind)}</h3>{_img(png, f'{run.label} {kind}', 'grid')}")
    parts += [_IMAGE_CHECK, "</body></html>"]
    return "\n".join(parts)


def write_report(runs, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for run in runs:
        record = asdict(run)
        record.pop("pictures")
        record["checkpoint"], record["folder"] = str(run.checkpoint), str(run.folder) if run.folder else None
        records.append(record)
    claims, groups = claim_summary(runs), summarise_groups(runs)
    summary = {"claims": claims, "groups": [asdict(group) | {"failed_share": group.failed_share} for group in groups],
               "runs": records}
    (out / "comparison.json").write_text(json.dumps(summary, indent=1) + "\n")
    listed = "".join(f"- {line}\n" for line in claims)
    (out / "report.md").write_text(f"{listed}\n{markdown_groups(groups)}{markdown_table(runs)}")
    (out / "report.html").write_text(render_html(runs))
    return out
