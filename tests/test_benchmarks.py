"""`make bench`'s runner in its quick mode: every benchmark starts, runs and prints its table (a crash
check; the numbers of a quick run are not meaningful and are not asserted)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from run_all import BENCHMARKS  # noqa: E402


def test_every_benchmark_runs_in_quick_mode_and_lands_on_the_page(tmp_path):
    page = tmp_path / "bench.md"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--out", str(page)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = page.read_text()
    assert "FAILED" not in text and "mode: quick" in text and "torch " in text
    sections = text.split("\n## ")[1:]
    assert [section.split("\n", 1)[0] for section in sections] == list(BENCHMARKS)
    for section in sections:  # each printed a table with at least a header and one measured row
        block = section.split("```")[1]
        assert len([line for line in block.splitlines() if line.strip()]) >= 3, section[:200]
