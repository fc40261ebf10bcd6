"""An MLP velocity field for low-dimensional points: ``v = net(x, t)`` with ``x, v`` of shape ``[N, D]``.

For flow matching on the toy 2-D mixtures (``data/toy.py``) and for tests: the input is the point joined
with a sinusoidal embedding of the time, then ``depth`` SiLU layers of ``hidden`` units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_gen.errors import check_range
from lightning_gen.nets.unet import sinusoidal_embedding


class VelocityMLP(nn.Module):
    """``(x [N, D], t [N] in [0, 1], labels=None) -> [N, D]`` (``labels`` accepted and ignored: unconditional).

    Args:
        dim: D, the dimension of the points.
        hidden: units per hidden layer.
        depth: hidden layers.
        time_features: size of the time embedding (sin and cos at ``time_features / 2`` frequencies of
            ``t`` itself, no 1000x scale: a small MLP sees slow features better).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_features: int = 16):
        super().__init__()
        check_range(at_least=1, dim=dim, hidden=hidden, depth=depth)
        check_range(at_least=2, time_features=time_features)
        self.time_features = time_features
        layers: list[nn.Module] = []
        width = dim + time_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        time = sinusoidal_embedding(t.expand(len(x)).to(x.dtype), self.time_features, scale=1.0)  # (N, F)
        return self.net(torch.cat([x, time], dim=1))  # (N, D)
