"""The image formats volbin reads and writes, by file extension.

Plain data, importable without numpy or dask (the command line builds its choices from it).
"""

from __future__ import annotations

__all__ = ["IMAGE_EXTS", "image_ext"]

#: Extensions of the images volbin reads and writes, longest match first.
IMAGE_EXTS = (".nii.gz", ".nii", ".npy", ".zarr")


def image_ext(name: str) -> str | None:
    """The image extension `name` ends with (case-insensitive), or None.

    >>> image_ext("sub-01_T1w.NII.GZ"), image_ext("notes.txt")
    ('.nii.gz', None)
    """
    low = name.lower()
    return next((e for e in IMAGE_EXTS if low.endswith(e)), None)
