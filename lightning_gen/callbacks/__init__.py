"""Callbacks: pictures in the logger, sample-quality evaluation, learning rates that run down with the training
budget (``BudgetLRDecay``), a ``last.ckpt`` that is always current, the
graceful stop on SIGTERM/Ctrl-C (the last two installed by ``LightningGenTrainer`` itself), progress bars,
and the resolved config in the loggers (``SaveConfigToLoggers``, used by the CLI)."""

from lightning_gen.callbacks.budget_decay import BudgetLRDecay
from lightning_gen.callbacks.checkpoint import CurrentLastModelCheckpoint
from lightning_gen.callbacks.evaluation import EvaluationCallback
from lightning_gen.callbacks.pictures import PictureLogger, log_picture
from lightning_gen.callbacks.stop import GracefulStop

__all__ = ["BudgetLRDecay", "CurrentLastModelCheckpoint", "EvaluationCallback", "GracefulStop", "PictureLogger",
           "log_picture"]
