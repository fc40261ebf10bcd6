"""Invertible layers for image normalizing flows (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018).

Every layer maps ``x [N, C, H, W]`` to ``y`` and back:

    forward(x) -> (y, logdet)     logdet = log |det dy/dx|, one value per image: [N] (nats)
    inverse(y) -> x

so that a chain of layers gives log p(x) = log p(z) + sum of the layers' logdets (change of variables).
Each layer's log-determinant is cheap by construction (docs/models/flow.md derives them):

- ``Squeeze``: a permutation of the entries, logdet 0.
- ``ActNorm``: y = (x + b) * exp(s) per channel, logdet = H W sum_c s_c.
- ``InvertibleConv1x1``: y[:, :, i, j] = W x[:, :, i, j] with W = P L (U + diag(sign * exp(log_s))),
  logdet = H W sum_c log_s_c (the LU factors' diagonal; P and L have determinant +-1 and 1).
- ``AffineCoupling``: half of the entries pass unchanged and parameterise an elementwise affine map of the
  other half, y_b = x_b * exp(log_s(x_a)) + t(x_a): a triangular Jacobian, logdet = sum log_s.
- ``SplitPrior``: Glow's learned prior of a factored-out part z given the part h that continues,
  z ~ N(mu(h), sigma(h)^2), written as the bijection e = (z - mu(h)) / sigma(h) whose e has the flow's
  N(0, I) prior: logdet = -sum log sigma (an affine coupling of z conditioned on h).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gen.errors import ConfigValueError, check_range

COUPLINGS = ("channel", "checkerboard")
ACTNORM_EPS = 1e-6  # added to the variance at initialisation: a constant channel gets a finite scale


class Squeeze(nn.Module):
    """Space to depth: every 2x2 patch becomes 4 channels, ``[N, C, H, W] -> [N, 4C, H/2, W/2]``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        y = x.view(n, c, h // 2, 2, w // 2, 2)  # (N, C, H/2, 2, W/2, 2)
        y = y.permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)  # (N, 4C, H/2, W/2)
        return y, x.new_zeros(n)

    def inverse(self, y: Tensor) -> Tensor:
        n, c4, h2, w2 = y.shape
        x = y.view(n, c4 // 4, 2, 2, h2, w2)  # (N, C, 2, 2, H/2, W/2)
        return x.permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h2, 2 * w2)  # (N, C, H, W)


def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (biased) variance per channel over batch and space, ``[C]`` each, in float32.

    Under torch.distributed the sums are all-reduced, so every process gets the statistics of the union
    of all processes' batches (and so the same ActNorm initialisation)."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    x = x.detach().float()
    sums = torch.cat([x.sum((0, 2, 3)), x.new_tensor([x.numel() / x.shape[1]])])  # (C + 1,): sums, count
    if distributed:
        dist.all_reduce(sums)
    mean, count = sums[:-1] / sums[-1], sums[-1]
    squares = ((x - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3))  # (C,)
    if distributed:
        dist.all_reduce(squares)
    return mean, squares / count


