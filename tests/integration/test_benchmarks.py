"""`make bench`'s runner in its quick mode: every benchmark starts, runs, prints its table and lands on the
page with its command, date and machine, while the repository's results and page stay as they were (a crash
check; the numbers of a quick run are not meaningful and are not asserted). And the arithmetic of the
fixed-budget quality table: median, worst seed, the better of the two baselines, the peer library's recipe."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from machine_info import cpu_name  # noqa: E402
from quality_at_budget import DEFAULT_RESULTS  # noqa: E402
from quality_report import config_digest, family_table, summary_table  # noqa: E402
from run_all import BENCHMARKS, PAGE, RESULTS, result_path  # noqa: E402


def _file_state(path):
    return path.read_bytes() if path.is_file() else None


# each benchmark on its own: `make test` spreads them over its workers (see conftest.py)
@pytest.mark.spread
@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_runs_in_quick_mode_and_lands_on_the_page(tmp_path, name):
    page = tmp_path / "bench.md"
    committed = {path: _file_state(path) for path in (DEFAULT_RESULTS, PAGE, result_path(RESULTS, name))}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--only", name,
                             "--out", str(page)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = page.read_text()
    assert "mode: quick" in text
    (section,) = text.split("\n## ")[1:]
    assert section.split("\n", 1)[0] == name
    # the command that ran, then the date and the machine
    assert re.search(rf"Latest: `python benchmarks/{name}\.py[^`]* --quick[^`]*` on \d{{4}}-\d\d-\d\d \d\d:\d\d, "
                     f"{re.escape(cpu_name())}, ", section), section[:600]
    block = section.split("```")[1]  # it printed a table with at least a header and one measured row
    assert len([line for line in block.splitlines() if line.strip()]) >= 3, section[:200]
    changed = [str(path) for path, state in committed.items() if _file_state(path) != state]
    assert not changed, f"--quick must not touch the repository's results or page: {changed}"


def _record(contender: str, setting: str, seed: int, fid: float, minutes: float = 5.0,
            digest: str | None = None) -> dict:
    digest = digest or config_digest("gan")  # the config file as it is now, unless told otherwise
    return {"family": "gan", "contender": contender, "setting": setting, "description": f"setting {setting}",
            **({"config_digest": digest} if contender == "lightning-gen" else {}),
            "seed": seed, "minutes": minutes, "images_trained": 1000, "images_per_budget_second": 3.3,
            "metrics": {"fid": fid, "kid": 1.0, "precision": 0.5, "recall": 0.25}, "evaluation": {"num_samples": 100},
            "machine": {"cpu": "test CPU", "threads": 2, "device": "cpu"}, "quick": False}


def test_quality_table_reports_median_and_worst_seed_against_the_better_baseline(tmp_path):
    default = "configs/gan_fmnist.yaml"
    records = [
        _record("lightning-gen", default, 0, 999.0),  # replaced by the later run of the same seed
        *(_record("lightning-gen", default, seed, fid) for seed, fid in enumerate((100.0, 120.0, 300.0))),
        *(_record("plain", "A", seed, fid) for seed, fid in enumerate((150.0, 160.0, 170.0))),
        *(_record("plain", "B", seed, fid) for seed, fid in enumerate((90.0, 500.0, 130.0))),
        _record("lightning-gen", default, 0, 1.0, minutes=15.0),  # another budget: another table
        _record("lightning-gen", default, 1, 2.0, digest="0ld0ld00"),  # an earlier version of the config
    ]
    text = "\n".join(family_table(records, "gan", 5.0, quick=False, results=tmp_path / "r.jsonl"))
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "0: 100.0, 1: 120.0, 2: 300.0 | 120.0 | 300.0 (2)" in rows[default]
    assert "| 160.0 | 170.0 (2)" in rows["A: setting A"]
    assert "| 130.0 | 500.0 (1)" in rows["B: setting B"]
    assert "1: 2.0 | 2.0 |" in rows[f"{default} [earlier config 0ld0ld00]"]  # its own row, not the default's
    # B has the lower median FID (130 < 160), so it is the baseline: 120 / 130
    assert "the baseline: plain B" in text and "median FID = 0.923" in text

    assert "| 300.0 (2) | n/a |" in rows[default]  # no seed measured Inception FID

    only_default = [r for r in records if r["contender"] == "lightning-gen"]
    assert "no ratio" in "\n".join(family_table(only_default, "gan", 5.0, quick=False, results=tmp_path / "r.jsonl"))


def test_quality_table_gives_the_median_inception_fid_of_the_seeds_that_measured_it_with_its_n(tmp_path):
    default = "configs/gan_fmnist.yaml"
    records = [_record("lightning-gen", default, seed, fid) for seed, fid in enumerate((100.0, 120.0, 300.0))]
    for record, inception in zip(records, (40.0, 80.0)):  # seed 2 measured fmnist_clf only
        record["metrics"]["fid_inception"] = inception
        record["evaluation"] = {**record["evaluation"], "inception_samples": 1000}
    text = "\n".join(family_table(records, "gan", 5.0, quick=False, results=tmp_path / "r.jsonl"))
    assert "| 300.0 (2) | 60.0 (1,000) | 1 |" in text  # median of 40 and 80, then KID (1.0)


def test_quality_table_shows_the_peer_beside_the_plain_settings_with_its_own_ratio(tmp_path):
    def record(contender: str, setting: str, fid: float, sampling: dict | None = None) -> dict:
        r = {**_record(contender, setting, 0, fid, digest=config_digest("flow_matching")), "family": "flow_matching"}
        if sampling is not None:  # how the samples were drawn, as run_one records it
            r["evaluation"] = {**r["evaluation"], "sampling": sampling}
        return r

    records = [record("lightning-gen", "configs/flow_matching_fmnist.yaml", 60.0, {"solver": "heun", "nfe": 10}),
               record("plain", "A", 100.0, {"order": "autoregressive"}),  # a protocol without NFE: no bracket
               record("plain", "B", 80.0), record("peer", "torchcfm", 50.0, {"solver": "dopri5", "nfe": 122})]
    text = "\n".join(family_table(records, "flow_matching", 5.0, quick=False, results=tmp_path / "r.jsonl"))
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["contender", "lightning-gen", "plain", "plain", "peer"]  # the peer after the plain settings
    assert "torchcfm: setting torchcfm [dopri5, NFE 122]" in text  # its solver and NFE beside its FID
    assert "yaml [heun, NFE 10] |" in text and "| A: setting A |" in text
    # the better plain setting is B (80): 60 / 80; the peer: 60 / 50
    assert "the baseline: plain B" in text and "default / baseline median FID = 0.750" in text
    assert "the peer: torchcfm's own recipe" in text and "default / peer median FID = 1.200" in text
    assert "the peer is better" in text
    only_plain = [r for r in records if r["contender"] != "peer"]
    assert "peer" not in "\n".join(family_table(only_plain, "flow_matching", 5.0, quick=False,
                                                 results=tmp_path / "r.jsonl"))


def test_the_config_digest_follows_the_recipe_not_its_comments_or_layout(tmp_path):
    config = tmp_path / "gan_fmnist.yaml"
    config.write_text("model:\n  init_args:\n    lr: 0.001  # Adam\n    width: 64\n")
    digest = config_digest("gan", tmp_path)
    config.write_text("# a new comment\nmodel:\n  init_args:\n    width: 64\n    lr: 0.001\n")
    assert config_digest("gan", tmp_path) == digest  # comments and key order: the same recipe
    config.write_text("model:\n  init_args:\n    lr: 0.002\n    width: 64\n")
    assert config_digest("gan", tmp_path) != digest  # a changed value: another recipe, another row


def test_the_summary_gives_one_row_per_budget_with_the_config_as_it_is_now_against_the_better_baseline():
    default = "configs/gan_fmnist.yaml"
    records = [
        *(_record("lightning-gen", default, seed, fid) for seed, fid in enumerate((100.0, 120.0, 300.0))),
        _record("lightning-gen", default, 0, 10.0, digest="0ld0ld00"),  # an earlier config: not the default's
        *(_record("plain", "A", seed, fid) for seed, fid in enumerate((150.0, 160.0, 170.0))),
        *(_record("plain", "B", seed, fid) for seed, fid in enumerate((90.0, 500.0, 130.0))),
        _record("lightning-gen", default, 0, 50.0, minutes=15.0),  # 15 minutes: its own row, no baseline yet
        _record("plain", "A", 0, 80.0, minutes=2.0),  # a budget without the default config: no row
    ]
    for record in records:
        record["date"] = "2031-02-03T04:05:06"
    rows = [line for line in summary_table(records, ["gan", "vae"]) if line.startswith("| gan")]
    assert len(rows) == 2
    cells = [cell.strip() for cell in rows[0].split("|")[1:-1]]
    # the median of 100, 120, 300 and its worst seed; B's median 130 beats A's 160: 120 / 130
    assert cells[:6] == ["gan", "5 min", "100", "120.0 (300.0), 3", "B: 130.0 (500.0), 3", "0.92x"]
    assert cells[-2:] == ["2031-02-03", "test CPU"]
    assert "| gan | 15 min | 100 | 50.0 (50.0), 1 | none yet | n/a |" in rows[1]
