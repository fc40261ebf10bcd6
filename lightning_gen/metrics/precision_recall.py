"""Improved precision and recall (Kynkäänniemi et al. 2019) as a torchmetrics ``Metric``.

Each set of features defines a manifold: the union of balls around its points whose radius is the
distance to the point's k-th nearest neighbour within the same set. Precision is the share of
generated points inside the real manifold (sample quality); recall the share of real points inside
the generated manifold (coverage). Features are gathered across processes (``cat``), so the value
under DDP equals the single-process value on the same features.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_gen.errors import ConfigValueError, check_range


def kth_neighbour_radii(features: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance of each point to its k-th nearest other point in the same set: ``[N]``."""
    radii = []
    for start in range(0, len(features), chunk):
        distances = torch.cdist(features[start : start + chunk], features)  # (c, N)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # k + 1: the point itself is at distance 0
    return torch.cat(radii)


def share_inside_manifold(queries: Tensor, support: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """Share of ``queries`` within radius ``radii[j]`` of at least one ``support[j]``."""
    inside = []
    for start in range(0, len(queries), chunk):
        distances = torch.cdist(queries[start : start + chunk], support)  # (c, M)
        inside.append((distances <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside).double().mean()


class NeighbourhoodMetric(Metric):
    """Real and generated features kept whole (``update(features, real)`` like torchmetrics' FID) for a
    k-nearest-neighbour metric; gathered across processes (``cat``), so the value under DDP equals the
    single-process value. ``features()`` -> (real, fake) in float64."""

    full_state_update = False

    def __init__(self, k: int = 3, **kwargs):
        super().__init__(**kwargs)
        check_range(at_least=1, k=k)
        self.k = k
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features.double())

    def features(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)


class PrecisionRecall(NeighbourhoodMetric):
    """``compute()`` -> (precision, recall)."""

    def compute(self) -> tuple[Tensor, Tensor]:
        real, fake = self.features()
        if len(real) <= self.k or len(fake) <= self.k:
            raise ConfigValueError(f"precision/recall with k={self.k} needs more than {self.k} "
                                   "real and generated samples")
        precision = share_inside_manifold(fake, real, kth_neighbour_radii(real, self.k))
        recall = share_inside_manifold(real, fake, kth_neighbour_radii(fake, self.k))
        return precision, recall
