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
- ``_atomic``: the one atomic-write helper (temporary name, fsync, rename, clean-up) and the
  folder lock, used by every writer in volbin (images, sidecars, manifests, layers, reports).
- ``_spill``: `spill`, a lazy array computed once into a temporary file and read back.
- ``_convert``: `convert` between the formats (`load` + `save` without a sidecar).
- ``_common``: what they share (format of a path, file identity, time stamps, version,
  removal and creation of files).
"""

from __future__ import annotations

from ._atomic import TEMP_NAME, atomic_file, folder_lock, temp_path, write_atomic
from ._common import _version as _version
from ._common import input_identity
from ._convert import convert
from ._read import _NpyReader as _NpyReader
from ._read import load
from ._sidecar import last_recipe, read_sidecar, sidecar_path, to_jsonable, update_sidecar, write_json
from ._spill import spill
from ._write import DEFAULT_COMPRESS_LEVEL as DEFAULT_COMPRESS_LEVEL
from ._write import MAX_OUTPUT_BYTES, save, volbin_zarr

__all__ = [
    "MAX_OUTPUT_BYTES",
    "TEMP_NAME",
    "atomic_file",
    "convert",
    "folder_lock",
    "input_identity",
    "last_recipe",
    "load",
    "read_sidecar",
    "save",
    "sidecar_path",
    "spill",
    "temp_path",
    "to_jsonable",
    "update_sidecar",
    "volbin_zarr",
    "write_atomic",
    "write_json",
]
