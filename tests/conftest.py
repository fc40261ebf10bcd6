"""Shared fixtures. No test downloads anything: Fashion-MNIST comes from Debian's package (installed by
`make install`), everything else is written to temporary folders by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.paths import FMNIST_DIR, write_idx

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on a 2-core machine: one thread each (and in the processes they
    # start) instead of two threads apiece fighting over both cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    assert (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), (
        f"Fashion-MNIST is expected in {FMNIST_DIR}: run `make install` (installs Debian's dataset-fashion-mnist)"
    )
    return FMNIST_DIR


@pytest.fixture
def tiny_idx_dir(tmp_path: Path) -> Path:
    """A folder with small random MNIST-format files: 64 train and 32 test images of 28x28."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    return folder


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch) -> Path:
    """Run in an empty folder, so that run folders (`runs/...`) land in the test's temporary space."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTNING_GEN_DATA", raising=False)
    return tmp_path


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line("markers", "spread: may run on any pytest-xdist worker, apart from its module")
    config.addinivalue_line("markers", "integration: a test of tests/integration/ (subprocesses, DDP, recipes "
                            "over seeds, benchmark quick modes); make test-fast runs tests/unit/ only")


# the modules whose tests take longest in all (`make test`'s --durations), started first; the `spread`
# tests go last, where short independent units fill whichever worker is free
LONGEST_MODULES = ("test_gan_recipes", "test_fmnist_recipes", "test_faults", "test_ddp", "test_metrics")


INTEGRATION_TIER = Path(__file__).resolve().parent / "integration"  # the slow tier; tests/unit/ is the fast one


def _start_order(item) -> tuple[int, int]:
    if item.get_closest_marker("spread") is not None:
        return (2, 0)
    name = item.module.__name__
    return (0, LONGEST_MODULES.index(name)) if name in LONGEST_MODULES else (1, 0)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """`make test` distributes by group (`--dist loadgroup`): a module's tests stay on one worker, so its
    module-scoped fixtures (a trained run, cached features) are built once; tests marked `spread` (long and
    independent) go to whichever worker is free. First among the hooks: pytest-xdist reads the groups in
    its own hook, which pluggy would otherwise call before this one.

    The groups are handed out in this order (`make test` passes --no-loadscope-reorder; pytest-xdist would
    otherwise start the groups with the most tests first, leaving the single 2.5-minute ring-GAN test for
    last, on one worker while the other idled)."""
    for item in items:
        if item.get_closest_marker("spread") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        if INTEGRATION_TIER in item.path.parents:
            item.add_marker(pytest.mark.integration)
    items.sort(key=_start_order)  # stable: each module's own order is kept
