"""Writing: `save`, streamed in bounded memory and atomic (a temporary file beside the output,
fsync-ed and renamed at the very end), with the NIfTI, ``.npy`` and zarr writers.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
from isal import igzip

from ..errors import OutputFileError, VolbinError
from ..volume import Volume, as_volume
from ._atomic import temp_path
from ._common import (
    _COPY_BYTES,
    _FORMAT,
    _NIFTI1_MAX_DIM,
    Kind,
    _abspath,
    _create,
    _iso,
    _kind,
    _native,
    _remove,
    _version,
)
from ._sidecar import _write_json, sidecar_path

#: The largest output `save` writes unless told otherwise (``max_output_bytes``): 16 GiB of
#: data, 17 G voxels of a binary volume.  A mistaken upsampling factor would otherwise start
#: writing (and computing) for hours before the disk fills.
MAX_OUTPUT_BYTES = 16 * 2**30

#: isal's levels run 0-3 and all write standard gzip.  On 256^3 phantom masks level 1 gave the
#: same size as 2 and 1.1-1.8x the speed; 3 was 1-2 % smaller and 5-10x slower; 0 was 30 %
#: larger (and grew float32 data by 20 %).
DEFAULT_COMPRESS_LEVEL = 1


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

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, order: str) -> None:
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
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
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
        file's bytes; no hash for zarr) and the steps applied.  A dict is written too: its
        top-level fields are merged into the sidecar (e.g. ``{"batch": {...}}``).
    compress_level : int, optional
        gzip level for ``.nii.gz``: 0-3 (isal's levels; all write standard gzip).  Default 1.
    max_output_bytes : int or None, optional
        Refuse to write more data than this (uncompressed; default `MAX_OUTPUT_BYTES`,
        16 GiB); None writes any size.

    Returns
    -------
    path : pathlib.Path
        The absolute path written.

    Raises
    ------
    OutputFileError
        `path` or its sidecar exists and `force` is False; the folder is missing; `path` is
        the input file of `volume` (even with `force`); `path` is a folder other than a zarr
        store volbin wrote, or its sidecar is the sidecar of another image that exists (both
        even with `force`); the output is larger than `max_output_bytes`; or writing failed
        (disk full, permission denied, ...).  Temporary files are removed and nothing is
        left under `path`.
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

    The sidecar is put in place first, marked ``"pending"`` with the identity (device and
    inode) and size of the finished temporary image; then the image is renamed into place
    (a rename keeps the inode), then the sidecar is rewritten without the mark.  A process
    killed between the two renames leaves an image whose pending sidecar names it exactly,
    which `volbin.batch` recognises as complete; killed before, the pending sidecar names a
    file that is not there.  The sidecar's ``output`` records the file's size (the total
    of its files for zarr) and, except for zarr, its SHA-256, to check it later.

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
    _check_size(final, vol.shape, out_dtype, max_output_bytes)

    data, vaxis = vol.data, vol.volume_axis
    if kind in ("nii", "nii.gz") and vol.ndim == 4 and vaxis != 3:
        data, vaxis = da.moveaxis(data, vaxis, 3), 3
    if data.dtype != out_dtype:
        data = data.astype(out_dtype)
    tmp = temp_path(final)
    stem = tmp.name[: -len(".tmp")]
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
            size = _tree_size(tmp)
            output: dict[str, Any] = {
                "path": str(final),
                "format": _FORMAT[kind],
                "shape": list(data.shape),
                "dtype": str(written_dtype),
                "volume_axis": vaxis,
                "size": size,
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
            if isinstance(sidecar, Mapping):
                record.update(sidecar)
            st = os.stat(tmp)
            pending = {**record, "pending": {"device": st.st_dev, "inode": st.st_ino, "size": size}}
            _put_json(pending, side, temps)
            _fsync_dir(final.parent)
            _replace(tmp, final)
            _put_json(record, side, temps)
        else:
            _replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException as exc:
        for t in temps:
            _remove(t)
        if kind == "zarr":
            _remove_settled(tmp)
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
            raise ValueError(f"`dtype` must be a numpy dtype name such as 'uint8'; got {dtype!r}.") from None
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
    if final.is_dir() and not final.is_symlink() and not (_kind(final) == "zarr" and volbin_zarr(final)):
        raise OutputFileError(
            f"{final}: is a folder that volbin did not write (not a zarr store with volbin's "
            "attributes); volbin replaces no other folder, even with --force; remove it or "
            "choose another output path."
        )
    if side is not None and side.is_dir() and not side.is_symlink():
        raise OutputFileError(
            f"{final}: its sidecar name {side} is a folder; remove it or choose another output path."
        )
    other = sidecar_owner(side) if side is not None else None
    if other is not None and os.path.abspath(other) != str(final) and os.path.lexists(other):
        raise OutputFileError(
            f"{final}: its sidecar {side} is the sidecar of {other}, which exists; remove "
            "that image or choose another output name (a .nii and a .nii.gz of one name "
            "share a sidecar)."
        )
    own_pending = side is not None and other is not None and not os.path.lexists(final)
    for p in (final, side):
        if p is None or not os.path.lexists(p) or force:
            continue
        if p == side and own_pending and _read_record(side).get("pending"):
            continue  # left by an interrupted write of this very output
        raise OutputFileError(f"{p} exists; pass force=True (CLI: --force) to overwrite")


def _put_json(record: Mapping[str, Any], path: Path, temps: list[Path]) -> None:
    """Write `record` to a temporary beside `path` (listed in `temps`) and rename it there."""
    tmp = temp_path(path)
    temps.append(tmp)
    _write_json(record, tmp)
    _replace(tmp, path)


def _read_record(side: Path) -> dict[str, Any]:
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def sidecar_owner(side: str | os.PathLike[str]) -> str | None:
    """The image a volbin sidecar describes (its ``output.path``), or None."""
    record = _read_record(Path(side))
    out = record.get("output") if "volbin_version" in record else None
    path = out.get("path") if isinstance(out, dict) else None
    return path if isinstance(path, str) else None


def volbin_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a zarr store written by volbin (its attributes name volbin)."""
    p = Path(path)
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        try:
            doc = json.loads((p / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        attrs = doc.get(key) if key else doc
        if isinstance(attrs, dict) and "volbin_version" in attrs:
            return True
    return False


def _check_size(final: Path, shape: tuple[int, ...], dtype: np.dtype, limit: int | None) -> None:
    if limit is None:
        return
    if not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit <= 0:
        raise ValueError(f"`max_output_bytes` must be a positive int or None; got {limit!r}.")
    voxels = math.prod(int(s) for s in shape)
    nbytes = voxels * np.dtype(dtype).itemsize
    if nbytes > limit:
        raise OutputFileError(
            f"{final}: the output would hold {voxels:,} voxels ({nbytes / 1e9:.3g} GB of "
            f"{np.dtype(dtype)} data), more than the limit of {limit / 1e9:.3g} GB; check the "
            "upsampling factors, or pass max_output_bytes= (CLI: --max-output-gb) to allow it."
        )


def _tree_size(path: Path) -> int:
    """Bytes of a file, or of all files under a directory (a zarr store)."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(os.stat(os.path.join(root, f)).st_size for root, _, files in os.walk(path) for f in files)


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
    # Every chunk is written, all-zero ones too (zarr 3 skips chunks equal to the fill value
    # by default): `load` refuses a store with missing chunks unless told otherwise.
    if int(zarr.__version__.split(".")[0]) >= 3:
        empty: dict[str, Any] = {"config": {"write_empty_chunks": True}}
    else:  # pragma: no cover - zarr 2
        empty = {"write_empty_chunks": True}
    z = zarr.open_array(
        store=str(path), mode="w-", shape=data.shape, chunks=chunks, dtype=data.dtype, **empty
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
        with igzip.IGzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0) as gz:
            shutil.copyfileobj(f, gz, _COPY_BYTES)


def _remove_settled(folder: Path, seconds: float = 2.0) -> None:
    """Remove a zarr temporary again while it reappears.

    When one chunk fails, dask's threaded scheduler raises at once while the tasks already
    running on other threads finish and write their chunks, re-creating the folder.
    """
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if not os.path.lexists(folder):
            time.sleep(0.05)
            if not os.path.lexists(folder):
                return
        _remove(folder)


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
        old = temp_path(final, ".old")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        _remove(old)
    else:
        os.replace(tmp, final)
