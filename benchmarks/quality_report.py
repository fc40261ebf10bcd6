"""The tables of ``quality_at_budget.py``'s stored results (a JSONL file, one record per run): per family and
budget the FID of each seed of every contender with the median and the worst seed, or (``summary_table``) one
row per family with the default config against the better plain setting and the peer library's recipe.

    python benchmarks/quality_at_budget.py --report --family gan --minutes 5   # a family's table
    python benchmarks/quality_at_budget.py --report --summary                  # one row per family and budget

"The baseline" is the better (lower median FID) of the two plain settings, so that it is not a straw man; a
lightning-gen record of an earlier version of its config (another digest) gets its own row, never the
default's. FID depends on the number of samples, so every table holds one evaluation protocol.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FEATURES = "fmnist_clf"  # the feature space of every FID, KID, precision and recall in the results


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config_digest(family: str, folder: Path = REPO / "configs") -> str:
    """The first 8 hex digits of the SHA-256 of the family's config as it is now: of its parsed content
    (canonical JSON), so that editing a comment or the layout keeps the results that the recipe earned,
    while any changed value starts a new row. (Records before 2026-12-03 hashed the file's bytes; their
    digests were converted through the config's git history, one record of an uncommitted variant aside.)"""
    content = yaml.safe_load((folder / f"{family}_fmnist.yaml").read_text())
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]


def setting_label(record: dict) -> str:
    """The setting, marked when a lightning-gen run trained an earlier version of the config file: the
    same name then holds another recipe, and its results must not mix with the current one's."""
    digest = record.get("config_digest")
    if record["contender"] != "lightning-gen" or digest == config_digest(record["family"]):
        return record["setting"]
    return f"{record['setting']} [earlier config{' ' + digest if digest else ''}]"


