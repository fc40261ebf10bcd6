"""Errors raised at the boundary (config, files, checkpoints). The CLI prints their message without a
traceback: each one names the offending value and how to fix it."""

from __future__ import annotations

import operator


class LightningGenError(RuntimeError):
    """Base of the errors a user can fix from the message alone."""

    exit_code = 2  # what ``python -m lightning_gen`` exits with after printing the message


class DatasetFileError(LightningGenError):
    """A dataset folder or file is missing, truncated or not in the expected format."""


class CheckpointError(LightningGenError):
    """A checkpoint cannot be used: missing, unreadable, or saved by another model class."""


class DivergenceError(LightningGenError):
    """Training produced a non-finite loss; the weights were not updated with it."""


class ConfigValueError(LightningGenError, ValueError):
    """An option has a value outside what it accepts (a ``ValueError`` too, for code that catches those)."""


class RunFolderError(LightningGenError):
    """A run folder or a file in it cannot be written: read-only, full disk, or a file where a folder goes."""


class MissingExtraError(LightningGenError):
    """An optional part of the package (an extra, e.g. ``[wandb]``) is needed but not installed."""


class TrainingStopped(LightningGenError):
    """SIGTERM or Ctrl-C stopped ``fit`` at a batch boundary, after a checkpoint to resume from was saved."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


_LIMITS = {"at_least": (operator.ge, "at least", "["), "above": (operator.gt, "greater than", "("),
           "below": (operator.lt, "less than", ")"), "at_most": (operator.le, "at most", "]")}


def check_range(*, at_least=None, above=None, below=None, at_most=None, **values) -> None:
    """Raise ``ConfigValueError`` naming the first of ``values`` outside the range (``None`` values are
    not checked; NaN is outside every range). ``check_range(at_least=1, latent_dim=latent_dim)``,
    ``check_range(above=0, below=1, val_fraction=val_fraction)``."""
    limits = {kind: bound for kind, bound in
              (("at_least", at_least), ("above", above), ("below", below), ("at_most", at_most)) if bound is not None}
    for name, value in values.items():
        if value is not None and not all(_LIMITS[kind][0](value, bound) for kind, bound in limits.items()):
            raise ConfigValueError(f"{name} must be {_range_text(limits)}, got {value}")


def _range_text(limits: dict) -> str:
    """``at least 1``, ``greater than 0``, ``in (0, 1)``, ``in [0, 1)``."""
    if len(limits) == 2:
        (low_kind, low), (high_kind, high) = limits.items()
        return f"in {_LIMITS[low_kind][2]}{low}, {high}{_LIMITS[high_kind][2]}"
    return " and ".join(f"{_LIMITS[kind][1]} {bound}" for kind, bound in limits.items())


# optional parts of the package (pyproject.toml's extras): module -> the extra that installs it
EXTRAS = {"wandb": "wandb", "wandb_workspaces": "wandb"}


def missing_extra(error: BaseException) -> LightningGenError | None:
    """An import of an optional part that is not installed, as a message naming the extra to install."""
    if not isinstance(error, ImportError):
        return None
    module = (error.name or "").split(".")[0]
    if module not in EXTRAS and "wandb" in str(error):  # Lightning's WandbLogger words it as a requirement
        module = "wandb"
    if module not in EXTRAS:
        return None
    return MissingExtraError(f"this needs the optional package {module!r}, which is not installed. Install "
                             f"lightning-gen's [{EXTRAS[module]}] extra: pip install 'lightning-gen[{EXTRAS[module]}]'")
