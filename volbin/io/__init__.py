"""Reading and writing volumes: NIfTI-1/2 (``.nii``, ``.nii.gz``), NumPy ``.npy`` and zarr.

`load` returns a lazy `Volume` whose chunks are slabs contiguous on disk; nothing is read until
a sink asks for it.  `save` streams a volume to disk in bounded memory and atomically (a
temporary file beside the output, renamed at the very end), with a JSON sidecar that records
the input, the output and the steps applied.

The submodules are private; this module is the public API.

- ``_read``: `load` and the lazy readers (NIfTI, ``.npy``, zarr), format checks, ``.nii.gz``
  decompression.
- ``_write``: `save`, the streamed NIfTI/``.npy``/zarr writers and the atomic-write helpers
  (preallocation, fsync, rename into place).
- ``_sidecar``: `sidecar_path`, `to_jsonable`, `read_sidecar`, `update_sidecar`.
- ``_common``: what they share (format of a path, file identity, time stamps, version,
  removal and creation of files).
"""

from __future__ import annotations

from ._common import _version as _version
from ._read import _NpyReader as _NpyReader
from ._read import load
from ._sidecar import read_sidecar, sidecar_path, to_jsonable, update_sidecar
from ._write import DEFAULT_COMPRESS_LEVEL as DEFAULT_COMPRESS_LEVEL
from ._write import save

__all__ = ["load", "read_sidecar", "save", "sidecar_path", "to_jsonable", "update_sidecar"]
