"""Callbacks: pictures in the logger, (later) evaluation and EMA."""

from lightning_gen.callbacks.pictures import PictureLogger, log_picture

__all__ = ["PictureLogger", "log_picture"]