def latest_per_seed(records: list[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    """(contender, setting) -> seed -> the latest record (later lines of the file win)."""
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for record in records:
        groups.setdefault((record["contender"], setting_label(record)), {})[record["seed"]] = record
    return groups


def summarize(runs: dict[int, dict]) -> dict:
    """Per-seed FID, the median and the worst seed (highest FID), medians of the other numbers."""
    seeds = sorted(runs)

    def median(name: str) -> float | None:
        values = [runs[s]["metrics"][name] for s in seeds if name in runs[s]["metrics"]]
        return statistics.median(values) if values else None

    worst = max(seeds, key=lambda s: runs[s]["metrics"]["fid"])
    return {
        "seeds": seeds, "fid_per_seed": {s: runs[s]["metrics"]["fid"] for s in seeds}, "median_fid": median("fid"),
        "worst_fid": runs[worst]["metrics"]["fid"], "worst_seed": worst,
        **{f"median_{name}": median(name) for name in ("kid", "precision", "recall", "nll_bpd", "fid_inception")},
        "inception_samples": sorted({runs[s]["evaluation"].get("inception_samples") for s in seeds} - {None}),
        "median_overhead": _median_share(runs, "seconds_in_training_steps", outside=True),
        "median_evaluation": _median_share(runs, "evaluation_callback_seconds"),
        "median_images": statistics.median(runs[s]["images_trained"] for s in seeds),
        "median_images_per_second": statistics.median(runs[s]["images_per_budget_second"] for s in seeds),
        "description": runs[seeds[-1]]["description"], "sampling": _sampling_text(runs),
    }


def _sampling_text(runs: dict[int, dict]) -> str | None:
    """The ODE solver and NFE the samples were drawn with (median NFE over seeds: an adaptive solver varies),
    for the models that integrate an ODE (their sampling protocol has "nfe"); None for the others."""
    protocols = [r["evaluation"].get("sampling") or {} for r in runs.values()]
    protocols = [p for p in protocols if "nfe" in p]
    if not protocols:
        return None
    nfes = [p["nfe"] for p in protocols if p["nfe"] is not None]
    return f"{protocols[-1].get('solver', 'ODE')}, NFE {fmt(statistics.median(nfes), '.0f') if nfes else 'n/a'}"


def _inception_text(summary: dict) -> str:
    """The median Inception FID with its sample count ("n/a" where no seed measured it)."""
    if summary["median_fid_inception"] is None:
        return "n/a"
    return f"{summary['median_fid_inception']:.1f} ({'/'.join(f'{n:,}' for n in summary['inception_samples'])})"


def _median_share(runs: dict[int, dict], key: str, outside: bool = False) -> float | None:
    """Median over seeds of ``key`` seconds as a share of the training clock (``outside``: of the rest)."""
    shares = [(1 - r[key] / r["train_seconds"]) if outside else r[key] / r["train_seconds"]
              for r in runs.values() if key in r]
    return statistics.median(shares) if shares else None


def better_baseline(summaries: dict[tuple[str, str], dict], kind: str = "plain") -> tuple[str, str] | None:
    """The ``kind`` contender ("plain": of the two plain settings; "peer": the peer library's recipe) with the
    lowest median FID: the baseline the default is held against."""
    candidates = [key for key in summaries if key[0] == kind]
    return min(candidates, key=lambda key: summaries[key]["median_fid"]) if candidates else None


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def budget_text(minutes: float) -> str:
    return f"{minutes:g} min" if minutes >= 1 else f"{minutes * 60:.3g} s"


def fmt(value: float | None, digits: str | None = None) -> str:
    """``digits`` as given, else one decimal from 10 up and 4 significant digits below; None is "n/a"."""
    if value is None:
        return "n/a"
    return format(value, digits or (".1f" if abs(value) >= 10 else ".4g"))


def family_table(records: list[dict], family: str, minutes: float, quick: bool, results: Path) -> list[str]:
    """The table of ``family``'s results at this budget: one per evaluation protocol (number of samples),
    since FID depends on it."""
    runs = [r for r in records if r["family"] == family and math.isclose(r["minutes"], minutes)
            and r.get("quick", False) == quick]
    title = f"### {family}, {budget_text(minutes)} per run"
    if not runs:
        return [title, "", f"no results in {results} yet", ""]
    lines = []
    for num_samples in sorted({r["evaluation"]["num_samples"] for r in runs}, reverse=True):
        same_protocol = [r for r in runs if r["evaluation"]["num_samples"] == num_samples]
        lines += [f"{title}; {FEATURES} features of {num_samples} samples vs {num_samples} test images", "",
                  *protocol_table(same_protocol, results)]
    return lines


def protocol_table(runs: list[dict], results: Path) -> list[str]:
    """One row per contender and setting (lightning-gen, the plain settings, the peer), then default / baseline
    median FID for the better plain setting and for the peer."""
    summaries = _summaries(runs)
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['threads']} threads, {r['machine']['device']}"
                       for r in runs})
    lines = [f"{len(runs)} runs in {results} (the latest of each seed counts); "
             f"machine{'s (numbers mix machines!)' if len(machines) > 1 else ''}: {'; '.join(machines)}", "",
             "| contender | setting | seeds | FID per seed | median FID | worst FID (seed) | Inception FID (N) | KID "
             "| precision | recall | bits/dim | images trained | images/s of budget "
             "| outside training steps (evaluation) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (contender, setting), s in summaries.items():
        per_seed = ", ".join(f"{seed}: {fid:.1f}" for seed, fid in s["fid_per_seed"].items())
        label = setting if contender == "lightning-gen" else f"{setting}: {s['description']}"
        label += f" [{s['sampling']}]" if s["sampling"] else ""
        lines.append(
            f"| {contender} | {label} | {len(s['seeds'])} | {per_seed} | {s['median_fid']:.1f} "
            f"| {s['worst_fid']:.1f} ({s['worst_seed']}) | {_inception_text(s)} | {fmt(s['median_kid'])} "
            f"| {fmt(s['median_precision'], '.3f')} | {fmt(s['median_recall'], '.3f')} "
            f"| {fmt(s['median_nll_bpd'], '.4f')} | {s['median_images']:,.0f} | {s['median_images_per_second']:,.0f} "
            f"| {_percent(s['median_overhead'])} ({_percent(s['median_evaluation'])}) |")
    lines.append("")
    baseline, peer = better_baseline(summaries), better_baseline(summaries, "peer")
    current = ("lightning-gen", f"configs/{runs[0]['family']}_fmnist.yaml")  # no override, the config as it is now
    default = current if current in summaries else None
    if baseline and default:
        lines.append(f"the baseline: plain {baseline[1]} ({summaries[baseline]['description']}), the lower median FID "
                     f"of the plain settings; {_ratio_text(summaries, default, baseline, 'baseline')}")
    else:
        lines.append("no ratio: the default config and a plain baseline both need results at this budget")
    if peer and default:
        lines.append(f"the peer: {peer[1]}'s own recipe ({summaries[peer]['description']}); "
                     f"{_ratio_text(summaries, default, peer, 'peer')}")
    elif peer:
        lines.append("no peer ratio: the default config needs results at this budget")
    return [*lines, ""]


def _ratio_text(summaries: dict[tuple[str, str], dict], default: tuple[str, str], other: tuple[str, str],
                name: str) -> str:
    ratio = summaries[default]["median_fid"] / summaries[other]["median_fid"]
    return (f"default / {name} median FID = {ratio:.3f} "
            f"({'below 1: the default is better' if ratio < 1 else f'at or above 1: the {name} is better'})")


def _summaries(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """(contender, setting) -> ``summarize`` of its latest run per seed: lightning-gen, then plain, then peer."""
    order = {"lightning-gen": 0, "plain": 1, "peer": 2}
    groups = sorted(latest_per_seed(runs).items(), key=lambda item: (order.get(item[0][0], 3), item[0][1]))
    return {key: summarize(seeds) for key, seeds in groups}


def summary_table(records: list[dict], families, quick: bool = False) -> list[str]:
    """One row per family, budget and evaluation protocol with a run of the family's config as it is now: its
    median FID (worst seed) against the better plain setting's and the peer's, bits/dim, the latest run's
    date and the machines."""
    lines = ["| family | budget | samples | lightning-gen: median FID (worst), seeds | better plain setting: "
             "median FID (worst), seeds | default / plain | peer: median FID, default / peer | bits/dim: default, "
             "plain | latest run | machines |",
             "|---|---|---:|---|---|---:|---|---|---|---|"]
    for family in families:
        runs = [r for r in records if r["family"] == family and r.get("quick", False) == quick]
        for minutes, num_samples in sorted({(r["minutes"], r["evaluation"]["num_samples"]) for r in runs},
                                           key=lambda protocol: (protocol[0], -protocol[1])):
            same = [r for r in runs if r["minutes"] == minutes and r["evaluation"]["num_samples"] == num_samples]
            summaries = _summaries(same)
            default = summaries.get(("lightning-gen", f"configs/{family}_fmnist.yaml"))
            if default is None:
                continue
            baseline, peer = better_baseline(summaries), better_baseline(summaries, "peer")
            plain = summaries[baseline] if baseline else None
            plain_text = f"{baseline[1]}: {_median_and_worst(plain)}" if plain else "none yet"
            peer_text = f"{peer[1]} {summaries[peer]['median_fid']:.1f}, {_ratio(default, summaries[peer])}" \
                if peer else ""
            bits = f"{fmt(default['median_nll_bpd'], '.3f')}, {fmt(plain and plain['median_nll_bpd'], '.3f')}"
            machines = "; ".join(sorted({r["machine"]["cpu"] for r in same}))
            lines.append(f"| {family} | {budget_text(minutes)} | {num_samples:,} | {_median_and_worst(default)} "
                         f"| {plain_text} | {_ratio(default, plain)} | {peer_text} | {bits} "
                         f"| {max(r['date'] for r in same)[:10]} | {machines} |")
    return lines


def _median_and_worst(summary: dict) -> str:
    return f"{summary['median_fid']:.1f} ({summary['worst_fid']:.1f}), {len(summary['seeds'])}"


def _ratio(default: dict, other: dict | None) -> str:
    return f"{default['median_fid'] / other['median_fid']:.2f}x" if other else "n/a"
