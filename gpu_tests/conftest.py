"""GPU checks: ``make test-gpu`` on a machine with a CUDA device (never part of ``make test``, which runs on
CPU-only CI). Without a device they fail at collection rather than skip: a skipped GPU check would read as
a passed one."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        raise pytest.UsageError("gpu_tests need a CUDA device (torch.cuda.is_available() is False); "
                                "run them where one is, with `make test-gpu`")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
