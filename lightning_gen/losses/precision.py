"""Float32 regions: log-probabilities stay in float32 under mixed precision (``--trainer.precision bf16-mixed``).

Autocast runs convolutions and matrix products in 16 bits, and on the CPU the elementwise maths that
follows a 16-bit tensor stays in 16 bits. A log-probability must not: bfloat16 keeps 8 significant bits,
so in [0.5, 1) a discretised logistic's 8-bit bin, 1/255 wide, is one bfloat16 step (2^-8), a
near-uniform 256-way log-softmax (-5.5 nats) is rounded to 1/32 nat, and an image's sum of ~2000 nats to
8 nats. A function decorated with ``float32_region`` gets its 16-bit tensor arguments in float32 and runs
with autocast off, so the error left is that of the network's activations. float32 and float64 arguments
pass unchanged, and outside autocast the wrapper only checks dtypes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])

_HALF_DTYPES = (torch.float16, torch.bfloat16)
_regions_on = True  # off only inside ``float32_regions_disabled`` (measuring what the regions buy)


def to_float32(value: Any) -> Any:
    """A float16/bfloat16 tensor in float32; anything else (float32, float64, not a tensor) unchanged."""
    return value.float() if isinstance(value, Tensor) and value.dtype in _HALF_DTYPES else value


def float32_region(function: F) -> F:
    """Decorator: call ``function`` with its float16/bfloat16 tensor arguments cast to float32 and autocast
    disabled on their device. Gradients flow through the casts back to the 16-bit network outputs."""

    @functools.wraps(function)
    def in_float32(*args: Any, **kwargs: Any) -> Any:
        if not _regions_on:
            return function(*args, **kwargs)
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), "cpu")
        args = tuple(to_float32(a) for a in args)
        kwargs = {name: to_float32(value) for name, value in kwargs.items()}
        if not torch.is_autocast_enabled(device):
            return function(*args, **kwargs)
        with torch.autocast(device_type=device, enabled=False):
            return function(*args, **kwargs)

    return in_float32  # type: ignore[return-value]


@contextlib.contextmanager
def float32_regions_disabled() -> Iterator[None]:
    """Run every ``float32_region`` function as written, in whatever precision its arguments have: the
    control that shows what the regions are for (tests, measurements). Never used in training."""
    global _regions_on
    previous, _regions_on = _regions_on, False
    try:
        yield
    finally:
        _regions_on = previous
