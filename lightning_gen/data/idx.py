"""Reading IDX files (the MNIST family's format), plain or gzipped, with errors that say what is wrong.

IDX layout: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one
big-endian int32 per dimension, then the data.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from lightning_gen.errors import DatasetFileError

_UINT8 = 0x08


def read_idx(path: Path, expected_ndim: int, fix_hint: str) -> torch.Tensor:
    """Read a uint8 IDX file (optionally ``.gz``) into a tensor; raise ``DatasetFileError`` if damaged."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DatasetFileError(f"cannot read {path}: {error}.\n{fix_hint}") from error
    if len(raw) < 4:
        raise DatasetFileError(f"{path} is truncated ({len(raw)} bytes, no IDX header).\n{fix_hint}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != _UINT8 or ndim != expected_ndim:
        raise DatasetFileError(
            f"{path} is not a uint8 IDX file with {expected_ndim} dimensions "
            f"(header says type 0x{dtype_code:02x}, {ndim} dimensions).\n{fix_hint}"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DatasetFileError(f"{path} is truncated inside its header.\n{fix_hint}")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = header_size + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetFileError(
            f"{path} has {len(raw)} bytes but its header {tuple(shape)} needs {expected}: "
            f"the file is truncated or corrupt.\n{fix_hint}"
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)
    return torch.from_numpy(data.copy())
