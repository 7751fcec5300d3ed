"""What the reading, writing and sidecar parts of `volbin.io` share: the format of a path,
absolute paths, file identity, time stamps, the volbin version, removal of temporary files and
the creation of new files.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import shutil
import sys
from pathlib import Path
from typing import Literal

import numpy as np

from .. import _prefetch

Kind = Literal["nii", "nii.gz", "npy", "zarr"]
_FORMAT = {"nii": "nifti", "nii.gz": "nifti", "npy": "npy", "zarr": "zarr"}
_COPY_BYTES = 16 * 2**20
_NIFTI1_MAX_DIM = 32767  # dim[] is int16 in NIfTI-1


# --- paths and identity ----------------------------------------------------------------------
def _kind(path: Path) -> Kind | None:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii", ".npy", ".zarr"):
        if name.endswith(suffix):
            return suffix[1:]  # type: ignore[return-value]
    return None


def _abspath(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def input_identity(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a file, or of all files under a directory (a zarr).

    The identity `load` records in `Volume.source` and batch compares to decide whether an
    output is up to date.
    """
    path = Path(path)
    st = path.stat()
    if not path.is_dir():
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, st.st_mtime_ns
    for root, _, files in os.walk(path):
        for f in files:
            s = os.stat(os.path.join(root, f))
            size += s.st_size
            mtime = max(mtime, s.st_mtime_ns)
    return size, mtime


def _iso(ns: int | None = None) -> str:
    if ns is None:
        t = _dt.datetime.now(_dt.timezone.utc)
    else:
        t = _dt.datetime.fromtimestamp(ns // 10**9, _dt.timezone.utc)
        t = t.replace(microsecond=(ns // 1000) % 10**6)
    return t.isoformat().replace("+00:00", "Z")


def _version() -> str:
    version = getattr(sys.modules.get("volbin"), "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version("volbin")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _remove(path: str | os.PathLike[str]) -> None:
    """Remove a file or directory tree if it exists; never raises."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def _temp_dir() -> str:
    return _prefetch.temp_dir()


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def _create(path: Path) -> int:
    # os.open honours the umask (mkstemp would make the output private, mode 0600).
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
