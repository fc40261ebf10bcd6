"""benchmarks/README.md is a page that benchmarks/run_all.py composes from one result file per benchmark
(benchmarks/results/<name>.md): every section carries its benchmark's latest tables with their date, machine
and command, a benchmark run alone replaces its own section only, and the page stays short enough to read
in five minutes (under 250 lines). The committed page is the one its results compose."""

from __future__ import annotations

import sys

from tests.support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from run_all import BENCHMARKS, PAGE, RESULTS, compose_page, read_result, result_path, write_result  # noqa: E402

MAX_LINES = 250


def _fields(day: int, cpu: str, name: str) -> dict[str, str]:
    return {"date": f"2031-01-{day:02d} 12:00", "machine": f"{cpu}, 2 cores; GPU: none", "versions": "torch 9.9",
            "command": f"python benchmarks/{name}.py", "seconds": "7"}


def _table(name: str, value: int) -> str:
    return f"```\nwhat | value\n{name} measured | {value}.5\n```"


def _fill(folder) -> None:
    for day, name in enumerate(BENCHMARKS, start=1):
        write_result(result_path(folder, name), _fields(day, f"CPU number {day}", name), _table(name, day))


def _sections(page: str) -> dict[str, str]:
    return {chunk.split("\n", 1)[0]: chunk for chunk in page.split("\n## ")[1:]}


def test_each_section_carries_its_benchmarks_table_date_machine_and_command(tmp_path):
    _fill(tmp_path)
    page = compose_page(tmp_path)
    sections = _sections(page)
    assert list(sections) == list(BENCHMARKS)
    for day, name in enumerate(BENCHMARKS, start=1):
        assert f"{name} measured | {day}.5" in sections[name]  # its own table, not a neighbour's
        assert f"2031-01-{day:02d} 12:00" in sections[name] and f"CPU number {day}, 2 cores" in sections[name]
        assert f"`python benchmarks/{name}.py`" in sections[name] and BENCHMARKS[name].what in sections[name]
    assert "make bench" in page and "--page-only" in page and "history.md" in page
    assert len(page.splitlines()) < MAX_LINES


def test_a_benchmark_run_alone_replaces_its_own_section_only(tmp_path):
    _fill(tmp_path)
    before = _sections(compose_page(tmp_path))
    write_result(result_path(tmp_path, "evaluation"), _fields(28, "a new CPU", "evaluation"), _table("new", 9))
    after = _sections(compose_page(tmp_path))
    assert "a new CPU" in after["evaluation"] and "new measured | 9.5" in after["evaluation"]
    assert "CPU number" not in after["evaluation"]
    assert {name: text for name, text in after.items() if name != "evaluation"} == \
        {name: text for name, text in before.items() if name != "evaluation"}


def test_a_missing_result_says_how_to_get_it_and_a_gpu_result_stands_beside_the_cpu_one(tmp_path):
    write_result(result_path(tmp_path, "compile_speed"), _fields(1, "a CPU", "compile_speed"), _table("cpu", 1))
    write_result(result_path(tmp_path, "compile_speed", gpu=True), _fields(2, "a GPU host", "compile_speed"),
                 _table("gpu", 2))
    sections = _sections(compose_page(tmp_path))
    assert "No result yet: `python benchmarks/run_all.py --only evaluation`" in sections["evaluation"]
    compile_speed = sections["compile_speed"]
    assert compile_speed.index("cpu measured | 1.5") < compile_speed.index("gpu measured | 2.5")
    assert "a GPU host" in compile_speed


def test_a_result_file_reads_back_as_written(tmp_path):
    fields = {**_fields(3, "AMD EPYC", "lr_sensitivity"), "note": "a note: with a colon"}
    write_result(tmp_path / "r.md", fields, "\n" + _table("x", 1) + "\n\n")
    assert read_result(tmp_path / "r.md") == (fields, _table("x", 1))


def test_the_committed_page_is_composed_from_the_committed_results_and_is_short():
    page = PAGE.read_text()
    assert page == compose_page(RESULTS), "benchmarks/README.md is generated: python benchmarks/run_all.py --page-only"
    assert len(page.splitlines()) < MAX_LINES
    assert all(result_path(RESULTS, name).is_file() for name in BENCHMARKS)  # every benchmark has a table
