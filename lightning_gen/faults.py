"""A fault-injection seam for the crash tests: ``LIGHTNING_GEN_KILL_AT=<point>[:<n>]`` makes the process
SIGKILL itself the n-th time (default 1st) it reaches ``kill_point(<point>)``.

The points sit where a crash is most likely to do damage: half-way through writing a checkpoint, between
writing it and moving it into place, inside an evaluation, while writing pictures, inside an optimizer step.
Unset (always, outside tests), ``kill_point`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

from lightning_gen.errors import ConfigValueError

KILL_AT_VARIABLE = "LIGHTNING_GEN_KILL_AT"
KILL_POINTS = ("checkpoint_half_written", "checkpoint_before_rename", "evaluation", "pictures", "optimizer_step")
_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    wanted = os.environ.get(KILL_AT_VARIABLE)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point not in KILL_POINTS:
        raise ConfigValueError(f"{KILL_AT_VARIABLE}={wanted!r}: unknown point; choose one of {', '.join(KILL_POINTS)}")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
