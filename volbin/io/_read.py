"""Reading: `load` and the lazy readers behind it (NIfTI through nibabel, ``.npy`` by slabs,
zarr), with the format checks and the one-off decompression of ``.nii.gz``.
"""

from __future__ import annotations

import base64
import errno
import gzip
import itertools
import math
import os
import secrets
import warnings
import weakref
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import nibabel as nib
import numpy as np
from dask.base import tokenize
from isal import isal_zlib
from nibabel.volumeutils import apply_read_scaling

from .. import _prefetch
from ..errors import InputFileError, VolbinDataError, VolbinError, VolbinWarning
from ..volume import DEFAULT_CHUNK_BYTES, Volume, remember_source, slab_chunks
from ._common import (
    _FORMAT,
    _NIFTI1_MAX_DIM,
    _abspath,
    _iso,
    _kind,
    _native,
    _remove,
    _temp_dir,
    input_identity,
)

_SUPPORTED = "NIfTI-1/2 (.nii, .nii.gz), NumPy (.npy) and zarr (.zarr)"
_GZIP_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    gzip.BadGzipFile,
    isal_zlib.error,
    zlib.error,
)  # type: ignore[assignment]


# --- readers: the small array contract da.from_array needs (shape, dtype, ndim, slicing) -----
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


def _check_voxels(shape: tuple[int, ...], name: str) -> None:
    if 0 in shape:
        raise InputFileError(
            f"{name}: the image holds no voxels (shape {shape}, a dimension of size 0); re-export the file."
        )


