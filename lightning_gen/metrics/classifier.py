"""A small CNN classifier for 28x28 grayscale images, used as the feature extractor of FID, KID and
precision/recall on Fashion-MNIST and MNIST (Inception-v3 features are weak on tiny grayscale images).

Train it with ``python -m lightning_gen.metrics.train_classifier``; the recipe, seed, test accuracy and
the weights' SHA-256 are written next to the weights in ``weights/fmnist_classifier.json``.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_gen.data.pixels import to_signed

FEATURE_DIM = 128


class SmallImageClassifier(nn.Module):
    """``[N, 1, 28, 28]`` in [0, 1] -> logits ``[N, num_classes]``; ``features`` gives the 128-d
    penultimate activations (after ReLU), the space where FID/KID/PR are measured."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 64, 7, 7)
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU(),  # (N, 128): the feature space
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, num_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.body(to_signed(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
