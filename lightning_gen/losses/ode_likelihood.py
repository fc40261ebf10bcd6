"""The log-density of a continuous normalising flow dx/dt = v(x, t) by the instantaneous change of
variables (Chen et al. 2018, "Neural Ordinary Differential Equations"; Grathwohl et al. 2019, FFJORD).

Along a solution x_t of the ODE, the density p_t of the flow's marginals obeys

    d/dt log p_t(x_t) = -div v(x_t, t) = -tr(dv/dx (x_t, t)),

so for the data end x1 (t = 1) and the noise end x0 (t = 0, p_0 = N(0, I)):

    log p_1(x1) = log N(x0; 0, I) - int_0^1 div v(x_t, t) dt.

Both x0 and the integral come from one backward integration (t = 1 -> 0) of the augmented state
s = (x, I) with ds/dt = (v(x, t), div v(x, t)) from s(1) = (x1, 0): then I(0) = -int_0^1 div v dt and
log p_1(x1) = log N(x(0)) + I(0).

The divergence is either exact (sum over the D coordinates of dv_i/dx_i: D backward passes, for tiny
inputs and tests) or Hutchinson's unbiased estimate tr(A) = E[eps^T A eps] for probes with E[eps eps^T] = I
(Rademacher +-1 or standard Gaussian), one vector-Jacobian product per probe. Each of the K probes is
drawn once and held fixed along the whole path (FFJORD's practice), so each gives an independent unbiased
estimate of log p_1(x1) on the same trajectory; their mean is the estimate and their standard deviation
over sqrt(K) its standard error. That error covers the trace estimator's noise only, not the ODE solver's
discretisation error (a deterministic bias: compare NFEs).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.samplers.ode import ODE_SAMPLERS, Velocity, check_sampler

PROBE_DISTRIBUTIONS = ("rademacher", "gaussian")


def standard_normal_log_density(x: Tensor) -> Tensor:
    """log N(x; 0, I) per point of ``x`` ``[N, ...]``: ``[N]`` nats."""
    d = x[0].numel()
    return -0.5 * x.flatten(1).square().sum(1) - 0.5 * d * math.log(2 * math.pi)


def exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """div v = sum_i dv_i/dx_i per point, for ``v = f(x)`` computed with ``x`` requiring grad: ``[N, 1]``.
    D backward passes (each gives one row of the Jacobian for every point)."""
    v_flat = v.flatten(1)  # (N, D)
    total = torch.zeros(len(x), device=x.device, dtype=v.dtype)
    for i in range(v_flat.shape[1]):
        (row,) = torch.autograd.grad(v_flat[:, i].sum(), x, retain_graph=True)  # (N, ...) = dv_i/dx
        total = total + row.flatten(1)[:, i]
    return total[:, None]


def hutchinson_divergence(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """eps_k^T (dv/dx) eps_k for each probe ``probes[k]`` (``[K, N, ...]``, the shape of ``x`` per probe):
    ``[N, K]``, one vector-Jacobian product per probe."""
    estimates = []
    for eps in probes:
        (eps_jacobian,) = torch.autograd.grad(v, x, eps, retain_graph=True)  # (N, ...) = eps^T dv/dx
        estimates.append((eps_jacobian * eps).flatten(1).sum(1))  # (N,)
    return torch.stack(estimates, dim=1)  # (N, K)


def draw_probes(k: int, like: Tensor, distribution: str, generator: torch.Generator | None) -> Tensor:
    """``[K, *like.shape]`` probes with E[eps eps^T] = I: Rademacher (+-1) or standard Gaussian."""
    shape = (k, *like.shape)
    if distribution == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return bits.to(like.dtype) * 2 - 1
    if distribution == "gaussian":
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    raise ConfigValueError(f"unknown probe distribution {distribution!r}; choose one of {PROBE_DISTRIBUTIONS}")


class LogLikelihood(NamedTuple):
    log_density: Tensor  # [N] nats: log p_1(x1), the mean over the probes (or exact)
    standard_error: Tensor  # [N] nats: of the trace estimator (0 for the exact divergence; NaN for one probe)
    x0: Tensor  # [N, ...] the noise x1 flows back to
    nfe: int  # evaluations of the velocity field made by the solver


def ode_log_likelihood(velocity: Velocity, x1: Tensor, nfe: int = 32, solver: str = "heun",
                       probes: int | None = 4, probe_distribution: str = "rademacher",
                       generator: torch.Generator | None = None, **solver_options) -> LogLikelihood:
    """log p_1(x1) of the flow dx/dt = ``velocity(x, t)`` from N(0, I) at t = 0, for points ``x1`` ``[N, ...]``.

    Args:
        nfe: function evaluations of the solver (``samplers/ode.py``: fixed for euler/heun, the most
            allowed for dopri5).
        solver: a name of ``ODE_SAMPLERS``.
        probes: K probes of Hutchinson's estimator (at least 1; with one the standard error is NaN), or
            None for the exact divergence.
        probe_distribution: "rademacher" or "gaussian".
        generator: draws the probes ``[K, N, ...]`` (once, before integrating).
        solver_options: passed to the solver (e.g. rtol, atol for dopri5).

    Returns ``LogLikelihood`` (nats per point). Gradients are taken inside; no graph is kept.
    """
    check_sampler(solver)
    check_range(at_least=1, probes=probes)
    d = x1[0].numel()
    eps = None if probes is None else draw_probes(probes, x1, probe_distribution, generator)  # (K, N, ...)
    columns = 1 if eps is None else len(eps)

    def augmented(state: Tensor, t: Tensor) -> Tensor:
        """ds/dt for s = (x flattened, I_1..I_K) ``[N, D + K]``: (v, div v per probe)."""
        # gradients even when called under no_grad or inference_mode (Lightning's evaluation loops)
        with torch.inference_mode(False), torch.enable_grad():
            x = state[:, :d].clone().view_as(x1).requires_grad_(True)  # (N, ...) a normal tensor, not an inference one
            v = velocity(x, t)  # (N, ...)
            if not v.requires_grad:  # a field that does not depend on x (e.g. zero) has no divergence
                divergence = v.new_zeros(len(v), columns)
            elif eps is None:
                divergence = exact_divergence(v, x)  # (N, 1)
            else:
                divergence = hutchinson_divergence(v, x, eps)  # (N, K)
        return torch.cat([v.detach().flatten(1), divergence.detach().to(state.dtype)], dim=1)  # (N, D + K)

    start = torch.cat([x1.detach().flatten(1), x1.new_zeros(len(x1), columns)], dim=1)  # (N, D + K) at t = 1
    solution = ODE_SAMPLERS[solver](augmented, start, nfe, t_start=1.0, t_end=0.0, **solver_options)
    x0 = solution.x[:, :d].view_as(x1)  # (N, ...)
    per_probe = standard_normal_log_density(x0)[:, None] + solution.x[:, d:]  # (N, K): log N(x0) - int div dt
    estimate = per_probe.mean(1)  # (N,)
    if eps is None:
        error = torch.zeros_like(estimate)
    elif columns == 1:
        error = torch.full_like(estimate, float("nan"))
    else:
        error = per_probe.std(1) / math.sqrt(columns)  # (N,) standard error of the mean over the probes
    return LogLikelihood(estimate, error, x0, solution.nfe)

