"""Reading and writing volumes: NIfTI-1/2 (``.nii``, ``.nii.gz``), NumPy ``.npy`` and zarr.

`load` returns a lazy `Volume` whose chunks are slabs contiguous on disk; nothing is read until
a sink asks for it.  `save` streams a volume to disk in bounded memory and atomically (a
temporary file beside the output, renamed at the very end), with a JSON sidecar that records
the input, the output and the steps applied.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import errno
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import weakref
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import nibabel as nib
import numpy as np
from dask.base import tokenize
from isal import igzip, isal_zlib
from nibabel.volumeutils import apply_read_scaling

from .errors import InputFileError, OutputFileError, VolbinDataError, VolbinError
from .volume import DEFAULT_CHUNK_BYTES, Volume, as_volume, slab_chunks

__all__ = ["load", "read_sidecar", "save", "sidecar_path", "to_jsonable", "update_sidecar"]

Kind = Literal["nii", "nii.gz", "npy", "zarr"]
_FORMAT = {"nii": "nifti", "nii.gz": "nifti", "npy": "npy", "zarr": "zarr"}
_SUPPORTED = "NIfTI-1/2 (.nii, .nii.gz), NumPy (.npy) and zarr (.zarr)"
_COPY_BYTES = 16 * 2**20
_NIFTI1_MAX_DIM = 32767  # dim[] is int16 in NIfTI-1
_GZIP_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    gzip.BadGzipFile,
    isal_zlib.error,
    zlib.error,
)  # type: ignore[assignment]
#: isal's levels run 0-3 and all write standard gzip.  On 256^3 phantom masks level 1 gave the
#: same size as 2 and 1.1-1.8x the speed; 3 was 1-2 % smaller and 5-10x slower; 0 was 30 %
#: larger (and grew float32 data by 20 %).
DEFAULT_COMPRESS_LEVEL = 1


# --- paths and identity ----------------------------------------------------------------------
def _kind(path: Path) -> Kind | None:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii", ".npy", ".zarr"):
        if name.endswith(suffix):
            return suffix[1:]  # type: ignore[return-value]
    return None


def _abspath(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of an image: the image extension replaced by ``.json``.

    Examples
    --------
    >>> sidecar_path("out/mask.nii.gz").as_posix()
    'out/mask.json'
    >>> sidecar_path("x.zarr").name, sidecar_path("mask.npy").name
    ('x.json', 'mask.json')
    """
    path = Path(path)
    kind = _kind(path)
    if kind is None:
        return path.with_suffix(".json")
    return path.with_name(path.name[: -len(kind) - 1] + ".json")


