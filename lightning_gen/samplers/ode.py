"""ODE samplers: integrate dx/dt = v(x, t) from ``t_start`` to ``t_end`` (default 0 -> 1, noise -> data).

Each sampler is a function of the velocity field ``velocity(x, t) -> dx/dt`` (``x`` ``[N, ...]``, ``t`` a
0-dim tensor of ``x``'s dtype and device) and of ``nfe``, the number of function evaluations (calls of
``velocity``) it may spend; it returns the state at ``t_end`` and the NFE it really used. Nothing else
is assumed about the field, so the same functions integrate the likelihood's augmented state
(``losses/ode_likelihood.py``) backwards, from data to noise.

- ``euler``: ``nfe`` steps of x <- x + h v(x, t) on a uniform grid (first order).
- ``heun``: Heun's method (explicit trapezoid, second order), two evaluations per step:
      d0 = v(x, t),  x~ = x + h d0,  d1 = v(x~, t + h),  x <- x + h (d0 + d1) / 2.
  ``nfe`` counts evaluations honestly: an even ``nfe`` is ``nfe / 2`` Heun steps; an odd one is
  ``(nfe + 1) / 2`` steps whose last is an Euler step (one evaluation), as in Karras et al. 2022 (EDM),
  Algorithm 1. So ``heun(nfe=1)`` is ``euler(nfe=1)``.
- ``adaptive``: Dormand-Prince 5(4) with step-size control through ``torchdiffeq.odeint`` (``rtol``,
  ``atol``); the NFE used is counted, and ``nfe`` is the most it may use (an error beyond it).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from lightning_gen.errors import ConfigValueError, LightningGenError, check_range

Velocity = Callable[[Tensor, Tensor], Tensor]  # v(x [N, ...], t []) -> dx/dt [N, ...]


class ODESolution(NamedTuple):
    x: Tensor  # the state at t_end
    nfe: int  # calls of the velocity field made


def _times(steps: int, t_start: float, t_end: float, like: Tensor) -> Tensor:
    """``steps + 1`` uniformly spaced times from ``t_start`` to ``t_end`` (``[steps + 1]``, ``like``'s dtype)."""
    return torch.linspace(t_start, t_end, steps + 1, dtype=like.dtype, device=like.device)


def euler(velocity: Velocity, x: Tensor, nfe: int, t_start: float = 0.0, t_end: float = 1.0) -> ODESolution:
    """``nfe`` Euler steps: x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k)."""
    check_range(at_least=1, nfe=nfe)
    times = _times(nfe, t_start, t_end, x)
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * velocity(x, t)
    return ODESolution(x, nfe)


def heun(velocity: Velocity, x: Tensor, nfe: int, t_start: float = 0.0, t_end: float = 1.0) -> ODESolution:
    """Heun's second-order method with ``nfe`` evaluations: ceil(nfe / 2) uniform steps, each with a
    corrector evaluation except, for an odd ``nfe``, the last (an Euler step)."""
    check_range(at_least=1, nfe=nfe)
    steps = (nfe + 1) // 2
    times = _times(steps, t_start, t_end, x)
    used = 0
    for k, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        h = t_next - t
        d0 = velocity(x, t)
        used += 1
        if k == steps - 1 and nfe % 2:  # the odd evaluation budget ends with a plain Euler step
            x = x + h * d0
            continue
        d1 = velocity(x + h * d0, t_next)
        used += 1
        x = x + h * (d0 + d1) / 2
    return ODESolution(x, used)


class NFEBudgetExceeded(LightningGenError):
    """The adaptive solver needed more function evaluations than it was allowed."""


def adaptive(velocity: Velocity, x: Tensor, nfe: int = 1000, t_start: float = 0.0, t_end: float = 1.0,
             rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5") -> ODESolution:
    """``torchdiffeq.odeint`` with an adaptive step size (``method``, default dopri5) to ``rtol`` / ``atol``.

    Returns the state at ``t_end`` and the number of evaluations the solver made (its error control decides);
    more than ``nfe`` raises ``NFEBudgetExceeded`` naming the tolerances to loosen.
    """
    from torchdiffeq import odeint  # a runtime dependency, imported where it is used

    check_range(at_least=1, nfe=nfe)
    check_range(above=0, rtol=rtol, atol=atol)
    used = 0

    def counted(t: Tensor, state: Tensor) -> Tensor:  # odeint's argument order is (t, y)
        nonlocal used
        used += 1
        if used > nfe:
            raise NFEBudgetExceeded(f"the adaptive ODE solver ({method}, rtol={rtol}, atol={atol}) needed more than "
                                    f"{nfe} function evaluations; loosen rtol/atol or raise the NFE limit")
        return velocity(state, t.to(state.dtype))

    times = torch.tensor([t_start, t_end], dtype=x.dtype, device=x.device)
    path = odeint(counted, x, times, rtol=rtol, atol=atol, method=method)  # (2, N, ...)
    return ODESolution(path[-1], used)


# name -> sampler(velocity, x, nfe, t_start, t_end): a fixed NFE for euler and heun, a limit for dopri5
ODE_SAMPLERS: dict[str, Callable[..., ODESolution]] = {"euler": euler, "heun": heun, "dopri5": adaptive}


def check_sampler(name: str) -> str:
    """``name`` if it is one of ``ODE_SAMPLERS``; otherwise a ``ConfigValueError`` naming the choices."""
    if name not in ODE_SAMPLERS:
        raise ConfigValueError(f"unknown ODE sampler {name!r}; choose one of {', '.join(ODE_SAMPLERS)}")
    return name
