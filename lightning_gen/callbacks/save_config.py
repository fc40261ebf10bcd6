"""The resolved config of a run, where its loggers keep one."""

from __future__ import annotations

import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


class SaveConfigToLoggers(SaveConfigCallback):
    """Lightning's config.yaml in the run folder, and the same resolved config in the run config of
    loggers that keep one (W&B), so that a W&B run alone says how to reproduce it."""

    def save_config(self, trainer, pl_module, stage) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(resolved, allow_val_change=True)