def _identity(path: Path) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a file, or of all files under a directory."""
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
    return os.environ.get("VOLBIN_TMPDIR") or tempfile.gettempdir()


# --- readers: the small array contract da.from_array needs (shape, dtype, ndim, slicing) -----
def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise VolbinDataError(
            f"{name}: data type {dtype} is not supported; volbin reads boolean, integer and "
            "real floating-point images (not complex, RGB or object data)."
        )


def _check_ndim(shape: tuple[int, ...], name: str) -> None:
    if len(shape) not in (3, 4):
        raise VolbinDataError(
            f"{name}: volbin reads 3D (X, Y, Z) or 4D (X, Y, Z, T) images; this one is "
            f"{len(shape)}D with shape {shape}."
        )


class _NpyReader:
    """Slices of the array in a ``.npy`` file, each read with one contiguous `np.fromfile`.

    A request is widened to whole slabs along the slowest axis (axis 0 in C order, the last
    axis in Fortran order), which are contiguous in the file.  Reads go into fresh buffers, not
    a memmap, so the pages touched do not stay counted in the process's resident memory.
    `dtype` is the file's dtype in native byte order (`disk_dtype` as stored).
    """

    def __init__(
        self, path: str, shape: tuple[int, ...], dtype: np.dtype, offset: int, fortran_order: bool
    ) -> None:
        self.path = path
        self.shape = tuple(int(s) for s in shape)
        self.disk_dtype = np.dtype(dtype)
        self.dtype = _native(self.disk_dtype)
        self.ndim = len(self.shape)
        self.offset = int(offset)
        self.fortran_order = bool(fortran_order)

    def _read(self, lo: int, hi: int) -> np.ndarray:
        slow = self.ndim - 1 if self.fortran_order else 0
        inner = math.prod(self.shape) // max(self.shape[slow], 1)
        count = (hi - lo) * inner
        try:
            flat = np.fromfile(
                self.path,
                dtype=self.disk_dtype,
                count=count,
                offset=self.offset + lo * inner * self.disk_dtype.itemsize,
            )
        except OSError as exc:
            raise InputFileError(f"{self.path}: cannot read ({exc.strerror or exc}).") from exc
        if flat.size != count:
            raise InputFileError(
                f"{self.path}: file ended early (truncated?); re-download or re-export the file."
            )
        if self.fortran_order:
            return flat.reshape((*self.shape[:-1], hi - lo), order="F")
        return flat.reshape((hi - lo, *self.shape[1:]))

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        simple = len(key) == self.ndim and all(
            isinstance(k, (slice, int, np.integer)) for k in key
        )
        if not simple:  # not produced by dask's own slicing; serve it from the whole array
            block = self._read(0, self.shape[-1 if self.fortran_order else 0])[key]
        else:
            slow = self.ndim - 1 if self.fortran_order else 0
            n = self.shape[slow]
            k = key[slow]
            if isinstance(k, slice):
                rng = range(*k.indices(n))
            else:
                i = int(k) + n if int(k) < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {int(k)} is out of bounds for axis {slow}.")
                rng = range(i, i + 1)
            lo, hi = (min(rng), max(rng) + 1) if len(rng) else (0, 0)
            local: list[Any] = list(key)
            if isinstance(k, slice):
                stop = rng.stop - lo
                local[slow] = slice(rng.start - lo, stop if stop >= 0 else None, rng.step)
            else:
                local[slow] = rng.start - lo
            block = self._read(lo, hi)[tuple(local)]
        return block.astype(self.dtype, copy=False)


class _NiftiReader:
    """Slices of a NIfTI image's data through nibabel's ArrayProxy, scaled, in native order.

    The proxy applies ``scl_slope``/``scl_inter``; the result is cast to `dtype` (the scaled
    dtype nibabel produces) so that every block matches the dask array's meta.
    """

    def __init__(
        self, proxy: Any, dtype: np.dtype, name: str, header: Any, affine: np.ndarray
    ) -> None:
        self.proxy = proxy
        self.shape = tuple(int(s) for s in proxy.shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.name = name
        self.header = header
        self.affine = affine

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            block = np.asarray(self.proxy[key])
        except OSError as exc:
            raise InputFileError(f"{self.name}: cannot read ({exc.strerror or exc}).") from exc
        return block.astype(self.dtype, copy=False)


# --- load ------------------------------------------------------------------------------------
def load(
    path: str | os.PathLike[str],
    *,
    chunks: Any = None,
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
) -> Volume:
    """Open a 3D or 4D image lazily as a `Volume`.

    Parameters
    ----------
    path : str or path-like
        A NIfTI-1 or NIfTI-2 file (``.nii``, ``.nii.gz``), a NumPy ``.npy`` file or a zarr
        array (a directory, usually named ``.zarr``).  The format is chosen by name; a ``.nii``
        that is really gzip-compressed (or the reverse) is recognised by its first bytes.
    chunks : tuple or dask chunk specification, optional
        Chunks of the dask array.  By default slabs contiguous on disk of about `chunk_bytes`
        (along the last axis for NIfTI, the slowest axis for ``.npy``; whole zarr chunks).
    chunk_bytes : int, optional
        Target size in bytes of a default chunk (`volbin.volume.DEFAULT_CHUNK_BYTES`, 64 MiB).
    volume_axis : int, optional
        For 4D ``.npy`` and zarr data, the axis that indexes volumes (default 3; pass 0 for
        stacks saved with ``np.stack`` as ``(T, X, Y, Z)``).  NIfTI stores volumes last, so
        only 3 is accepted for NIfTI.

    Returns
    -------
    volume : Volume
        ``data`` is a dask array with a deterministic name (from the file's absolute path,
        size, modification time, chunks and volume axis); ``affine`` is the voxel-to-world
        transform (nibabel's best affine: sform, then qform; identity for ``.npy``);
        ``header`` the NIfTI header (a ``Nifti1Header`` where possible), ``source`` the file's
        identity.  NIfTI scaling (``scl_slope``/``scl_inter``) is applied on read, with
        nibabel's choice of dtype (e.g. int16 with a slope of 2 reads as float64).

    Raises
    ------
    InputFileError
        The file is missing, of an unknown format, not a valid image, shorter than its header
        says (truncated) or, for ``.nii.gz``, truncated or corrupt gzip data.
    VolbinDataError
        The image is not 3D or 4D, or its data type is complex, RGB or not numeric.
    ValueError
        `chunk_bytes` is not positive, or `volume_axis` is not 3 for a 4D NIfTI image.

    Notes
    -----
    Loading reads only headers.  A ``.nii.gz`` is first decompressed once, in a stream, to a
    temporary ``.nii`` (in ``$VOLBIN_TMPDIR`` or the system temporary folder) because reading
    slabs straight out of gzip would decompress from the start for every chunk.  The temporary
    file is removed when the dask graph that reads it is garbage-collected, or at exit.  On a
    cluster, set ``VOLBIN_TMPDIR`` to a folder every worker can see.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from volbin.io import load, save
    >>> tmp = tempfile.TemporaryDirectory()
    >>> p = save(np.ones((4, 5, 6), np.float32), os.path.join(tmp.name, "ones.nii.gz"))
    >>> vol = load(p)
    >>> vol.shape, vol.dtype, vol.source["format"]
    ((4, 5, 6), dtype('float32'), 'nifti')
    >>> float(vol.data.sum().compute())
    120.0
    >>> tmp.cleanup()
    """
    if chunk_bytes is not None and (
        not isinstance(chunk_bytes, (int, np.integer)) or chunk_bytes <= 0
    ):
        raise ValueError(f"`chunk_bytes` must be a positive int; got {chunk_bytes!r}.")
    p = _abspath(path)
    if not os.path.lexists(p):
        raise InputFileError(f"{path}: no such file")
    if not p.exists():
        raise InputFileError(f"{path}: no such file (broken symbolic link)")
    kind = _kind(p) or ("zarr" if p.is_dir() else None)
    if kind is None:
        raise InputFileError(f"{path}: unknown file format; volbin reads {_SUPPORTED}.")
    try:
        size, mtime_ns = _identity(p)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc}).") from exc
    reader: Any
    order: Literal["C", "F"]
    if kind == "zarr":
        reader, order, affine, header, file_vaxis = _open_zarr(p, path)
        if volume_axis is None:
            volume_axis = file_vaxis
        zc = tuple(int(c) for c in reader.chunks)
        if zc[0] >= reader.shape[0] and zc[-1] < reader.shape[-1]:
            # Stored as slabs along the last axis (as volbin writes NIfTI-ordered data):
            # cut along that axis, so that chunks stay near `chunk_bytes`.
            order = "F"
    elif kind == "npy":
        reader, order, affine, header = _open_npy(p, path), "C", np.eye(4), None
        if reader.fortran_order:
            order = "F"
    else:
        reader, order = _open_nifti(p, path), "F"
        header, affine = reader.header, reader.affine
        if volume_axis is not None and reader.ndim == 4 and int(volume_axis) % 4 != 3:
            raise ValueError(
                f"`volume_axis` must be 3 for NIfTI input, whose volumes lie along the last "
                f"axis; got {volume_axis}."
            )
    shape, dtype = reader.shape, _native(np.dtype(reader.dtype))
    if len(shape) == 4 and volume_axis is None:
        volume_axis = 3
    if chunks is None:
        chunks = slab_chunks(shape, dtype.itemsize, order, chunk_bytes or DEFAULT_CHUNK_BYTES)
        if kind == "zarr":  # whole zarr chunks, so that none is decompressed twice
            zc = reader.chunks
            chunks = tuple(
                min(s, -(-c // z) * z) for s, c, z in zip(shape, chunks, zc, strict=True)
            )
    chunks = da.core.normalize_chunks(chunks, shape, dtype=dtype)
    vaxis = None if len(shape) == 3 else int(volume_axis) % 4  # type: ignore[arg-type]
    name = f"load-{_FORMAT[kind]}-" + tokenize(str(p), size, mtime_ns, chunks, vaxis, str(dtype))
    data = da.from_array(
        reader, chunks=chunks, name=name, meta=np.empty((0,) * len(shape), dtype), fancy=False
    )
    source = {
        "path": str(p),
        "format": _FORMAT[kind],
        "size": int(size),
        "mtime": _iso(mtime_ns),
        "mtime_ns": int(mtime_ns),
        "shape": list(shape),
        "dtype": str(dtype),
    }
    if kind not in ("npy", "zarr"):
        # nibabel clears scl_slope/scl_inter in the loaded header; the proxy keeps them.
        slope, inter = getattr(reader.proxy, "slope", 1.0), getattr(reader.proxy, "inter", 0.0)
        source["stored_dtype"] = str(np.dtype(reader.proxy.dtype))
        source["scl_slope"] = float(slope)
        source["scl_inter"] = float(inter)
    return Volume(data, affine=affine, header=header, volume_axis=vaxis, source=source)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _gunzip_to_temp(path: Path, shown: Any) -> str:
    """Stream-decompress `path` once into a temporary ``.nii``; returns its path."""
    folder = _temp_dir()
    try:
        fd, tmp = tempfile.mkstemp(prefix="volbin-", suffix=".nii", dir=folder)
    except OSError as exc:
        raise InputFileError(
            f"{shown}: cannot create a temporary file in {folder} to decompress it "
            f"({exc.strerror or exc}); set VOLBIN_TMPDIR to a writable folder."
        ) from exc
    try:
        with os.fdopen(fd, "wb") as out, igzip.open(path, "rb") as src:
            shutil.copyfileobj(src, out, _COPY_BYTES)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, _GZIP_ERRORS):
            raise InputFileError(
                f"{Path(shown).name}: truncated or corrupt gzip data ({exc}); re-download or "
                "re-export the file."
            ) from None
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputFileError(
                f"{shown}: no space left in {folder} to decompress it; free some space or set "
                "VOLBIN_TMPDIR to a larger folder."
            ) from exc
        raise
    return tmp


def _open_nifti(p: Path, shown: Any) -> _NiftiReader:
    if _is_gzip(p):
        tmp: str | None = _gunzip_to_temp(p, shown)
    elif p.name.lower().endswith(".gz"):
        # Uncompressed data under a .gz name: nibabel picks the decoder by name, so show it
        # the file under a .nii name.
        tmp = os.path.join(_temp_dir(), f"volbin-{secrets.token_hex(8)}.nii")
        try:
            os.symlink(p, tmp)
        except OSError as exc:
            raise InputFileError(
                f"{shown}: cannot create a link in {_temp_dir()} ({exc.strerror or exc}); "
                "set VOLBIN_TMPDIR to a writable folder."
            ) from exc
    else:
        tmp = None
    try:
        reader = _nifti_reader(Path(tmp) if tmp else p, shown)
    except BaseException:
        if tmp:
            _remove(tmp)
        raise
    if tmp:
        # The graph holds the reader; the decompressed copy lives as long as it does.
        weakref.finalize(reader, _remove, tmp)
    return reader


def _nifti_reader(src: Path, shown: Any) -> _NiftiReader:
    name = Path(shown).name
    try:
        img = nib.load(src, mmap=False)
    except OSError as exc:
        raise InputFileError(f"{shown}: cannot read ({exc.strerror or exc}).") from exc
    except Exception as exc:
        raise InputFileError(
            f"{name}: not a NIfTI image ({exc}); volbin reads {_SUPPORTED}."
        ) from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise InputFileError(f"{name}: not a NIfTI image; volbin reads {_SUPPORTED}.")
    shape = tuple(int(s) for s in img.shape)
    _check_ndim(shape, name)
    raw = img.get_data_dtype()
    _check_dtype(raw, name)
    proxy: Any = img.dataobj
    expected = int(proxy.offset) + math.prod(shape) * raw.itemsize
    actual = src.stat().st_size
    if actual < expected:
        raise InputFileError(
            f"{name}: file is truncated: the header describes {expected} bytes, the file has "
            f"{actual}; re-download or re-export the file."
        )
    # The dtype nibabel's proxy returns: on-disk dtype unless scaling is set (then upcast).
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    scaled = _native(apply_read_scaling(np.zeros(1, raw), slope, inter).dtype)
    header = img.header
    if isinstance(header, nib.Nifti2Header) and max(shape) <= _NIFTI1_MAX_DIM:
        header = _as_nifti1_header(header)
    return _NiftiReader(proxy, scaled, str(shown), header, np.asarray(img.affine, np.float64))


def _as_nifti1_header(header: Any) -> Any:
    h1 = nib.Nifti1Header.from_header(header, check=False)
    h1["sizeof_hdr"] = 348
    h1["magic"] = h1.single_magic
    h1["vox_offset"] = 0
    return h1


def _open_npy(p: Path, shown: Any) -> _NpyReader:
    fmt = np.lib.format
    name = Path(shown).name
    try:
        with open(p, "rb") as f:
            try:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = fmt.read_array_header_2_0(f)
            except (ValueError, EOFError, SyntaxError) as exc:
                raise InputFileError(
                    f"{name}: not a NumPy .npy file ({exc}); volbin reads {_SUPPORTED}."
                ) from None
            offset = f.tell()
    except OSError as exc:
        if isinstance(exc, VolbinError):
            raise
        raise InputFileError(f"{shown}: cannot read ({exc.strerror or exc}).") from exc
    shape = tuple(int(s) for s in shape)
    _check_ndim(shape, name)
    _check_dtype(np.dtype(dtype), name)
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = p.stat().st_size
    if actual < expected:
        raise InputFileError(
            f"{name}: file is truncated: the header describes {expected} bytes, the file has "
            f"{actual}; re-download or re-export the file."
        )
    return _NpyReader(str(p), shape, dtype, offset, fortran)


def _open_zarr(p: Path, shown: Any) -> tuple[Any, Literal["C"], np.ndarray, Any, int | None]:
    import zarr

    name = Path(shown).name
    try:
        node = zarr.open(store=str(p), mode="r")
    except Exception as exc:
        raise InputFileError(
            f"{name}: not a zarr array ({exc}); volbin reads {_SUPPORTED}."
        ) from None
    attrs = dict(node.attrs)
    if isinstance(node, zarr.Group):
        arrays = dict(node.arrays())
        if "data" in arrays:
            node = arrays["data"]
        elif len(arrays) == 1:
            node = next(iter(arrays.values()))
        else:
            raise InputFileError(
                f"{name}: a zarr group with {len(arrays)} arrays; expected one array (or one "
                "named 'data')."
            )
        attrs.update(dict(node.attrs))
    shape = tuple(int(s) for s in node.shape)
    _check_ndim(shape, name)
    _check_dtype(np.dtype(node.dtype), name)
    affine = np.asarray(attrs.get("affine", np.eye(4)), dtype=np.float64)
    header = _header_from_attr(attrs.get("header"))
    vaxis: Any = attrs.get("volume_axis")
    return node, "C", affine, header, (int(vaxis) if vaxis is not None else None)


def _header_from_attr(value: Any) -> Any:
    """A NIfTI header from a zarr attribute: base64 header bytes, or a dict of fields."""
    if value is None:
        return None
    if isinstance(value, str):
        block = base64.b64decode(value)
        klass = nib.Nifti2Header if len(block) >= 540 else nib.Nifti1Header
        return klass(binaryblock=block[: klass.template_dtype.itemsize], check=False)
    if isinstance(value, Mapping):
        header = nib.Nifti1Header()
        for key, v in value.items():
            try:
                header[key] = v
            except (KeyError, ValueError):
                pass
        return header
    return None


# --- save ------------------------------------------------------------------------------------
class _MemmapWriter:
    """Target for `dask.array.store`: writes each block into a preallocated file.

    A block is written through short-lived memory maps of only the bytes it spans, in windows
    along the file's slowest axis of about ``max(block size, 16 MiB)`` (at least one step), so
    the pages a map touches (which count as resident memory while mapped) stay bounded even
    when the block is not contiguous in the file.  Maps are not flushed one by one: that made
    writing 2-4 times slower; the whole file is fsync-ed once before it is renamed.  The
    object pickles as a few plain attributes.
    """

    def __init__(
        self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, order: str
    ) -> None:
        self.path = path
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.order = order

    def __setitem__(self, region: Any, block: np.ndarray) -> None:
        region = region if isinstance(region, tuple) else (region,)
        region = region + (slice(None),) * (self.ndim - len(region))
        block = np.asarray(block)
        slow = self.ndim - 1 if self.order == "F" else 0
        start, stop, step = region[slow].indices(self.shape[slow])
        if step != 1:  # pragma: no cover - dask.array.store only writes unit-step regions
            raise ValueError(f"cannot write a region with step {step}.")
        plane = math.prod(self.shape) // self.shape[slow] * self.dtype.itemsize
        window = max(block.nbytes, 16 * 2**20) // max(plane, 1)
        for k0 in range(start, stop, max(window, 1)):
            k1 = min(stop, k0 + max(window, 1))
            shape = list(self.shape)
            shape[slow] = k1 - k0
            mm = np.memmap(
                self.path,
                dtype=self.dtype,
                mode="r+",
                offset=self.offset + k0 * plane,
                shape=tuple(shape),
                order=self.order,
            )  # type: ignore[call-overload]
            try:
                target: list[Any] = list(region)
                target[slow] = slice(0, k1 - k0)
                part: list[Any] = [slice(None)] * self.ndim
                part[slow] = slice(k0 - start, k1 - start)
                mm[tuple(target)] = block[tuple(part)]
            finally:
                del mm


def save(
    volume: Any,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    dtype: str | np.dtype | None = None,
    sidecar: bool | Mapping[str, Any] = True,
    compress_level: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a volume to ``.nii``, ``.nii.gz``, ``.npy`` or zarr, streamed and atomically.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) Volume, ndarray or dask array
        What to write.  Only one chunk per worker thread is held in memory at a time.
    path : str or path-like
        Output file; its extension picks the format (``.nii``, ``.nii.gz``, ``.npy``,
        ``.zarr``).  NIfTI always stores 4D data as ``(X, Y, Z, T)``: a volume axis elsewhere
        is moved last.
    force : bool, optional
        Overwrite `path` (and its sidecar) if they exist.
    dtype : str or numpy dtype, optional
        Output data type.  By default boolean data is written as uint8 (0/1) and anything else
        keeps its dtype.  ``"bool"`` is accepted for ``.npy`` and zarr only; other values are
        numpy dtype names that the format can store.
    sidecar : bool or dict, optional
        Write a JSON sidecar beside the output (see `sidecar_path`) with the volbin version,
        creation time, input identity, output (path, format, shape, dtype, SHA-256 of the
        file's bytes; no hash for zarr) and the steps applied.  A dict is merged into it.
    compress_level : int, optional
        gzip level for ``.nii.gz``: 0-3 (isal's levels; all write standard gzip).  Default 1.
    extra : dict, optional
        Merged into the sidecar (e.g. the recipe and the thresholds used).

    Returns
    -------
    path : pathlib.Path
        The absolute path written.

    Raises
    ------
    OutputFileError
        `path` or its sidecar exists and `force` is False; the folder is missing; `path` is
        the input file of `volume` (even with `force`); or writing failed (disk full,
        permission denied, ...).  Temporary files are removed and nothing is left under
        `path`.
    ValueError
        Unknown output extension, or a `dtype` or `compress_level` the format cannot take.

    Notes
    -----
    The data go to ``<path>.<random>.tmp`` in the output folder, preallocated with
    ``posix_fallocate`` (a full disk then fails cleanly instead of crashing), filled block by
    block with `dask.array.store`, fsync-ed and renamed onto `path` only when complete.  A
    ``.nii.gz`` is written uncompressed first, then stream-compressed.  NIfTI headers start from
    the input's header (spatial codes, zooms, units, extensions kept, with nibabel's
    ``Nifti1Image(data, affine, header)`` rules), scaling is reset, ``cal_min/cal_max`` are
    set to 0/1 for uint8 output (0/0 otherwise) and ``descrip`` to the volbin version.
    NIfTI-1 is written unless a dimension exceeds 32767.  Writing is fastest when the chunks
    are slabs along the last axis (as `load` makes them for NIfTI input).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from volbin.io import load, read_sidecar, save
    >>> tmp = tempfile.TemporaryDirectory()
    >>> mask = np.zeros((3, 4, 5), bool)
    >>> p = save(mask, os.path.join(tmp.name, "mask.nii"))
    >>> load(p).dtype
    dtype('uint8')
    >>> read_sidecar(p)["output"]["format"]
    'nifti'
    >>> tmp.cleanup()
    """
    vol, _ = as_volume(volume)
    final = _abspath(path)
    kind = _kind(final)
    if kind is None:
        raise ValueError(f"`path` must end with .nii, .nii.gz, .npy or .zarr; got {str(path)!r}.")
    out_dtype = _output_dtype(vol.dtype, dtype, kind)
    level = _compress_level(compress_level, kind)
    side = sidecar_path(final) if sidecar else None
    _check_output(final, side, vol, force)

    data, vaxis = vol.data, vol.volume_axis
    if kind in ("nii", "nii.gz") and vol.ndim == 4 and vaxis != 3:
        data, vaxis = da.moveaxis(data, vaxis, 3), 3
    if data.dtype != out_dtype:
        data = data.astype(out_dtype)
    stem = f"{final.name}.{secrets.token_hex(4)}"
    tmp = final.with_name(stem + ".tmp")
    temps = [tmp]
    try:
        if kind == "nii":
            written_dtype = _write_nifti(data, vol, tmp)
        elif kind == "nii.gz":
            raw = final.with_name(stem + ".nii.tmp")
            temps.append(raw)
            written_dtype = _write_nifti(data, vol, raw)
            _compress(raw, tmp, level)
            _remove(raw)
        elif kind == "npy":
            written_dtype = _write_npy(data, tmp)
        else:
            written_dtype = _write_zarr(data, vol, vaxis, tmp)
        _fsync(tmp)
        if side is not None:
            output: dict[str, Any] = {
                "path": str(final),
                "format": _FORMAT[kind],
                "shape": list(data.shape),
                "dtype": str(written_dtype),
                "volume_axis": vaxis,
            }
            if kind != "zarr":
                output["sha256"] = _sha256(tmp)
            record: dict[str, Any] = {
                "volbin_version": _version(),
                "created": _iso(),
                "input": vol.source,
                "output": output,
                "steps": list(vol.steps),
            }
            record.update(extra or {})
            if isinstance(sidecar, Mapping):
                record.update(sidecar)
            side_tmp = side.with_name(f"{side.name}.{secrets.token_hex(4)}.tmp")
            temps.append(side_tmp)
            _write_json(record, side_tmp)
        _replace(tmp, final)
        if side is not None:
            _replace(side_tmp, side)
        _fsync_dir(final.parent)
    except BaseException as exc:
        for t in temps:
            _remove(t)
        if isinstance(exc, OSError) and not isinstance(exc, VolbinError):
            raise OutputFileError(_write_failure(final, exc)) from exc
        raise
    return final


def _output_dtype(in_dtype: np.dtype, dtype: Any, kind: Kind) -> np.dtype:
    nifti = kind in ("nii", "nii.gz")
    if dtype is None:
        out = np.dtype(np.uint8) if in_dtype == np.bool_ else np.dtype(in_dtype)
    else:
        try:
            out = np.dtype(dtype)
        except TypeError:
            raise ValueError(
                f"`dtype` must be a numpy dtype name such as 'uint8'; got {dtype!r}."
            ) from None
        if out == np.bool_ and nifti:
            raise ValueError(
                "`dtype` 'bool' can be written to .npy and zarr only; NIfTI has no boolean type "
                "(use 'uint8')."
            )
    out = _native(out)
    if out.hasobject or out.fields is not None or out.kind not in "biuf":
        raise ValueError(f"`dtype` must be a boolean, integer or float type; got {out}.")
    if nifti:
        try:
            nib.Nifti1Header().set_data_dtype(out)
        except nib.spatialimages.HeaderDataError:
            raise ValueError(f"`dtype` {out} cannot be stored in NIfTI; got {dtype!r}.") from None
    return out


def _compress_level(level: int | None, kind: Kind) -> int:
    if level is None:
        return DEFAULT_COMPRESS_LEVEL
    if kind != "nii.gz":
        raise ValueError(f"`compress_level` applies to .nii.gz output only; got {level!r}.")
    if not isinstance(level, (int, np.integer)) or not 0 <= level <= 3:
        raise ValueError(f"`compress_level` must be an int from 0 to 3; got {level!r}.")
    return int(level)


def _check_output(final: Path, side: Path | None, vol: Volume, force: bool) -> None:
    folder = final.parent
    if not folder.is_dir():
        raise OutputFileError(f"{folder}: output folder does not exist; create it first.")
    src = (vol.source or {}).get("path")
    if src is not None and (
        os.path.realpath(final) == os.path.realpath(src)
        or (os.path.exists(final) and os.path.exists(src) and os.path.samefile(final, src))
    ):
        raise OutputFileError(
            f"{final}: is the input file; write the output to another path (the input is "
            "read while the output is written)."
        )
    if (
        side is not None
        and src is not None
        and os.path.lexists(side)
        and os.path.realpath(side) == os.path.realpath(sidecar_path(src))
    ):
        raise OutputFileError(
            f"{final}: its sidecar {side.name} would replace the input's own JSON sidecar; "
            "choose an output name with another stem (e.g. add _mask)."
        )
    for p in (final, side):
        if p is not None and os.path.lexists(p) and not force:
            raise OutputFileError(f"{p} exists; pass force=True (CLI: --force) to overwrite")


def _write_failure(final: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on device (disk full)"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    else:
        reason = exc.strerror or str(exc)
    return f"{final}: cannot write: {reason}; nothing was left under that name."


def _preallocate(fd: int, size: int) -> None:
    """Reserve `size` bytes so that a full disk fails here, not as SIGBUS in a memmap."""
    if size <= 0:
        return
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # macOS, Windows
        os.ftruncate(fd, size)
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def _create(path: Path) -> int:
    # os.open honours the umask (mkstemp would make the output private, mode 0600).
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)


def _store(data: da.Array, path: Path, offset: int, dtype: np.dtype, order: str) -> None:
    if data.size == 0:
        return
    writer = _MemmapWriter(str(path), offset, data.shape, dtype, order)
    da.store(data, writer, lock=False)  # type: ignore[arg-type]


def _write_nifti(data: da.Array, vol: Volume, path: Path) -> np.dtype:
    header = _nifti_header(vol, tuple(int(s) for s in data.shape), data.dtype)
    fd = _create(path)
    with os.fdopen(fd, "wb") as f:
        header.write_to(f)
        offset = int(header["vox_offset"])
        f.flush()
        _preallocate(f.fileno(), offset + data.size * data.dtype.itemsize)
    _store(data, path, offset, header.get_data_dtype(), "F")
    return data.dtype


def _nifti_header(vol: Volume, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """The output header, with nibabel's rules for combining an affine and a header."""
    klass = nib.Nifti2Image if max(shape) > _NIFTI1_MAX_DIM else nib.Nifti1Image
    header = vol.header if isinstance(vol.header, nib.Nifti1Header) else None
    if header is not None:
        if type(header) is not klass.header_class:
            header = klass.header_class.from_header(header, check=False)
            header["sizeof_hdr"] = header.sizeof_hdr
        else:
            header = header.copy()
        header["magic"] = header.single_magic
    # A zero-strided array stands in for the data: nibabel needs only its shape and dtype.
    placeholder = np.broadcast_to(np.zeros((), dtype), shape)
    img = klass(placeholder, vol.affine, header=header, dtype=dtype)
    out = img.header
    out.set_data_shape(shape)
    out.set_data_dtype(dtype)
    out.set_slope_inter(None, None)
    binary = dtype in (np.uint8, np.bool_)
    out["cal_min"], out["cal_max"] = (0, 1) if binary else (0, 0)
    out["descrip"] = f"volbin {_version()}"[:79].encode()
    out["vox_offset"] = 0  # recomputed on write from the extensions actually present
    out["magic"] = out.single_magic
    return out


def _write_npy(data: da.Array, path: Path) -> np.dtype:
    # Always C order: the file's bytes must not depend on the chunking (a sidecar's recipe
    # re-run with other chunks gives the same sha256).  Slabs along the last axis cost a
    # windowed write instead of a contiguous one.
    fortran = False
    header = {
        "descr": np.lib.format.dtype_to_descr(data.dtype),
        "fortran_order": fortran,
        "shape": tuple(int(s) for s in data.shape),
    }
    fd = _create(path)
    with os.fdopen(fd, "wb") as f:
        try:
            np.lib.format.write_array_header_1_0(f, header)
        except ValueError:
            np.lib.format.write_array_header_2_0(f, header)
        offset = f.tell()
        f.flush()
        _preallocate(f.fileno(), offset + data.size * data.dtype.itemsize)
    _store(data, path, offset, data.dtype, "F" if fortran else "C")
    return data.dtype


def _write_zarr(data: da.Array, vol: Volume, vaxis: int | None, path: Path) -> np.dtype:
    import zarr

    chunks = tuple(max(c) if c else 1 for c in data.chunks)
    if any(c[:-1] and set(c[:-1]) != {m} for c, m in zip(data.chunks, chunks, strict=True)):
        data = data.rechunk(chunks)  # zarr needs regular chunks (a short last one is fine)
    attrs: dict[str, Any] = {
        "affine": vol.affine.tolist(),
        "volume_axis": vaxis,
        "volbin_version": _version(),
    }
    if isinstance(vol.header, nib.Nifti1Header):
        attrs["header"] = base64.b64encode(vol.header.binaryblock).decode("ascii")
    z = zarr.open_array(
        store=str(path), mode="w-", shape=data.shape, chunks=chunks, dtype=data.dtype
    )
    z.attrs.update(attrs)
    if data.size:
        da.store(data, z, lock=False)  # type: ignore[arg-type]
    return data.dtype


def _compress(src: Path, dst: Path, level: int) -> None:
    fd = _create(dst)
    with os.fdopen(fd, "wb") as raw, open(src, "rb") as f:
        # No file name and a zero time stamp in the gzip header: the same data give the same
        # bytes.
        with igzip.IGzipFile(
            filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0
        ) as gz:
            shutil.copyfileobj(f, gz, _COPY_BYTES)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_COPY_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync(Path(root, name))
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _replace(tmp: Path, final: Path) -> None:
    """Rename `tmp` onto `final`; a directory at `final` (or replacing one) is moved aside."""
    if os.path.lexists(final) and ((final.is_dir() and not final.is_symlink()) or tmp.is_dir()):
        old = final.with_name(f"{final.name}.{secrets.token_hex(4)}.old")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        _remove(old)
    else:
        os.replace(tmp, final)


# --- sidecars --------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """`obj` made of plain JSON types: numpy scalars and arrays as lists, non-finite floats as
    None, paths as strings, dataclasses as dicts.

    Examples
    --------
    >>> to_jsonable({"t": np.float32(0.5), "v": np.array([1, 2]), "bad": float("nan")})
    {'t': 0.5, 'v': [1, 2], 'bad': None}
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, (np.ndarray, np.generic)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.dtype):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"cannot write a {type(obj).__name__} to a JSON sidecar: {obj!r}")


