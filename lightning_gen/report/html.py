"""Render compared runs: ``comparison.json`` (everything: ``{"claims", "groups", "runs"}``, every result with
its full protocol), ``report.md`` (the claims and the tables) and ``report.html`` (the tables, learning
curves, power spectra, NFE curves, pictures; PNGs embedded, so it is one file).

The tables (``report/tables.py``) hold a row per run and one table per metric group, so the page keeps to its
width however many runs and metrics it shows (the browser test checks 1280 px). Seed groups
(``report/groups.py``) get their own tables above the runs': mean ± std of every metric, the runs and
seeds, and the share of runs that failed."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from lightning_gen.report.claims import claim_summary  # noqa: E402
from lightning_gen.report.groups import RECALL_COLLAPSE, summarise_groups  # noqa: E402
from lightning_gen.report.tables import (  # noqa: E402
    Table,
    capability_table,
    group_rows,
    group_tables,
    markdown,
    markdown_table,  # noqa: F401  (re-exported: the one-table view)
    markdown_tables,
    metric_tables,
    nfe_table,
    per_run_protocol_table,
    shared_protocol_table,
    speed_table,
    table_rows,  # noqa: F401  (re-exported)
)


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


def _nfe_png(runs) -> bytes | None:
    """FID and samples/s against NFE for every run with an NFE curve (``report/nfe_curve.py``), the model's
    default NFE marked."""
    curves = {run.label: run.nfe_curve for run in runs if run.nfe_curve}
    if not curves:
        return None
    figure, (quality, speed) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for label, curve in curves.items():
        nfe = [point["nfe"] for point in curve["points"]]
        line, = quality.plot(nfe, [point[curve["metric"]] for point in curve["points"]], marker="o", label=label)
        speed.plot(nfe, [point["samples_per_second"] for point in curve["points"]], marker="o", label=label)
        default = [point for point in curve["points"] if point["nfe"] == curve["default_nfe"]]
        for axis, key in ((quality, curve["metric"]), (speed, "samples_per_second")):
            axis.plot([p["nfe"] for p in default], [p[key] for p in default], marker="*", markersize=14,
                      color=line.get_color(), linestyle="none")
    metric, samples = next(iter(curves.values()))["metric"], next(iter(curves.values()))["num_samples"]
    quality.set(xscale="log", xlabel="function evaluations (NFE)", ylabel=f"{metric} ({samples} samples)",
                title="sample quality (lower is better)")
    speed.set(xscale="log", yscale="log", xlabel="function evaluations (NFE)", ylabel="samples/s",
              title="sampling speed (star: default NFE)")
    ticks = sorted({point["nfe"] for curve in curves.values() for point in curve["points"]})
    for axis in (quality, speed):
        axis.set_xticks(ticks, [str(nfe) for nfe in ticks])
        axis.minorticks_off()
    quality.ticklabel_format(axis="y", useOffset=False)
    quality.legend(fontsize=7)
    return _png_of(figure)


def _img(png: bytes, alt: str, css_class: str = "") -> str:
    return (f'<img class="{css_class}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


# after loading, the page records how many images decoded and how wide it is, so a headless browser can check
# that every image shows and that nothing runs off the right edge (the widest table's right edge included)
_PAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesBroken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.dataset.viewportWidth = document.documentElement.clientWidth;
  document.body.dataset.pageWidth = document.documentElement.scrollWidth;
  const edges = Array.from(document.querySelectorAll("table")).map(t => Math.ceil(t.getBoundingClientRect().right));
  document.body.dataset.tables = edges.length;
  document.body.dataset.widestTable = Math.max(0, ...edges);
});
</script>"""

# numbers never break; headers and prose wrap at spaces; a run's label may break after its "/"
_STYLE = ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
          "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}"
          "th{white-space:normal}th:first-child,td:first-child,td.text{text-align:left;white-space:normal;"
          "overflow-wrap:break-word}"
          "img{margin:4px;max-width:100%}img.grid{image-rendering:pixelated;zoom:2}p.about{max-width:60em}"
          "</style>")

_GROUPS_ABOUT = ("Runs of one config that differ only in their seed: mean ± std (sample std) over the runs' finite "
                 "values; failed: diverged (a non-finite weight, sample, loss or metric, or a fit stopped on a "
                 f"non-finite loss) or collapsed (recall below {RECALL_COLLAPSE}, about twice a one-class "
                 "generator's).")


def _cell(text: str, is_best: bool) -> str:
    if is_best:
        return f"<td class='best'><b>{html.escape(text)}</b></td>"
    prose = bool(re.search(r"[a-df-zA-Z]", text))  # words (an e alone may be an exponent): left-aligned, wrapping
    return f"<td class='text'>{html.escape(text)}</td>" if prose else f"<td>{html.escape(text)}</td>"


