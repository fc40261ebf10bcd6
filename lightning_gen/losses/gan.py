"""GAN objectives. D outputs an unnormalised score s; for the probabilistic objectives D(x) = sigmoid(s).

Each objective gives the discriminator's loss (minimised by D) and the generator's loss (minimised
by G) from the scores of a real batch ``real`` ``[N]`` and a generated batch ``fake`` ``[M]``, computed in
float32 whatever D's precision (``float32_region``). The penalties on D's input gradient take the AMP
grad scaler of ``16-mixed`` (``input_gradient``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gen.errors import ConfigValueError
from lightning_gen.losses.precision import float32_region, to_float32


class GANObjective:
    name: str

    def __init_subclass__(cls, **kwargs):
        # every objective's losses are log-probabilities or margins of D's scores: computed in float32
        super().__init_subclass__(**kwargs)
        for method in ("discriminator_loss", "generator_loss"):
            if method in vars(cls):
                setattr(cls, method, float32_region(vars(cls)[method]))

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        raise NotImplementedError

    def generator_loss(self, fake: Tensor) -> Tensor:
        raise NotImplementedError


@float32_region
def minimax_value(real: Tensor, fake: Tensor) -> Tensor:
    """V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))], with log D = logsigmoid(s) and
    log(1 - D) = logsigmoid(-s). D maximises it, G minimises it (Goodfellow et al. 2014)."""
    return F.logsigmoid(real).mean() + F.logsigmoid(-fake).mean()


class Minimax(GANObjective):
    """The original saturating game: D maximises V, G minimises E[log(1 - D(G(z)))] (whose gradient
    vanishes when D confidently rejects G's samples early in training)."""

    name = "minimax"

    def discriminator_loss(self, real, fake):
        return -minimax_value(real, fake)

    def generator_loss(self, fake):
        return F.logsigmoid(-fake).mean()


class NonSaturating(Minimax):
    """Same D; G maximises E[log D(G(z))] instead, the same fixed point with strong early gradients."""

    name = "non_saturating"

    def generator_loss(self, fake):
        return -F.logsigmoid(fake).mean()


class Hinge(GANObjective):
    """D: E[max(0, 1 - s(x))] + E[max(0, 1 + s(G(z)))]; G: -E[s(G(z))] (Lim & Ye 2017; Miyato et al. 2018)."""

    name = "hinge"

    def discriminator_loss(self, real, fake):
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def generator_loss(self, fake):
        return -fake.mean()


class LeastSquares(GANObjective):
    """LSGAN (Mao et al. 2017), targets a=0, b=1, c=1: D: 1/2 E[(s(x)-1)^2] + 1/2 E[s(G(z))^2];
    G: 1/2 E[(s(G(z))-1)^2]."""

    name = "least_squares"

    def discriminator_loss(self, real, fake):
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()

    def generator_loss(self, fake):
        return 0.5 * ((fake - 1) ** 2).mean()


class Wasserstein(GANObjective):
    """WGAN critic (Arjovsky et al. 2017): D maximises E[s(x)] - E[s(G(z))]; G maximises E[s(G(z))].
    Needs a Lipschitz constraint: the model adds the gradient penalty (Gulrajani et al. 2017)."""

    name = "wasserstein"
    needs_gradient_penalty = True

    def discriminator_loss(self, real, fake):
        return fake.mean() - real.mean()

    def generator_loss(self, fake):
        return -fake.mean()


OBJECTIVES = {cls.name: cls for cls in (Minimax, NonSaturating, Hinge, LeastSquares, Wasserstein)}


def build_objective(name: str) -> GANObjective:
    if name not in OBJECTIVES:
        raise ConfigValueError(f"unknown GAN objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]()


def input_gradient(discriminator, x: Tensor, scaler=None) -> Tensor:
    """grad_x sum_i D(x_i), shaped and typed like ``x`` (float32 in training), with its graph kept so that
    a penalty on it trains D (each score depends on its own input only: D has no batch norm under a penalty).

    ``scaler``: the AMP grad scaler of ``16-mixed`` (None otherwise). float16 gradients of small
    magnitude underflow, so the backward pass runs on the scaled mean score, s/N per sample (the
    magnitude the scaler calibrates on the mean losses), and the result is multiplied by N/s in float32
    (PyTorch's AMP recipe for gradient penalties). If the scaled pass overflows, the gradient and the
    penalty are not finite; the training backward carries that into D's weight gradients, and the scaler
    skips the step and lowers its scale (``GenerativeModule.guard_finite``'s ``gradient_terms``).
    """
    scores = to_float32(discriminator(x))  # (N,)
    if scaler is None:
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
        return to_float32(grad)
    (scaled,) = torch.autograd.grad(scaler.scale(scores.mean()), x, create_graph=True)
    # the scale as a tensor on x's device (scaler.scale of a one): unlike get_scale(), no device sync
    scale = scaler.scale(torch.ones((), device=x.device))
    return to_float32(scaled) * (scores.numel() / scale)


def gradient_penalty(discriminator, real: Tensor, fake: Tensor, generator: torch.Generator | None = None,
                     scaler=None) -> Tensor:
    """WGAN-GP: E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat = t x + (1 - t) G(z), t ~ U[0, 1] per sample.
    ``scaler``: the AMP grad scaler under ``16-mixed`` (``input_gradient``)."""
    shape = (len(real),) + (1,) * (real.dim() - 1)
    t = torch.rand(shape, generator=generator, device=real.device, dtype=real.dtype)
    mixed = (t * real + (1 - t) * fake).requires_grad_(True)  # real's dtype (a 16-bit fake is promoted)
    grad = input_gradient(discriminator, mixed, scaler)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(discriminator, real: Tensor, scaler=None) -> Tensor:
    """R1 (Mescheder et al. 2018): 1/2 E[||grad_x D(x)||^2] on real data (multiplied by gamma outside).
    ``scaler``: the AMP grad scaler under ``16-mixed`` (``input_gradient``)."""
    grad = input_gradient(discriminator, real.detach().requires_grad_(True), scaler)
    return 0.5 * grad.flatten(1).pow(2).sum(dim=1).mean()
