"""Copy a volume between NIfTI (``.nii``, ``.nii.gz``), NumPy ``.npy`` and zarr.

A thin layer over `volbin.io.load` and `volbin.io.save`: the data stream through in chunks and
are written atomically; the affine and NIfTI header go with them where the format holds them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import VolbinWarning
from ._read import load
from ._write import MAX_OUTPUT_BYTES, save

__all__ = ["convert"]


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    force: bool = False,
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
    allow_missing: bool = False,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
) -> Path:
    """Copy the image `src` to `dst` in the format `dst`'s extension names.

    Parameters
    ----------
    src : str or path-like
        A ``.nii``, ``.nii.gz``, ``.npy`` or zarr image.
    dst : str or path-like
        The output; ``.nii``, ``.nii.gz``, ``.npy`` or ``.zarr``.
    force : bool
        Overwrite `dst` if it exists.
    chunk_bytes : int, optional
        Size in bytes of the chunks streamed through memory (default 32 MiB).
    volume_axis : int, optional
        Volume axis of 4D ``.npy``/zarr input (default 3, or the zarr's own attribute).
    allow_missing : bool, optional
        Read chunks missing from a zarr `src` as its fill value (see `load`).
    max_output_bytes : int or None, optional
        Largest output written (see `save`).

    Returns
    -------
    path : pathlib.Path
        The absolute path written.

    Raises
    ------
    InputFileError
        `src` is missing, unreadable or corrupt.
    OutputFileError
        `dst` exists and `force` is False, its folder is missing, or writing failed.
    ValueError
        `dst` has an unknown extension.

    Warns
    -----
    VolbinWarning
        When `dst` is ``.npy`` and `src` has an affine or header: ``.npy`` holds the voxel
        values only.

    Notes
    -----
    Values and dtype are kept, except that NIfTI scaling (``scl_slope``/``scl_inter``) is
    applied on reading, so scaled integers are written as the floats they stand for, and
    booleans are written to NIfTI as uint8.  zarr keeps the affine, the NIfTI header and the
    volume axis in its attributes.  NIfTI output stores 4D data as ``(X, Y, Z, T)`` (a volume
    axis elsewhere is moved last) and gets volbin's ``descrip``; ``cal_min``/``cal_max``
    are reset.  No JSON sidecar is written (a BIDS dataset keeps its own ``.json`` files
    beside its images).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from volbin.io import convert, load, save
    >>> tmp = tempfile.TemporaryDirectory()
    >>> nii = save(np.arange(24, dtype=np.int16).reshape(2, 3, 4), f"{tmp.name}/a.nii.gz")
    >>> z = convert(nii, f"{tmp.name}/a.zarr")
    >>> back = convert(z, f"{tmp.name}/b.nii")
    >>> bool((load(back).compute() == load(nii).compute()).all())
    True
    >>> tmp.cleanup()
    """
    vol = load(src, chunk_bytes=chunk_bytes, volume_axis=volume_axis, allow_missing=allow_missing)
    if str(dst).lower().endswith(".npy") and (
        vol.header is not None or not np.array_equal(vol.affine, np.eye(4))
    ):
        warnings.warn(
            f"{dst}: .npy holds voxel values only; the affine and header of {src} are not "
            "kept (convert to .nii.gz or .zarr to keep them).",
            VolbinWarning,
            stacklevel=2,
        )
    return save(vol, dst, force=force, sidecar=False, max_output_bytes=max_output_bytes)
