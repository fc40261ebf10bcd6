"""One LightningModule per model family."""

from lightning_gen.models.autoencoder import AE, VAE
from lightning_gen.models.base import GenerativeModule, has_surface
from lightning_gen.models.flow import Flow
from lightning_gen.models.flow_matching import FlowMatching
from lightning_gen.models.gan import GAN
from lightning_gen.models.pixelcnn import PixelCNN
from lightning_gen.models.vqvae import VQVAE
from lightning_gen.models.vqvae_prior import VQVAEPrior

__all__ = ["AE", "Flow", "FlowMatching", "GAN", "VAE", "GenerativeModule", "PixelCNN", "VQVAE", "VQVAEPrior",
           "has_surface"]
