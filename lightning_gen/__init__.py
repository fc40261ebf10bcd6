"""lightning-gen: train, evaluate and compare deep generative models with PyTorch Lightning."""

__version__ = "0.1.0"