class ActNorm(nn.Module):
    """Per-channel affine map with Glow's data-dependent initialisation.

        y = (x + bias) * exp(log_scale),      logdet = H * W * sum_c log_scale_c

    It starts as the identity; ``initialize(x)`` sets bias = -mean and log_scale = -log std of ``x``'s
    channels, so that the first batch comes out with zero mean and unit variance. The ``initialized``
    buffer is saved in the state dict: a restored layer is never initialised again.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from ``x [N, C, H, W]`` (all processes' batches under DDP)."""
        mean, var = channel_moments(x)
        self.bias.copy_(-mean.view_as(self.bias))
        self.log_scale.copy_(-0.5 * torch.log(var + ACTNORM_EPS).view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = (x + self.bias) * torch.exp(self.log_scale)  # (N, C, H, W)
        logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return y, logdet.expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution, a learned mixing of channels, in LU form.

        W = P @ L @ (U + diag(sign_s * exp(log_s)))     (P a fixed permutation, L unit lower triangular,
                                                          U strictly upper triangular)
        logdet = H * W * sum_c log_s_c                   (O(C) instead of an O(C^3) determinant)

    Initialised at a random rotation (the LU factors of a random orthogonal matrix: logdet 0), drawn from
    ``generator`` (the global RNG when None).
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        rotation, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))  # (C, C)
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diagonal.abs()))

    def weight(self) -> Tensor:
        """The matrix W ``[C, C]``, rebuilt from its factors (only their triangles are used)."""
        eye = torch.eye(len(self.log_s), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = F.conv2d(x, self.weight()[:, :, None, None])  # (N, C, H, W)
        logdet = x.shape[2] * x.shape[3] * self.log_s.sum()
        return y, logdet.expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class AffineCoupling(nn.Module):
    """An affine coupling layer: half of the entries condition an elementwise affine map of the rest.

        y_a = x_a,    y_b = x_b * exp(log_s) + t,    (log_s, t) = net(x_a),    logdet = sum log_s

    ``mask="channel"`` (Glow) splits the channels in two halves; ``"checkerboard"`` (RealNVP) splits the
    pixels by the parity of i + j (the net sees x * mask). ``parity`` swaps the roles of the two halves.
    The scale is bounded, log_s = scale * tanh(raw) (RealNVP), and the net's last convolution starts at
    zero, so the layer starts as the identity.
    """

    def __init__(self, channels: int, hidden: int, mask: str = "channel", parity: int = 0):
        super().__init__()
        if mask not in COUPLINGS:
            raise ConfigValueError(f"unknown coupling {mask!r}; choose one of {COUPLINGS}")
        check_range(at_least=1, hidden=hidden)
        if mask == "channel" and channels < 2:
            raise ConfigValueError(f"a channel coupling needs at least 2 channels, got {channels}; squeeze first")
        self.mask, self.parity, self.half = mask, parity % 2, channels // 2
        if mask == "channel":  # conditioner: first half (parity 0) or second half; the rest is transformed
            conditioner = self.half if self.parity == 0 else channels - self.half
            transformed = channels - conditioner
        else:
            conditioner = transformed = channels
        last = nn.Conv2d(hidden, 2 * transformed, 3, padding=1)
        nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)  # identity at initialisation
        self.net = nn.Sequential(
            nn.Conv2d(conditioner, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            last,
        )
        self.scale = nn.Parameter(torch.ones(1, transformed, 1, 1))

    def _checkerboard(self, x: Tensor) -> Tensor:
        """1 where an entry conditions, 0 where it is transformed: ``[1, 1, H, W]``."""
        rows = torch.arange(x.shape[2], device=x.device).view(-1, 1)
        cols = torch.arange(x.shape[3], device=x.device).view(1, -1)
        return ((rows + cols + self.parity) % 2 == 0).to(x.dtype).view(1, 1, *x.shape[2:])

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x[:, : self.half], x[:, self.half:]
        return (first, second) if self.parity == 0 else (second, first)  # (conditioner, transformed)

    def _merge(self, conditioner: Tensor, transformed: Tensor) -> Tensor:
        return torch.cat([conditioner, transformed] if self.parity == 0 else [transformed, conditioner], 1)

    def _scale_shift(self, conditioner: Tensor) -> tuple[Tensor, Tensor]:
        raw_log_s, t = self.net(conditioner).chunk(2, dim=1)  # (N, C_b, H, W) each
        return self.scale * torch.tanh(raw_log_s), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "checkerboard":
            keep = self._checkerboard(x)  # (1, 1, H, W)
            log_s, t = self._scale_shift(x * keep)
            log_s, t = log_s * (1 - keep), t * (1 - keep)  # zero where x conditions: y = x there
            return x * torch.exp(log_s) + t, log_s.flatten(1).sum(1)
        conditioner, transformed = self._split(x)
        log_s, t = self._scale_shift(conditioner)
        return self._merge(conditioner, transformed * torch.exp(log_s) + t), log_s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        if self.mask == "checkerboard":
            keep = self._checkerboard(y)
            log_s, t = self._scale_shift(y * keep)  # y * keep == x * keep
            log_s, t = log_s * (1 - keep), t * (1 - keep)
            return (y - t) * torch.exp(-log_s)
        conditioner, transformed = self._split(y)
        log_s, t = self._scale_shift(conditioner)
        return self._merge(conditioner, (transformed - t) * torch.exp(-log_s))


class SplitPrior(nn.Module):
    """The learned Gaussian of a factored-out part given the kept part (Glow, Kingma & Dhariwal 2018,
    "split" with a learned prior): ``forward(kept, factored) -> (e, logdet)``, ``inverse(kept, e) -> factored``.

        (mu, log_sigma) = conv(kept),   e = (factored - mu) * exp(-log_sigma),   logdet = -sum log_sigma

    so log N(factored; mu, sigma^2) = log N(e; 0, I) + logdet. Without it the factored-out entries are
    independent N(0, 1) noise at sampling time, whatever the rest of the image: samples come out in
    fragments. log_sigma is bounded as in the couplings (scale * tanh), and the convolution starts at
    zero: at initialisation this is the fixed standard normal.
    """

    def __init__(self, kept_channels: int, factored_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(kept_channels, 2 * factored_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight), nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.ones(1, factored_channels, 1, 1))

    def _mean_log_sigma(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.conv(kept).chunk(2, dim=1)  # (N, C_f, H, W) each
        return mean, self.scale * torch.tanh(raw)

    def forward(self, kept: Tensor, factored: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_sigma = self._mean_log_sigma(kept)
        return (factored - mean) * torch.exp(-log_sigma), -log_sigma.flatten(1).sum(1)

    def inverse(self, kept: Tensor, e: Tensor) -> Tensor:
        mean, log_sigma = self._mean_log_sigma(kept)
        return e * torch.exp(log_sigma) + mean
