"""What a command line says before the parser sees it: model options typed on it, and the model and data of
``evaluate``/``sample`` taken from their checkpoint when no config is given."""

from __future__ import annotations

import contextlib
import json

import yaml

from lightning_gen.checkpoints import DATAMODULE_KEY, MODEL_CLASS_KEY, CheckpointFile
from lightning_gen.errors import CheckpointError

CHECKPOINT_KEYWORDS = {"last", "best", "hpc", "registry"}  # --ckpt_path values Lightning resolves itself

_NOT_MODEL_ARGUMENTS = {"class_path", "init_args", "dict_kwargs", "help"}


def model_overrides(args: list[str]) -> dict:
    """``--model.init_args.NAME VALUE`` and its shorthand ``--model.NAME VALUE`` (or ``=VALUE``) options of a
    command line, values parsed as YAML."""
    overrides = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--model."):
            continue
        key, has_value, value = arg.removeprefix("--model.").removeprefix("init_args.").partition("=")
        if not has_value:
            if i + 1 >= len(args):
                continue
            value = args[i + 1]
        with contextlib.suppress(yaml.YAMLError):  # the parser has accepted the value; YAML is how it reads it
            value = yaml.safe_load(value)
        if key == "init_args" and isinstance(value, dict):  # --model.init_args '{"latent_dim": 8}'
            overrides.update(value)
        elif "." not in key and key not in _NOT_MODEL_ARGUMENTS:  # nested keys (an optimizer's) are the parser's
            overrides[key] = value
    return overrides


def option_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def command_checkpoint(args: list[str]) -> CheckpointFile | None:
    """The checkpoint file of ``evaluate``/``sample`` (``--ckpt_path FILE``), read once here, at the boundary, for
    the model class, data, hyperparameters and weights; None when the command line names none or a keyword
    (``last``). The CLI reads any other command's checkpoint (and one set in a config file) itself, once."""
    ckpt_path = option_value(args, "--ckpt_path")
    if not args or args[0] not in ("evaluate", "sample") or not ckpt_path or ckpt_path in CHECKPOINT_KEYWORDS:
        return None
    return CheckpointFile.read(ckpt_path)


def args_from_checkpoint(args: list[str], checkpoint: CheckpointFile | None) -> list[str]:
    """``evaluate``/``sample`` without a config: take the model class and the data from the checkpoint."""
    configured = any(option_value(args, name) for name in ("--config", "--model"))
    if not args or args[0] not in ("evaluate", "sample") or configured or checkpoint is None:
        return args  # without --ckpt_path the subcommand itself says that it is needed
    model_class = checkpoint.contents.get(MODEL_CLASS_KEY)
    if model_class is None:
        raise CheckpointError(f"{checkpoint.path} does not record its model class; pass --config with the run's "
                              "config.yaml")
    extra = ["--model", model_class]
    data = checkpoint.contents.get(DATAMODULE_KEY)
    if data and not option_value(args, "--data"):
        extra += ["--data", json.dumps(data)]
    return [args[0], *extra, *args[1:]]
