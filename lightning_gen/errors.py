"""Errors raised at the boundary (config, files, checkpoints). The CLI prints their message without a
traceback: each one names the offending value and how to fix it."""


class LightningGenError(RuntimeError):
    """Base of the errors a user can fix from the message alone."""


class DatasetFileError(LightningGenError):
    """A dataset folder or file is missing, truncated or not in the expected format."""


class CheckpointError(LightningGenError):
    """A checkpoint cannot be used: missing, unreadable, or saved by another model class."""


class DivergenceError(LightningGenError):
    """Training produced a non-finite loss; the weights were not updated with it."""
