"""Spilling: a lazy array computed once into a temporary file, then read lazily from it.

A whole-volume step (N4, CLAHE) ahead of several passes over the data would be recomputed by
each pass; held in memory it would cost the whole output.  `spill` stores it once, block by
block, in a temporary ``.npy`` (in ``$VOLBIN_TMPDIR`` or the system temporary folder) and
returns a dask array over a read-only map of that file, chunked as the input.  The file is
unlinked as soon as it is mapped, so nothing stays on disk after the array is dropped, or
after a crash.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from typing import Any

import dask.array as da
import numpy as np

from ..errors import VolbinError
from ._common import _remove, _temp_dir

__all__ = ["spill"]


class _Mapped:
    """A read-only map seen through the array-like contract only (no copy, no hashing)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.ndim = arr.ndim

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.arr[index])


def spill(data: da.Array, what: str = "an intermediate volume") -> da.Array:
    """`data` computed once into a temporary file; a lazy array of the same chunks reading it.

    Parameters
    ----------
    data : dask array
    what : str
        What the data are, for messages (``"the N4-corrected volume"``).

    Returns
    -------
    dask array
        The same values, dtype, shape and chunks; each block read from the file's map.

    Raises
    ------
    VolbinError
        The temporary folder is not writable or has no room for the data
        (``data.nbytes`` bytes); the message says to set ``VOLBIN_TMPDIR``.
    """
    folder = _temp_dir()
    try:
        fd, tmp = tempfile.mkstemp(prefix="volbin-spill-", suffix=".npy", dir=folder)
    except OSError as exc:
        raise VolbinError(
            f"cannot create a temporary file in {folder} for {what} ({exc.strerror or exc}); "
            "set VOLBIN_TMPDIR to a writable folder."
        ) from None
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=data.dtype, shape=tuple(data.shape))
        if out.size:
            da.store(data, out, lock=False)
            out.flush()
        del out
        mapped = np.load(tmp, mmap_mode="r")
    except OSError as exc:
        _remove(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise VolbinError(
                f"no space left in {folder} for {what} ({data.nbytes} bytes); free some space or "
                "set VOLBIN_TMPDIR to a larger folder."
            ) from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    _remove(tmp)  # the map keeps the data until it is dropped
    return da.from_array(
        _Mapped(mapped),
        chunks=data.chunks,
        name=f"volbin-spill-{secrets.token_hex(8)}",
        asarray=False,
        meta=np.empty((0,) * data.ndim, data.dtype),
    )
