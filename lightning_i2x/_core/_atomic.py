"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import numpy as np

__all__ = ["write_bytes", "write_json", "write_npz", "write_npy_chunked"]


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``. The
    temporary file is the writing thread's own, so two threads writing one file never rename each
    other's half (the last complete write wins)."""
    _write_with(path, lambda f: f.write(data))


def _write_with(path: str | os.PathLike, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def write_npy_chunked(path: str | os.PathLike, array: np.ndarray, dtype, rows: int = 256) -> None:
    """``array`` as an .npy file of ``dtype``, converted and written ``rows`` leading-axis slices at
    a time: the file is never assembled in memory, so a large probe costs one chunk, not a copy."""
    array = np.asarray(array)
    dtype = np.dtype(dtype)

    def write(f) -> None:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                                 "shape": tuple(array.shape)})
        for s in range(0, array.shape[0], rows):
            f.write(np.ascontiguousarray(array[s : s + rows], dtype=dtype).tobytes())

    _write_with(path, write)
