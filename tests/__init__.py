"""The test suite: ``tests/unit`` (in-process, fast: ``make test-fast``), ``tests/integration`` (CLI subprocesses,
DDP, kills, recipes over seeds, benchmark quick modes) and ``tests/support`` (the helpers both import).

A regular package on purpose: torch-fidelity installs a top-level ``tests`` package of its own, and the repository
root comes first on ``sys.path`` (pytest's ``pythonpath``), so ``tests.support`` is always this one."""
