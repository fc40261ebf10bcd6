"""A multi-scale image normalizing flow (RealNVP's architecture with Glow's steps).

    x [N, C, H, W] -> z [N, D],  D = C * H * W,   log p(x) = log N(z; 0, I) + sum of the layers' logdets

L levels; each level squeezes (2x2 space to depth), runs K steps of (ActNorm, InvertibleConv1x1,
AffineCoupling), and all but the last factor out half of their channels as latents: those parts go to the
prior (with ``split_prior``, Glow's learned Gaussian given the half that continues, ``SplitPrior``; else
straight to N(0, I)) and the rest continue at the next, coarser level. For Fashion-MNIST with 2 levels:

    1x28x28 -> squeeze 4x14x14 -> K steps -> factor out 2x14x14 -> squeeze 8x7x7 -> K steps -> 8x7x7

z is the concatenation of every level's factored-out part, flattened, then the last level's output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.nets.flow_layers import ActNorm, AffineCoupling, InvertibleConv1x1, SplitPrior, Squeeze


class MultiScaleFlow(nn.Module):
    """The bijection x -> z of a multi-scale flow, with its log-determinant.

    Args:
        data_shape: (C, H, W); H and W must be divisible by 2**levels.
        levels: number of squeeze levels L.
        steps_per_level: flow steps K per level.
        hidden: width of the coupling networks.
        coupling: "channel" (Glow) or "checkerboard" (RealNVP) coupling masks.
        split_prior: a learned Gaussian prior of each factored-out part given the part that continues (Glow);
            False: a fixed N(0, I) (RealNVP).
    """

    def __init__(self, data_shape: tuple[int, int, int], levels: int = 2, steps_per_level: int = 4,
                 hidden: int = 64, coupling: str = "channel", split_prior: bool = True):
        super().__init__()
        check_range(at_least=1, levels=levels, steps_per_level=steps_per_level, hidden=hidden)
        channels, height, width = data_shape
        side = 2**levels
        if height % side or width % side:
            raise ConfigValueError(
                f"a flow with {levels} levels squeezes the image {levels} times, so its height and width must be "
                f"divisible by {side}, but the data is {height}x{width}; use fewer levels (model.init_args.levels)"
            )
        self.data_shape = (channels, height, width)
        self.levels = nn.ModuleList()
        self.split_priors = nn.ModuleList()  # one per factoring level, when split_prior
        self.latent_shapes: list[tuple[int, int, int]] = []  # of each factored-out part, then of the last output
        for level in range(levels):
            channels, height, width = 4 * channels, height // 2, width // 2
            layers: list[nn.Module] = [Squeeze()]
            for step in range(steps_per_level):
                layers += [ActNorm(channels), InvertibleConv1x1(channels),
                           AffineCoupling(channels, hidden, coupling, parity=step)]
            self.levels.append(nn.ModuleList(layers))
            if level < levels - 1:
                self.latent_shapes.append((channels - channels // 2, height, width))
                if split_prior:
                    self.split_priors.append(SplitPrior(channels // 2, channels - channels // 2))
                channels //= 2
        self.latent_shapes.append((channels, height, width))
        self.latent_sizes = [c * h * w for c, h, w in self.latent_shapes]

    @property
    def num_dims(self) -> int:
        return sum(self.latent_sizes)

    def actnorms(self) -> list[ActNorm]:
        return [layer for layer in self.modules() if isinstance(layer, ActNorm)]

    def is_initialized(self) -> bool:
        """Whether every ActNorm has had its data-dependent initialisation (a host sync: call rarely)."""
        return all(bool(layer.initialized) for layer in self.actnorms())

    def _run(self, x: Tensor, initialize: bool) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(len(x))  # (N,) nats
        latents = []
        h = x  # (N, C, H, W)
        for index, layers in enumerate(self.levels):
            for layer in layers:
                if initialize and isinstance(layer, ActNorm) and not layer.initialized:
                    layer.initialize(h)
                h, layer_logdet = layer(h)  # (N, C_l, H_l, W_l): H_l = H / 2^(l+1)
                logdet = logdet + layer_logdet
            if index < len(self.levels) - 1:
                keep = h.shape[1] // 2
                factored, h = h[:, keep:], h[:, :keep]  # (N, C_l - keep, H_l, W_l), (N, keep, H_l, W_l)
                if self.split_priors:
                    factored, prior_logdet = self.split_priors[index](h, factored)
                    logdet = logdet + prior_logdet
                latents.append(factored.flatten(1))
        latents.append(h.flatten(1))
        return torch.cat(latents, 1), logdet  # (N, D), (N,)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [N, C, H, W]`` -> ``(z [N, D], log |det dz/dx| [N])`` (nats)."""
        return self._run(x, initialize=False)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Glow's data-dependent initialisation: one pass over ``x`` in which each ActNorm not yet
        initialised is set from the batch it sees, so its output has zero mean and unit variance."""
        self._run(x, initialize=True)

    def inverse(self, z: Tensor) -> Tensor:
        """``z [N, D]`` -> ``x [N, C, H, W]``, in one pass through the levels in reverse."""
        parts = list(z.split(self.latent_sizes, dim=1))
        h = parts.pop().view(len(z), *self.latent_shapes[-1])  # the last level's output
        for index in reversed(range(len(self.levels))):
            if index < len(self.levels) - 1:
                factored = parts.pop().view(len(z), *self.latent_shapes[index])
                if self.split_priors:
                    factored = self.split_priors[index].inverse(h, factored)
                h = torch.cat([h, factored], 1)  # (N, C_l, H_l, W_l)
            for layer in reversed(self.levels[index]):
                h = layer.inverse(h)
        return h  # (N, C, H, W)
