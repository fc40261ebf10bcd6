"""`make test` keeps each module's tests on one pytest-xdist worker (`--dist loadgroup` and the groups
tests/conftest.py gives), so a module's fixtures are built once. pytest 9.2 broke this silently (its node ids
drop the group suffix pytest-xdist writes: pytest-xdist issue #1386; a fixture of test_compare.py was built on
both workers, ~95 s each). This runs two small modules under the suite's own conftest and checks where their
tests ran; the control, plain `--dist load`, must split them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict

from tests.support.paths import REPO

TESTS = """import os, time
import pytest

@pytest.mark.parametrize("index", range(4))
def test_records_its_worker(index):
    time.sleep(0.2)  # long enough that both workers are busy while the tests are handed out
    with open("workers.txt", "a") as log:
        log.write(f"{__name__} {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""


def _workers_of_each_module(tmp_path, dist: str) -> dict[str, set[str]]:
    folder = tmp_path / dist
    folder.mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", folder / "conftest.py")
    for module in ("test_first", "test_second"):
        (folder / f"{module}.py").write_text(TESTS)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", dist, "-p", "no:cacheprovider",
                             str(folder)], capture_output=True, text=True, cwd=folder, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # the conftest imports tests.support
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = (folder / "workers.txt").read_text().splitlines()
    assert len(lines) == 8  # every test ran once
    workers = defaultdict(set)
    for module, worker in map(str.split, lines):
        workers[module].add(worker)
    return workers


def test_each_module_runs_on_one_worker_and_plain_load_balancing_would_split_them(tmp_path):
    grouped = _workers_of_each_module(tmp_path, "loadgroup")
    assert all(len(workers) == 1 for workers in grouped.values()), dict(grouped)
    ungrouped = _workers_of_each_module(tmp_path, "load")  # the control: no grouping at all
    assert any(len(workers) == 2 for workers in ungrouped.values()), dict(ungrouped)
