"""The wheel carries the configs: built with ``pip wheel``, installed into a fresh virtualenv in a
temporary folder outside the repository, and run from there by config name."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lightning_gen.errors import ConfigValueError, fixable_error
from lightning_gen.packaged_configs import packaged_configs, resolve_config, resolve_config_options
from tests.support.paths import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv's python, a working folder outside the repository). The venv gets the wheel and
    nothing else; the heavy dependencies (torch & co.) are borrowed from this interpreter's site-packages
    through a .pth line, which puts them on the path without running their .pth files, so this
    checkout's editable install of lightning-gen stays invisible there."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"  # a copy: building in the checkout would leave build/ there
    shutil.copytree(REPO / "lightning_gen", source / "lightning_gen", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(root / "wheels"), str(source)], check=True, cwd=root)
    (wheel,) = (root / "wheels").glob("lightning_gen-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, cwd=root)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = root / "elsewhere"
    work.mkdir()
    return python, work


def _run(python: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(python), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_holds_every_config_of_the_repository(installed):
    (wheel,) = installed[0].parents[2].glob("wheels/*.whl")
    inside = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("lightning_gen/configs/")}
    in_repo = {f"lightning_gen/configs/{p.relative_to(REPO / 'configs').as_posix()}"
               for p in (REPO / "configs").rglob("*.yaml")}
    assert in_repo and inside == in_repo


def test_an_installed_wheel_lists_its_configs_and_runs_one_by_name(installed):
    python, work = installed
    where = _run(python, work, "-c", "import lightning_gen; print(lightning_gen.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(python.parents[1])  # the wheel's copy, not this checkout
    listing = _run(python, work, "-m", "lightning_gen", "configs")
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert {"vae_fmnist", "gan_fmnist", "trainer/gpu", "logger/wandb"} <= set(names)
    printed = _run(python, work, "-m", "lightning_gen", "fit", "--config", "vae_fmnist", "--print_config")
    assert printed.returncode == 0, printed.stderr
    assert "class_path: lightning_gen.models.VAE" in printed.stdout
    assert "sample_latents: posterior_mixture" in printed.stdout  # the packaged file, read whole
    composed = _run(python, work, "-m", "lightning_gen", "fit", "--config", "gan_fmnist", "--config=trainer/cpu",
                    "--print_config")
    assert composed.returncode == 0 and "accelerator: cpu" in composed.stdout, composed.stderr


def test_a_misspelled_config_name_is_one_line_with_the_nearest_names(installed):
    python, work = installed
    result = _run(python, work, "-m", "lightning_gen", "fit", "--config", "vae_fmnst")
    assert result.returncode == 2
    assert "lightning-gen: error: --config vae_fmnst" in result.stderr and "did you mean vae_fmnist" in result.stderr


def test_paths_stay_paths_and_names_resolve_to_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vae_fmnist").write_text("model: {}\n")  # a user's own file wins over the packaged name
    assert resolve_config("vae_fmnist") == "vae_fmnist"
    packaged = packaged_configs()
    assert resolve_config("gan_fmnist") == str(packaged["gan_fmnist"])
    assert resolve_config("configs/gan_fmnist.yaml") == str(packaged["gan_fmnist"])  # README spelling, elsewhere
    assert resolve_config_options(["fit", "--config=trainer/gpu", "--trainer.max_epochs", "1"]) == [
        "fit", f"--config={packaged['trainer/gpu']}", "--trainer.max_epochs", "1"]
    with pytest.raises(ConfigValueError, match="did you mean gan_fmnist"):
        resolve_config("gan_fmnis.yaml")


def test_a_missing_optional_part_names_the_extra_that_installs_it():
    for error in (ModuleNotFoundError("No module named 'wandb_workspaces'", name="wandb_workspaces"),
                  ModuleNotFoundError("Requirement 'wandb>=0.12.10' not met. "
                                      "HINT: Try running `pip install -U wandb`")):
        wrapped = RuntimeError("jsonargparse could not build the logger")
        wrapped.__cause__ = error
        assert "pip install 'lightning-gen[wandb]'" in str(fixable_error(wrapped))
    assert fixable_error(ModuleNotFoundError("No module named 'scipy'", name="scipy")) is None  # not an extra
