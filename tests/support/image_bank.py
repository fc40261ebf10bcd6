"""A stand-in generative model whose samples are given images: lets metric tests control exactly
what is "generated" (real images, degraded copies, one class only)."""

from __future__ import annotations

import torch

from lightning_gen.models.base import GenerativeModule


class ImageBankModel(GenerativeModule):
    """``sample(n)`` returns the next n images of a fixed bank, in order, cycling."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.data_shape = tuple(images.shape[1:])
        self.register_buffer("bank", images)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so the model has a device and a parameter
        self.position = 0

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        index = (torch.arange(n) + self.position) % len(self.bank)
        self.position += n
        return self.bank[index]
