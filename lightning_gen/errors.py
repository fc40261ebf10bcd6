"""Errors raised at the boundary (config, files, checkpoints). The CLI prints their message without a
traceback: each one names the offending value and how to fix it."""

from __future__ import annotations

import contextlib
import errno
import operator
import os


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


DEBUG_VARIABLE = "LIGHTNING_GEN_DEBUG"
_debug_flag = False  # --debug on the command line of the running command


@contextlib.contextmanager
def debugging(flag: bool):
    """While a command runs: whether ``--debug`` was on its command line (the parser's errors read it too)."""
    global _debug_flag
    _debug_flag = flag
    try:
        yield
    finally:
        _debug_flag = False


def debug_requested() -> bool:
    """Show tracebacks: ``--debug`` on the command line or ``LIGHTNING_GEN_DEBUG=1``."""
    return _debug_flag or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # a write the disk refused


def fixable_error(error: BaseException) -> LightningGenError | None:
    """The error a user can fix from its message, if ``error`` is one or was raised because of one
    (jsonargparse wraps errors raised while it builds the classes), or a failed write to a full or
    read-only disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, LightningGenError):
            return error
        missing = missing_extra(error)
        if missing:
            return missing
        if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
            return RunFolderError(
                f"cannot write {error.filename or 'a file of the run'} ({error.strerror}). Checkpoints already "
                "saved are whole (they are written atomically). Free disk space or make the folder writable, or "
                "point --trainer.default_root_dir and the logger's save_dir at another folder; then resume with "
                "--ckpt_path last.")
        error = error.__cause__ or error.__context__
    return None
