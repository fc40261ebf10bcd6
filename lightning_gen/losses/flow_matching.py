"""Flow matching with the rectified-flow (linear) path: Lipman et al. 2023, "Flow Matching for Generative
Modeling"; Liu et al. 2023, "Flow Straight and Fast"; Albergo & Vanden-Eijnden 2023 (stochastic interpolants).

Noise x0 ~ N(0, I) at t = 0, data x1 at t = 1, and the straight path between them,

    x_t = (1 - t) x0 + t x1,        d x_t / dt = u = x1 - x0.

The marginal velocity field v*(x, t) = E[x1 - x0 | x_t = x] carries N(0, I) at t = 0 to the data
distribution at t = 1 (integrate dx/dt = v*(x, t)). It is the minimiser over v of the conditional
flow-matching objective, a plain regression on pairs (x0, x1) with t ~ U[0, 1]:

    L(theta) = E_{t, x0, x1} || v_theta(x_t, t) - (x1 - x0) ||^2,

whose gradient equals that of E || v_theta(x_t, t) - v*(x_t, t) ||^2 (the two differ by a constant in
theta). Here the squared norm is averaged over the D dimensions (a per-dimension mean squared error),
so learning rates do not depend on the image size.

Class-conditional nets get labels y, replaced by the null label with probability ``label_dropout``, so
one network learns v(x, t | y) and the unconditional v(x, t | null) for classifier-free guidance.

The times need not be uniform: any density on (0, 1) with full support keeps the same minimiser v*
(it reweights the regression over t, not its target). ``logit_normal`` draws t = sigmoid(n),
n ~ N(0, 1) (Esser et al. 2024, "Scaling Rectified Flow Transformers", sec. 3.1: their logit-normal
sampler with m = 0, s = 1, the best of their time samplers), which spends the training steps on the
middle of the path, where the velocity is hardest to predict, rather than near t = 0 (the mean image)
and t = 1 (the data point itself).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_gen.data.pixels import dequantize, to_signed
from lightning_gen.errors import ConfigValueError, check_range


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t x1 for times ``t`` ``[N]`` and points ``[N, ...]``."""
    t = t.view(-1, *([1] * (x1.dim() - 1)))  # (N, 1, ..., 1)
    return (1 - t) * x0 + t * x1


def drop_labels(labels: Tensor, probability: float, null_label: int, generator: torch.Generator) -> Tensor:
    """Each label replaced by ``null_label`` with ``probability`` (one uniform draw per label)."""
    dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < probability  # (N,)
    return torch.where(dropped, torch.full_like(labels, null_label), labels)


TIME_DISTRIBUTIONS = ("uniform", "logit_normal")


def check_time_distribution(name: str) -> None:
    if name not in TIME_DISTRIBUTIONS:
        raise ConfigValueError(f"time_distribution must be one of {', '.join(TIME_DISTRIBUTIONS)}, got {name!r}")


def draw_times(n: int, distribution: str, generator: torch.Generator, device, dtype) -> Tensor:
    """``[n]`` times in (0, 1): U[0, 1), or sigmoid(N(0, 1)) for ``logit_normal``."""
    check_time_distribution(distribution)
    if distribution == "uniform":
        return torch.rand(n, generator=generator, device=device, dtype=dtype)
    return torch.sigmoid(torch.randn(n, generator=generator, device=device, dtype=dtype))


def flow_matching_loss(net: nn.Module, x1: Tensor, labels: Tensor | None, generator: torch.Generator,
                       time_distribution: str = "uniform") -> Tensor:
    """``[N]``: || v(x_t, t, y) - (x1 - x0) ||^2 / D per point, for data ``x1`` ``[N, ...]`` (already in the
    model's space), t from ``time_distribution`` then x0 ~ N(0, I), both drawn from ``generator`` in that
    order."""
    t = draw_times(len(x1), time_distribution, generator, x1.device, x1.dtype)  # (N,)
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)  # (N, ...)
    target = x1 - x0  # (N, ...) the path's velocity
    prediction = net(interpolate(x0, x1, t), t, labels)  # (N, ...)
    return (prediction.float() - target.float()).square().flatten(1).mean(1)


class RectifiedFlowLoss:
    """The flow-matching loss of 8-bit images: ``loss(net, images, labels, generator) -> [N]``.

    images ``[N, C, H, W]`` in [0, 1] (8-bit levels) -> x1 in [-1, 1): uniform dequantisation
    (k + u) / 256, u ~ U[0, 1) (``data/pixels.py: dequantize``), then 2 y - 1. Training on dequantised
    data fits the continuous density whose likelihood ``FlowMatching.log_likelihood`` bounds the discrete
    one with; ``dequantize=False`` trains on the 256 levels themselves (2 k / 255 - 1).

    Args:
        label_dropout: probability of replacing a label by the null label (classifier-free guidance).
        num_classes: the classes of a conditional net (its null label is ``num_classes``); None:
            unconditional, labels are ignored.
        dequantize: add uniform dequantisation noise before scaling.
        time_distribution: how t is drawn: "uniform" or "logit_normal" (see the module's docstring).

    Random draws, all from ``generator``, in this order: dequantisation noise ``[N, C, H, W]``, label
    dropout ``[N]`` (conditional with ``label_dropout > 0`` only), times ``[N]``, noise ``[N, C, H, W]``.
    """

    def __init__(self, label_dropout: float = 0.0, num_classes: int | None = None, dequantize: bool = True,
                 time_distribution: str = "uniform"):
        check_range(at_least=0, below=1, label_dropout=label_dropout)
        check_time_distribution(time_distribution)
        check_range(at_least=1, num_classes=num_classes)
        if label_dropout > 0 and num_classes is None:
            raise ConfigValueError(f"label_dropout ({label_dropout}) applies to class-conditional models; "
                                   "set num_classes or label_dropout: 0")
        self.label_dropout, self.num_classes, self.dequantize = label_dropout, num_classes, dequantize
        self.time_distribution = time_distribution

    def data_to_x1(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """images in [0, 1] -> x1 in [-1, 1) (dequantised when ``dequantize``)."""
        return to_signed(dequantize(images, generator) if self.dequantize else images)

    def __call__(self, net: nn.Module, images: Tensor, labels: Tensor | None,
                 generator: torch.Generator) -> Tensor:
        x1 = self.data_to_x1(images, generator)  # (N, C, H, W)
        if self.num_classes is None:
            labels = None
        elif labels is not None and self.label_dropout > 0:
            labels = drop_labels(labels, self.label_dropout, self.num_classes, generator)
        return flow_matching_loss(net, x1, labels, generator, self.time_distribution)
