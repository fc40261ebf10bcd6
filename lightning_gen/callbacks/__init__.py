"""Callbacks: pictures in the logger, (later) evaluation and EMA."""

from lightning_gen.callbacks.evaluation import EvaluationCallback
from lightning_gen.callbacks.pictures import PictureLogger, log_picture

__all__ = ["EvaluationCallback", "PictureLogger", "log_picture"]
