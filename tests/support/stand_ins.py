"""Stand-in models for tests of the run policy and the callbacks, where the model is not what is tested."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_gen.models.base import GenerativeModule


class TinyRegression(pl.LightningModule):
    """Two parameters and a squared loss (SGD, lr 0.01); subclasses log what their test needs in validation."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SampleOnlyModel(GenerativeModule):
    """A model with no latent space: only ``sample``, images of one grey level that training moves towards the
    data's mean."""

    data_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.level = torch.nn.Parameter(torch.tensor(0.5))

    def sample(self, n, generator=None):
        return self.level.clamp(0, 1).expand(n, *self.data_shape)

    def training_step(self, batch, batch_idx):
        return (self.level - batch[0].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