def _check_affine(affine: np.ndarray, name: str, what: str) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise InputFileError(
            f"{name}: its {what} is not a finite 4x4 matrix (it holds NaN or infinite values); "
            "fix the header (e.g. with nibabel's set_sform/set_qform) or re-export the file."
        )
    return a


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
        simple = len(key) == self.ndim and all(isinstance(k, (slice, int, np.integer)) for k in key)
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
        self, proxy: Any, dtype: np.dtype, name: str, header: Any, affine: np.ndarray, src: str | None = None
    ) -> None:
        self.proxy = proxy
        self.src = src  # the file nibabel reads (a decompressed copy of a .nii.gz), if not `name`
        self.shape = tuple(int(s) for s in proxy.shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.name = name
        self.header = header
        self.affine = affine

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            block = np.asarray(self.proxy[key])
        except MemoryError:
            raise
        except Exception as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputFileError(
                f"{self.name}: cannot read ({_shown_as(why, self.src, self.name)})."
            ) from None
        return block.astype(self.dtype, copy=False)


def _shown_as(text: str, src: Any, shown: Any) -> str:
    """`text` with the path of a temporary copy replaced by the path the user gave."""
    if src is None or str(src) == str(shown):
        return text
    return text.replace(str(src), str(shown)).replace(os.path.basename(str(src)), str(shown))


class _ZarrReader:
    """Slices of a zarr array, with damaged chunks reported by the file that holds them."""

    def __init__(self, array: Any, name: str, root: str | None) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(c) for c in array.chunks)
        self.name = name
        self.root = root

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except MemoryError:
            raise
        except Exception as exc:
            where = self._bad_chunk(key)
            raise InputFileError(
                f"{self.name}: {where or 'a chunk'} cannot be decoded ({type(exc).__name__}: {exc}); "
                "the store is damaged: re-copy or re-export it."
            ) from None

    def _bad_chunk(self, key: Any) -> str | None:
        """The first chunk under `key` that fails to decode, as ``chunk (i, j, k) (file)``."""
        grid = _storage_chunks(self.array)
        key = key if isinstance(key, tuple) else (key,)
        ranges = []
        for a, n in enumerate(self.shape):
            k = key[a] if a < len(key) else slice(None)
            lo, hi, _ = k.indices(n) if isinstance(k, slice) else (int(k), int(k) + 1, 1)
            ranges.append(range(lo // grid[a], max(lo // grid[a] + 1, -(-hi // grid[a]))))
        for coords in itertools.product(*ranges):
            sel = tuple(
                slice(c * g, min((c + 1) * g, n)) for c, g, n in zip(coords, grid, self.shape, strict=True)
            )
            try:
                self.array[sel]
            except Exception:
                return f"chunk {coords} ({_chunk_file(self.array, coords, self.root)})"
        return None


def _storage_chunks(array: Any) -> tuple[int, ...]:
    """The shape of the objects a zarr array stores: its shards, or else its chunks."""
    shards = getattr(array, "shards", None)
    return tuple(int(c) for c in (shards or array.chunks))


def _chunk_file(array: Any, coords: tuple[int, ...], root: str | None) -> str:
    meta = getattr(array, "metadata", None)
    try:
        key = meta.encode_chunk_key(coords)  # type: ignore[union-attr]
    except AttributeError:  # pragma: no cover - zarr 2
        key = array._chunk_key(coords)
    path = getattr(array, "path", "") or ""
    if root is None:
        return f"key {'/'.join(p for p in (path, key) if p)}"
    return os.path.join(root, path, *key.split("/"))


def _check_chunks(array: Any, name: str, root: str | None, allow_missing: bool) -> None:
    """Refuse a zarr array with missing chunks (or warn with `allow_missing` and a fill value)."""
    grid = _storage_chunks(array)
    counts = [-(-n // g) for n, g in zip(array.shape, grid, strict=True)]
    total = math.prod(counts)
    present = getattr(array, "nshards_initialized", None) if getattr(array, "shards", None) else None
    if present is None:
        present = array.nchunks_initialized
    missing = total - int(present)
    if missing <= 0:
        return
    meta = getattr(array, "metadata", None)
    fill = getattr(meta, "fill_value", getattr(array, "fill_value", None))
    if isinstance(fill, np.generic):
        fill = fill.item()
    if allow_missing and fill is not None:
        warnings.warn(
            f"{name}: {missing} of {total} chunks are missing from the store; they read as its "
            f"fill value {fill!r}.",
            VolbinWarning,
            stacklevel=4,
        )
        return
    first = None
    if root is not None:
        for coords in np.ndindex(*counts):
            f = _chunk_file(array, tuple(int(c) for c in coords), root)
            if not os.path.exists(f):
                first = f"chunk {tuple(int(c) for c in coords)} ({f})"
                break
    example = f", e.g. {first}" if first else ""
    if fill is None:
        hint = "the store declares no fill value to read them as: re-copy or re-export it."
    else:
        hint = (
            "re-copy or re-export it, or pass allow_missing=True (CLI: --allow-missing-chunks) "
            f"to read them as the store's fill value {fill!r}."
        )
    raise InputFileError(
        f"{name}: {missing} of {total} chunks are missing from the store{example}; a dense "
        f"image needs every chunk (an interrupted copy?): {hint}"
    )


# --- load ------------------------------------------------------------------------------------
def load(
    path: str | os.PathLike[str],
    *,
    chunks: Any = None,
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
    allow_missing: bool = False,
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
    allow_missing : bool, optional
        For zarr: read chunks missing from the store as the store's fill value, with a
        `VolbinWarning` giving their number.  By default a missing chunk is an error.

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
        says (truncated), holds no voxels or a non-finite affine, or, for ``.nii.gz``,
        truncated or corrupt gzip data; a zarr store lacks chunks (see `allow_missing`).
        Reading a damaged zarr chunk raises it too, naming the chunk's file.
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
    cluster, set ``VOLBIN_TMPDIR`` to a folder every worker can see.  The command line starts
    that decompression on a thread while it imports its libraries (`volbin._prefetch`), and
    `load` takes the copy if the file has not changed since.  Range and histogram passes read
    the blocks of a loaded file straight from its reader, on a pool of threads, without
    building a dask graph (`volume.block_source`): the same reads of the same slabs.

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
    if chunk_bytes is not None and (not isinstance(chunk_bytes, (int, np.integer)) or chunk_bytes <= 0):
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
        size, mtime_ns = input_identity(p)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc}).") from exc
    reader: Any
    order: Literal["C", "F"]
    if kind == "zarr":
        reader, order, affine, header, file_vaxis = _open_zarr(p, path, allow_missing)
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
            chunks = tuple(min(s, -(-c // z) * z) for s, c, z in zip(shape, chunks, zc, strict=True))
    chunks = da.core.normalize_chunks(chunks, shape, dtype=dtype)
    vaxis = None if len(shape) == 3 else int(volume_axis) % 4  # type: ignore[arg-type]
    name = f"load-{_FORMAT[kind]}-" + tokenize(str(p), size, mtime_ns, chunks, vaxis, str(dtype))
    data = da.from_array(
        reader, chunks=chunks, name=name, meta=np.empty((0,) * len(shape), dtype), fancy=False
    )
    # Reductions may read its blocks from the reader without a graph (`volume.block_source`),
    # for as long as the graph holds the reader.
    remember_source(data, reader)
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
    """Stream-decompress `path` once into a temporary ``.nii``; returns its path (the copy
    `volbin._prefetch` made while the command started, if it made one)."""
    ahead = _prefetch.take(path)
    if ahead is not None:
        return ahead
    folder = _temp_dir()
    try:
        fd, tmp = _prefetch.new_temp(folder)
    except OSError as exc:
        raise InputFileError(
            f"{shown}: cannot create a temporary file in {folder} to decompress it "
            f"({exc.strerror or exc}); set VOLBIN_TMPDIR to a writable folder."
        ) from exc
    try:
        _prefetch.decompress_into(fd, tmp, path)
    except BaseException as exc:
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
        why = _shown_as(str(exc.strerror or exc), src, shown)
        raise InputFileError(f"{shown}: cannot read ({why}).") from None
    except Exception as exc:
        why = _shown_as(str(exc), src, shown)
        raise InputFileError(f"{name}: not a NIfTI image ({why}); volbin reads {_SUPPORTED}.") from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise InputFileError(f"{name}: not a NIfTI image; volbin reads {_SUPPORTED}.")
    shape = tuple(int(s) for s in img.shape)
    _check_ndim(shape, name)
    _check_voxels(shape, name)
    try:
        affine = _check_affine(img.affine, name, "affine (sform or qform)")
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise InputFileError(f"{name}: its affine (sform or qform) is invalid ({exc}).") from None
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
    return _NiftiReader(proxy, scaled, str(shown), header, affine, str(src))


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
    _check_voxels(shape, name)
    _check_dtype(np.dtype(dtype), name)
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = p.stat().st_size
    if actual < expected:
        raise InputFileError(
            f"{name}: file is truncated: the header describes {expected} bytes, the file has "
            f"{actual}; re-download or re-export the file."
        )
    return _NpyReader(str(p), shape, dtype, offset, fortran)


def _open_zarr(
    p: Path, shown: Any, allow_missing: bool = False
) -> tuple[Any, Literal["C"], np.ndarray, Any, int | None]:
    import zarr

    name = Path(shown).name
    try:
        node = zarr.open(store=str(p), mode="r")
    except Exception as exc:
        raise InputFileError(f"{name}: not a zarr array ({exc}); volbin reads {_SUPPORTED}.") from None
    attrs = dict(node.attrs)
    if isinstance(node, zarr.Group):
        arrays = dict(node.arrays())
        if "data" in arrays:
            node = arrays["data"]
        elif len(arrays) == 1:
            node = next(iter(arrays.values()))
        else:
            raise InputFileError(
                f"{name}: a zarr group with {len(arrays)} arrays; expected one array (or one named 'data')."
            )
        attrs.update(dict(node.attrs))
    shape = tuple(int(s) for s in node.shape)
    _check_ndim(shape, name)
    _check_voxels(shape, name)
    _check_dtype(np.dtype(node.dtype), name)
    try:
        affine = _check_affine(
            np.asarray(attrs.get("affine", np.eye(4)), dtype=np.float64), name, "affine attribute"
        )
    except (TypeError, ValueError):
        raise InputFileError(f"{name}: its affine attribute is not a 4x4 matrix of numbers.") from None
    header = _header_from_attr(attrs.get("header"))
    vaxis: Any = attrs.get("volume_axis")
    root = str(p)
    _check_chunks(node, str(shown), root, allow_missing)
    reader = _ZarrReader(node, str(shown), root)
    return reader, "C", affine, header, (int(vaxis) if vaxis is not None else None)


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
