"""Whole-or-absent file writes: every file a run leaves (checkpoints, pictures, cached features,
metrics.json) is written under a temporary sibling name and renamed into place, so a crash, a kill or a
full disk never leaves a truncated file where a complete one is expected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], None], fsync: bool = False) -> None:
    """``write(temporary)`` fills a sibling of ``path`` in the same folder (so the rename cannot cross file
    systems), which then replaces ``path`` in one ``os.replace``; the temporary never outlives the call.
    ``fsync``: also flush the folder entry to disk after the rename (what a checkpoint needs to survive
    a power loss, not only a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if fsync:
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on a folder; the rename itself has happened
        pass
    finally:
        os.close(descriptor)
