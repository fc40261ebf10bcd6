"""The configs that ship inside the package, found by name.

``--config vae_fmnist`` (or ``vae_fmnist.yaml``, or ``trainer/gpu``) names a config of the package when
no file of that name exists: a ``pip install``ed lightning-gen has every config the documentation uses,
with no clone of the repository. A path that exists is always read as a path. In the repository the
top-level ``configs/`` folder is a link to ``lightning_gen/configs/``, so both spellings read one file.

    python -m lightning_gen configs      # lists them
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from lightning_gen.errors import ConfigValueError
from lightning_gen.parser import command_parser

SUFFIX = ".yaml"


def configs_folder() -> Path:
    """The installed package's config folder (a real folder: the wheel is unpacked, not zipped)."""
    return Path(str(resources.files("lightning_gen") / "configs"))


def packaged_configs() -> dict[str, Path]:
    """Name (``vae_fmnist``, ``trainer/gpu``) -> file, sorted by name."""
    folder = configs_folder()
    return {path.relative_to(folder).with_suffix("").as_posix(): path for path in sorted(folder.rglob(f"*{SUFFIX}"))}


def resolve_config(value: str) -> str:
    """``value`` unchanged if it is an existing path (or not a plain name); else the packaged config it names."""
    if Path(value).exists() or value.startswith(("{", "[")) or "\n" in value:  # paths; inline YAML/JSON configs
        return value
    configs = packaged_configs()
    name = value.removeprefix("configs/").removesuffix(SUFFIX)
    if name in configs:
        return str(configs[name])
    close = difflib.get_close_matches(name, configs, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigValueError(
        f"--config {value}: the file does not exist, and no packaged config has that name. {hint}Give a path to "
        f"a YAML file, "
        f"or one of the packaged names (`python -m lightning_gen configs` lists them): {', '.join(configs)}")


def resolve_config_options(args: list[str]) -> list[str]:
    """The command line with every ``--config NAME`` / ``--config=NAME`` resolved by ``resolve_config``."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = resolve_config(resolved[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + resolve_config(arg.removeprefix("--config="))
    return resolved


def main(args: list[str]) -> None:
    parser = command_parser("lightning-gen configs", "List the configs that ship with lightning-gen; pass a name to "
                            "--config (e.g. `lightning-gen fit --config vae_fmnist`).")
    parser.add_argument("--paths", action="store_true", help="also print each config's file")
    options = parser.parse_args(args)
    for name, path in packaged_configs().items():
        first_line = next(iter(path.read_text().splitlines()), "")
        summary = first_line.removeprefix("#").strip() if first_line.startswith("#") else ""
        print(f"{name:<20} {path if options.paths else summary}".rstrip())
