"""A memorisation check: are samples closer to training images than unseen real images ever are?

In feature space, let d(x) be the distance from x to its nearest training image. Held-out real images
(never trained on: the evaluation's real split) give the distribution of d for images that are new; its
``PERCENTILE``-th percentile τ is a distance below which only 1% of new images fall. A sample with d < τ is
closer to a training image than 99% of new images are: a likely copy. The metric is

    memorised_share = (1 / M) · Σ_j 1[d(Y_j) < τ]     (lower is better)

A model that returns training images scores 1 (d = 0); one whose samples are as new as held-out images scores
about PERCENTILE / 100 by construction. The protocol keeps τ and the ``KEEP_CLOSEST`` closest (sample, training
image) pairs, with their distances, for a report to show.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_gen.errors import ConfigValueError

PERCENTILE = 1.0  # of held-out images' nearest-training distances: the memorisation threshold τ
KEEP_CLOSEST = 16  # closest (sample, training image) pairs kept in the protocol


def nearest(queries: Tensor, support: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """For each of ``queries`` (``[Q, d]``): distance to and index of its nearest of ``support`` (``[S, d]``)."""
    distances, indices = [], []
    for start in range(0, len(queries), chunk):
        nearest_in_chunk = torch.cdist(queries[start : start + chunk], support).min(dim=1)  # over (c, S)
        distances.append(nearest_in_chunk.values)
        indices.append(nearest_in_chunk.indices)
    return torch.cat(distances), torch.cat(indices)


@dataclass
class MemorisationResult:
    share: float  # of samples with d < threshold
    threshold: float  # τ, in feature units
    closest_pairs: list[dict]  # [{"sample", "train", "distance"}], nearest first


def memorisation(train: Tensor, held_out: Tensor, fake: Tensor, percentile: float = PERCENTILE,
                 keep: int = KEEP_CLOSEST) -> MemorisationResult:
    """``train``: ``[T, d]``, ``held_out``: ``[H, d]``, ``fake``: ``[M, d]`` features."""
    held_out_distances, _ = nearest(held_out, train)  # (H,)
    threshold = torch.quantile(held_out_distances, percentile / 100)
    fake_distances, train_index = nearest(fake, train)  # (M,), (M,)
    order = fake_distances.argsort()[:keep]
    pairs = [{"sample": int(j), "train": int(train_index[j]), "distance": round(float(fake_distances[j]), 6)}
             for j in order]
    return MemorisationResult(float((fake_distances < threshold).double().mean()), float(threshold), pairs)


class Memorisation(Metric):
    """``update(features, real)`` like torchmetrics' FID, ``real`` features being held-out images; the
    training images' features are given at construction (every process holds them all). Held-out and
    generated features are gathered across processes (``cat``): sample indices are in that gathered order,
    the single-process order."""

    full_state_update = False

    def __init__(self, train: Tensor, **kwargs):
        super().__init__(**kwargs)
        self.train_features = train.double()
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features.double())

    def compute(self) -> MemorisationResult:
        held_out, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        if len(held_out) < 2 or len(self.train_features) < 1:
            raise ConfigValueError("the memorisation check needs training images and at least 2 held-out images")
        return memorisation(self.train_features.to(held_out.device), held_out, fake)
