"""Ways to draw from a trained network. ``ode``: integrate a velocity field v(x, t) from noise (t = 0) to
data (t = 1) with a given number of function evaluations (NFE): Euler, Heun, adaptive dopri5."""

from lightning_gen.samplers.ode import ODE_SAMPLERS, ODESolution, adaptive, check_sampler, euler, heun

__all__ = ["ODE_SAMPLERS", "ODESolution", "adaptive", "check_sampler", "euler", "heun"]
