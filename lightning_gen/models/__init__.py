"""One LightningModule per model family."""

from lightning_gen.models.autoencoder import AE, VAE
from lightning_gen.models.base import GenerativeModule, has_surface

__all__ = ["AE", "VAE", "GenerativeModule", "has_surface"]