def _write_json(record: Mapping[str, Any], path: Path) -> None:
    text = json.dumps(to_jsonable(record), indent=2, allow_nan=False) + "\n"
    fd = _create(path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def update_sidecar(path: str | os.PathLike[str], **fields: Any) -> Path:
    """Add or replace top-level `fields` in an output's sidecar, atomically.

    Parameters
    ----------
    path : str or path-like
        The sidecar, or the image it describes.
    **fields
        JSON-able values (numpy scalars and arrays are converted).

    Returns
    -------
    Path
        The sidecar's path.
    """
    side = Path(path) if str(path).endswith(".json") else sidecar_path(path)
    record = read_sidecar(side)
    record.update(fields)
    tmp = side.with_name(f"{side.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_json(record, tmp)
        os.replace(tmp, side)
    except BaseException:
        _remove(tmp)
        raise
    return side


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the JSON sidecar of an output (given the sidecar or the image path).

    Parameters
    ----------
    path : str or path-like
        The ``.json`` sidecar, or the image it describes.

    Returns
    -------
    record : dict
        The sidecar's contents.

    Raises
    ------
    InputFileError
        The sidecar is missing or not a JSON object.

    Examples
    --------
    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> p = save(np.zeros((2, 2, 2), np.uint8), os.path.join(tmp.name, "z.npy"), extra={"seed": 1})
    >>> read_sidecar(p)["seed"]
    1
    >>> tmp.cleanup()
    """
    p = Path(path)
    if p.suffix.lower() != ".json":
        p = sidecar_path(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise InputFileError(f"{p}: cannot read ({exc.strerror or exc}).") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{p}: not a valid JSON sidecar ({exc}).") from None
    if not isinstance(record, dict):
        raise InputFileError(f"{p}: not a valid JSON sidecar (expected an object).")
    return record
