"""Errors raised at the boundary (config, files, checkpoints). The CLI prints their message without a
traceback: each one names the offending value and how to fix it."""


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


class TrainingStopped(LightningGenError):
    """SIGTERM or Ctrl-C stopped ``fit`` at a batch boundary, after a checkpoint to resume from was saved."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