def _name_cell(text: str) -> str:
    return f"<td>{html.escape(text).replace('/', '/<wbr>')}</td>"  # runs/vae_fmnist/version_0 may break at "/"


def html_table(table: Table, heading: str = "h3") -> list[str]:
    """``table`` as a heading, its note and a <table id=key>; each row ``<tr class=kind data-kind=name>``."""
    rows = [f"<tr class='{table.kind}' data-{table.kind}='{html.escape(row[0][0])}'>" + _name_cell(row[0][0])
            + "".join(_cell(text, is_best) for text, is_best in row[1:]) + "</tr>" for row in table.rows]
    return [f"<{heading}>{html.escape(table.title)}</{heading}>",
            *([f"<p class='about'>{html.escape(table.about)}</p>"] if table.about else []),
            f"<table id='{table.key}'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>",
            *rows, "</table>"]


def _failures(groups) -> list[tuple[str, str]]:
    return [(label, reason) for group in groups for label, reason in group.failures.items()]


def _groups_html(groups, runs) -> list[str]:
    if not groups:
        return []
    failures = [f"<li>{html.escape(label)}: {html.escape(reason)}</li>" for label, reason in _failures(groups)]
    return ["<h2>Seed groups</h2>", f"<p class='about'>{html.escape(_GROUPS_ABOUT)}</p>",
            *(line for table in group_tables(groups, runs) for line in html_table(table)),
            *(["<ul id='failures'>", *failures, "</ul>"] if failures else [])]


def report_tables(runs) -> dict[str, list[Table]]:
    """The report's tables by section: metrics, size and speed with capabilities, NFE, protocols."""
    return {"Metrics": metric_tables(runs),
            "Size, speed and capabilities": [speed_table(runs), capability_table(runs)],
            "Sampling steps": [table for table in (nfe_table(runs),) if table is not None],
            "Protocols": [shared_protocol_table(runs),
                          *(table for table in (per_run_protocol_table(runs),) if table is not None)]}


def render_html(runs) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lightning-gen comparison</title>",
             _STYLE, "</head><body>",
             "<h1>lightning-gen: runs side by side</h1>",
             "<p class='about'>↓: lower is better, ↑: higher is better, →1: nearer 1 is better; the best value of "
             "each column is in bold.</p>",
             "<h2>What the field says, and what these runs show</h2><ul id='claims'>",
             *(f"<li>{html.escape(line)}</li>" for line in claim_summary(runs)), "</ul>",
             *_groups_html(summarise_groups(runs), runs)]
    nfe = _nfe_png(runs)
    for section, tables in report_tables(runs).items():
        if tables:
            parts.append(f"<h2>{html.escape(section)}</h2>")
            parts += [line for table in tables for line in html_table(table)]
        if section == "Sampling steps" and nfe:
            parts.append(_img(nfe, "FID and samples/s against NFE"))
    curves = _curves_png(runs)
    if curves:
        parts += ["<h2>Learning curves</h2>", _img(curves, "learning curves")]
    spectra = _spectra_png(runs)
    if spectra:
        parts += ["<h2>Power spectra</h2><p class='about'>Power above half the Nyquist frequency, samples over real "
                  "images, is hf_energy_ratio: below 1 the samples are blurrier than real images, above 1 noisier.</p>",
                  _img(spectra, "power spectra")]
    for run in runs:
        parts.append(f"<h2 class='pictures' data-run='{html.escape(run.label)}'>{html.escape(run.label)}</h2>")
        for kind, png in run.pictures.items():
            parts.append(f"<h3>{html.escape(kind)}</h3>{_img(png, f'{run.label} {kind}', 'grid')}")
    parts += [_PAGE_CHECK, "</body></html>"]
    return "\n".join(parts)


def markdown_groups(groups) -> str:
    """The seed groups' table (every metric in one) and each failed run with its reason ('' without groups)."""
    if not groups:
        return ""
    failures = "".join(f"- {label}: {reason}\n" for label, reason in _failures(groups))
    return f"Seed groups. {_GROUPS_ABOUT}\n\n{markdown(*group_rows(groups))}\n{failures}\n"


def markdown_report(runs, claims: list[str], groups) -> str:
    """The claims, the seed groups and every table of the HTML report, as Markdown."""
    sections = "".join(f"## {section}\n\n{markdown_tables(tables)}" for section, tables in report_tables(runs).items()
                       if tables)
    return "".join(f"- {line}\n" for line in claims) + "\n" + markdown_groups(groups) + sections


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
    (out / "report.md").write_text(markdown_report(runs, claims, groups))
    (out / "report.html").write_text(render_html(runs))
    return out
