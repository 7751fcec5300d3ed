"""The data model: `Volume` (lazy data + spatial metadata + provenance) and scopes.

A `Volume` is a dask array with the spatial metadata of the image it came from.  Axis roles
are explicit: three spatial axes and, for 4D data, one volume axis (``volume_axis``; 3 in
NIfTI order ``(X, Y, Z, T)``, often 0 for stacks saved with ``np.stack``).

`Grouping` is the one place that maps a scope (``stack``, ``volume``, ``slice``) onto array
axes.  Every per-group statistic is an array of shape ``Grouping.group_shape`` and is broadcast
back onto data blocks with `Grouping.block_values`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np

from .errors import VolbinDataError
from .recipe import SCOPES

__all__ = ["SCOPES", "Grouping", "Volume", "as_volume", "chunk_bytes_for", "slab_chunks"]

Scope = Literal["stack", "volume", "slice"]
_AXIS_NAMES = {"x": 0, "y": 1, "z": 2, "i": 0, "j": 1, "k": 2}

#: Default size of one chunk of input data, in bytes.  Chunks are slabs that are contiguous
#: in the file; 32 MiB keeps two threads busy and balanced while bounding memory.
DEFAULT_CHUNK_BYTES = 32 * 2**20

#: `repr` computes the value range of volumes of at most this many voxels.
REPR_RANGE_VOXELS = 2**20


def chunk_bytes_for(memory_limit: int | None, threads: int | None = None) -> int | None:
    """Input chunk size that keeps a threaded run under `memory_limit` bytes.

    Each thread holds up to about eight chunk-sized buffers at its peak (input, float64 and
    float32 intermediates, output); the interpreter and its libraries take ~300 MB before any
    data.  Returns None (the default chunking) when `memory_limit` is None.
    """
    if memory_limit is None:
        return None
    threads = threads or os.cpu_count() or 1
    usable = max(memory_limit - 300 * 2**20, 16 * 2**20)
    return max(2**20, min(64 * 2**20, usable // (threads * 8)))


def slab_chunks(
    shape: Sequence[int],
    itemsize: int,
    order: Literal["C", "F"] = "F",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[int, ...]:
    """Chunk sizes that cut `shape` into slabs contiguous in memory order `order`.

    The slowest-varying axis is split first; faster axes are split only when one step along
    every slower axis is already larger than `chunk_bytes`.

    Examples
    --------
    >>> slab_chunks((181, 217, 181, 10), 8, "F", 64 * 2**20)
    (181, 217, 181, 1)
    >>> slab_chunks((181, 217, 181), 8, "F", 2**20)
    (181, 217, 3)
    >>> slab_chunks((10, 181, 217, 181), 8, "C", 64 * 2**20)
    (1, 181, 217, 181)
    """
    shape = tuple(int(s) for s in shape)
    if chunk_bytes <= 0:
        raise ValueError(f"`chunk_bytes` must be positive; got {chunk_bytes}.")
    axes = list(range(len(shape) - 1, -1, -1)) if order == "F" else list(range(len(shape)))
    chunks = list(shape)
    inner = math.prod(shape) * itemsize
    for a in axes:
        if shape[a] == 0:
            break
        inner //= shape[a]  # bytes of a slab one step thick along `a`
        if inner * shape[a] <= chunk_bytes:
            break
        if inner <= chunk_bytes or inner == 0:
            chunks[a] = max(1, chunk_bytes // max(inner, 1))
            break
        chunks[a] = 1
    return tuple(int(c) for c in chunks)


@dataclass(frozen=True, eq=False)
class Volume:
    """A lazy 3D or 4D image: dask data, affine, header and provenance.

    Parameters
    ----------
    data : (X, Y, Z[, T]) dask array
        Voxel values.  Nothing is read or computed until a sink (``save``, ``compute``).
    affine : (4, 4) ndarray, optional
        Voxel-to-world (RAS+ mm) transform; identity if not given.
    header : nibabel.Nifti1Header, optional
        The header of the source image; kept so that outputs carry its spatial fields.
    volume_axis : int, optional
        For 4D data, the axis that indexes volumes (default 3, NIfTI order).
    source : dict, optional
        Identity of the input file (path, size, mtime).
    steps : tuple of dict
        What was done to the data, in order: the record written to the JSON sidecar.
    """

    data: da.Array
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    header: Any = None
    volume_axis: int | None = None
    source: dict[str, Any] | None = None
    steps: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        data = self.data
        if not isinstance(data, da.Array):
            data = da.asarray(data)
            object.__setattr__(self, "data", data)
        if data.ndim not in (3, 4):
            raise VolbinDataError(
                f"volumes must be 3D (X, Y, Z) or 4D (X, Y, Z, T); got {data.ndim}D data "
                f"of shape {data.shape}."
            )
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"`affine` must be a 4x4 matrix; got shape {affine.shape}.")
        object.__setattr__(self, "affine", affine)
        vaxis = self.volume_axis
        if data.ndim == 3:
            vaxis = None
        else:
            vaxis = 3 if vaxis is None else int(vaxis)
            if not -4 <= vaxis < 4:
                raise ValueError(f"`volume_axis` must be in [-4, 3]; got {vaxis}.")
            vaxis %= 4
        object.__setattr__(self, "volume_axis", vaxis)
        object.__setattr__(self, "steps", tuple(self.steps))

    # --- array-like contract -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def ndim(self) -> int:
        return int(self.data.ndim)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        return self.data.chunks

    def compute(self, **kwargs: Any) -> np.ndarray:
        """Compute the voxel values into a numpy array."""
        return np.asarray(self.data.compute(**kwargs))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.compute()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        """Shape, voxel size, orientation codes, dtype and, for small volumes, the value range.

        The range is computed only for at most `REPR_RANGE_VOXELS` voxels; larger volumes say
        "range not computed" (nothing is read).
        """
        parts = [
            f"shape={self.shape}",
            f"voxel size={tuple(round(z, 4) for z in self.zooms)} mm",
            f"orientation={self.axcodes}",
            f"dtype={self.dtype}",
        ]
        if self.volume_axis is not None:
            parts.append(f"volume_axis={self.volume_axis}")
        parts.append(self._repr_range())
        if self.steps:
            parts.append(f"steps={[s.get('step') for s in self.steps]}")
        return f"Volume({', '.join(parts)})"

    def _repr_range(self) -> str:
        if self.data.size > REPR_RANGE_VOXELS:
            return "range not computed"
        try:
            values = np.asarray(self.data.compute())
            finite = values[np.isfinite(values)] if values.dtype.kind in "fc" else values
        except Exception:  # a repr must not raise whatever the data's graph does
            return "range not computed"
        if finite.size == 0:
            return "range=(no finite voxel)"
        lo, hi = finite.min(), finite.max()
        if values.dtype == np.bool_:
            lo, hi = int(lo), int(hi)
        return f"range=[{lo:.6g}, {hi:.6g}]"

    def _repr_html_(self) -> str:
        """The repr and a small PNG of the middle slices (of the first volume of 4D data).

        The thumbnail shows the three middle array slices, each windowed between the 1st and
        99th percentiles of the slices shown, in array order (``volbin.preview.preview``
        draws them in anatomical orientation with labels).  Only those slices are read.
        """
        import html

        text = f"<code>{html.escape(repr(self))}</code>"
        try:
            src = "data:image/png;base64," + self._thumbnail()
        except Exception:  # a display hook must not raise; the text alone is shown
            return f"<div>{text}</div>"
        return f'<div>{text}<br><img alt="middle slices" src="{src}"></div>'

    def _thumbnail(self, size: int = 96) -> str:
        """Base64 PNG of the three middle slices, each scaled to `size` pixels high."""
        import base64
        import io

        from PIL import Image

        data = self.data
        if self.volume_axis is not None:
            data = da.take(data, 0, axis=self.volume_axis)
        mid = [n // 2 for n in data.shape]
        planes = [data[mid[0], :, :], data[:, mid[1], :], data[:, :, mid[2]]]
        arrays = [np.asarray(p, dtype=np.float64) for p in da.compute(*planes)]
        finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
        lo, hi = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
        tiles = []
        for a in arrays:
            g = np.nan_to_num((a - lo) / (hi - lo if hi > lo else 1.0), nan=0.0).clip(0, 1)
            img = Image.fromarray(np.rot90(g * 255).astype(np.uint8))
            w = max(1, round(img.width * size / max(img.height, 1)))
            tiles.append(img.resize((w, size)))
        sheet = Image.new("L", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), size))
        x = 0
        for t in tiles:
            sheet.paste(t, (x, 0))
            x += t.width + 4
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")

    @property
    def axcodes(self) -> str:
        """Closest anatomical axis codes of the spatial axes (``nibabel.aff2axcodes``), e.g.
        ``"RAS"``; ``?`` for an axis the affine leaves undetermined."""
        from nibabel.orientations import aff2axcodes

        return "".join(c or "?" for c in aff2axcodes(self.affine))

    def to_nibabel(self) -> Any:
        """This volume as a nibabel image, with its affine and header.

        Returns
        -------
        img : nibabel.Nifti1Image or nibabel.Nifti2Image
            NIfTI-2 when an axis is longer than NIfTI-1 allows (32767).  Its ``dataobj`` is a
            proxy of the dask array: nothing is computed until nibabel reads it.
            ``img.dataobj[index]`` computes only that part; ``get_fdata()``,
            ``np.asarray(img.dataobj)`` and ``nibabel.save`` compute the whole volume in memory.
            4D data are given in NIfTI order ``(X, Y, Z, T)`` (a volume axis elsewhere is moved
            last); boolean data are given as uint8 and float16 as float32, which NIfTI stores.
            The header keeps the spatial fields of `header` (units, codes, descriptions) with
            the data shape and dtype of this volume and no scaling.

        Examples
        --------
        >>> import numpy as np
        >>> img = Volume(np.arange(24.0).reshape(2, 3, 4), affine=np.diag([2.0, 2, 3, 1])).to_nibabel()
        >>> img.shape, img.header.get_zooms(), img.get_fdata()[1, 2, 3]
        ((2, 3, 4), (np.float32(2.0), np.float32(2.0), np.float32(3.0)), np.float64(23.0))
        """
        import nibabel as nib

        data = self.data
        if self.volume_axis is not None and self.volume_axis != 3:
            data = da.moveaxis(data, self.volume_axis, 3)
        dtype = np.dtype(data.dtype)
        if dtype == np.bool_:
            dtype = np.dtype(np.uint8)
        elif dtype == np.float16:
            dtype = np.dtype(np.float32)
        dtype = dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype
        klass = nib.Nifti2Image if max(data.shape) > 32767 else nib.Nifti1Image
        header = None
        if isinstance(self.header, nib.Nifti1Header):
            header = klass.header_class.from_header(self.header, check=False)
        img = klass(_DaskProxy(data, dtype), self.affine, header=header, dtype=dtype)
        img.header.set_slope_inter(None, None)
        return img

    # --- axis roles ----------------------------------------------------------------------
    @property
    def spatial_axes(self) -> tuple[int, int, int]:
        """Array axes of x, y, z, in that order."""
        axes = [a for a in range(self.ndim) if a != self.volume_axis]
        return (axes[0], axes[1], axes[2])

    @property
    def n_volumes(self) -> int:
        return 1 if self.volume_axis is None else self.shape[self.volume_axis]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        s = self.shape
        x, y, z = self.spatial_axes
        return (s[x], s[y], s[z])

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel sizes along x, y, z (from the header if any, else from the affine)."""
        if self.header is not None:
            try:
                z = self.header.get_zooms()
                return (float(z[0]), float(z[1]), float(z[2]))
            except Exception:  # pragma: no cover - foreign header types
                pass
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    def axis_index(self, axis: int | str | None) -> int:
        """Array axis of a spatial axis given as ``"x"/"y"/"z"``, 0/1/2, or None (= z)."""
        if axis is None:
            return self.spatial_axes[2]
        if isinstance(axis, str):
            key = axis.lower()
            if key not in _AXIS_NAMES:
                raise ValueError(f"`axis` must be one of 'x', 'y', 'z' or 0, 1, 2; got {axis!r}.")
            return self.spatial_axes[_AXIS_NAMES[key]]
        if isinstance(axis, (int, np.integer)) and 0 <= int(axis) <= 2:
            return self.spatial_axes[int(axis)]
        raise ValueError(f"`axis` must be one of 'x', 'y', 'z' or 0, 1, 2; got {axis!r}.")

    # --- derivation ----------------------------------------------------------------------
    def derive(self, data: da.Array, step: dict[str, Any] | None = None, **changes: Any) -> Volume:
        """A new Volume with `data`, the same metadata, and `step` appended to `steps`."""
        steps = self.steps + ((step,) if step else ())
        return dataclasses.replace(self, data=data, steps=steps, **changes)

    def grouping(self, scope: str, axis: int | str | None = None) -> Grouping:
        """The `Grouping` of this volume for `scope` (and slice `axis`)."""
        return Grouping.of(self, scope, axis)


@dataclass(frozen=True)
class Grouping:
    """How a scope splits a volume into groups, each with its own statistics.

    ``group_axes`` are the array axes that index groups (sorted); per-group values are arrays
    of shape ``group_shape``.  ``stack`` has no group axes (one group), ``volume`` has the
    volume axis, ``slice`` has the slice axis (and the volume axis for 4D data).
    """

    shape: tuple[int, ...]
    scope: str
    group_axes: tuple[int, ...]
    slice_axis: int | None = None

    @classmethod
    def of(cls, volume: Volume, scope: str, axis: int | str | None = None) -> Grouping:
        if scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {', '.join(SCOPES)}; got {scope!r}.")
        vaxis = volume.volume_axis
        slice_axis = None
        if scope == "stack":
            gaxes: tuple[int, ...] = ()
        elif scope == "volume":
            gaxes = () if vaxis is None else (vaxis,)
        else:
            slice_axis = volume.axis_index(axis)
            gaxes = tuple(sorted({slice_axis} | ({vaxis} if vaxis is not None else set())))
        return cls(volume.shape, scope, gaxes, slice_axis)

    @property
    def group_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.group_axes)

    @property
    def n_groups(self) -> int:
        return math.prod(self.group_shape)

    def expand(self, values: np.ndarray) -> np.ndarray:
        """Reshape per-group `values` (group_shape + trailing) to broadcast over the data."""
        values = np.asarray(values)
        trailing = values.shape[len(self.group_axes) :]
        shape = [1] * len(self.shape)
        for a in self.group_axes:
            shape[a] = self.shape[a]
        return values.reshape(tuple(shape) + trailing)

    def block_values(self, values: np.ndarray, location: Sequence[tuple[int, int]]) -> np.ndarray:
        """Per-group `values` cut to a block at array `location` ((start, stop) per axis),
        shaped to broadcast against that block."""
        full = self.expand(values)
        index = tuple(
            slice(lo, hi) if a in self.group_axes else slice(None) for a, (lo, hi) in enumerate(location)
        )
        return full[index]

    def describe(self, index: int | tuple[int, ...]) -> str:
        """A group in words: ``volume 3``, ``slice 40``, ``slice 40 of volume 3``, ``the stack``."""
        if not self.group_axes:
            return "the volume" if len(self.shape) == 3 else "the stack"
        if isinstance(index, (int, np.integer)):
            index = tuple(int(i) for i in np.unravel_index(int(index), self.group_shape))
        parts = {
            ("slice" if a == self.slice_axis else "volume"): int(i)
            for a, i in zip(self.group_axes, index, strict=False)
        }
        words = [f"slice {parts['slice']}"] if "slice" in parts else []
        if "volume" in parts:
            words.append(("of " if words else "") + f"volume {parts['volume']}")
        return " ".join(words)

    def labels(self) -> list[dict[str, int]]:
        """One dict per group (C order over `group_shape`) naming its indices."""
        names = []
        for a in self.group_axes:
            names.append("slice" if a == self.slice_axis else "volume")
        return [dict(zip(names, map(int, idx), strict=False)) for idx in np.ndindex(*self.group_shape)]


Kind = Literal["numpy", "dask", "volume"]


class _NoCopy:
    """An ndarray seen through the array-like contract only.

    ``da.from_array`` copies any input that has a ``copy`` method (the whole array, before
    anything runs); wrapping the array keeps its chunks as views of the caller's memory.
    """

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.ndim = arr.ndim

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.arr[index]


class _DaskProxy:
    """A dask array seen by nibabel as an array proxy: computed only when read."""

    is_proxy = True

    def __init__(self, data: da.Array, dtype: np.dtype) -> None:
        self._data = data
        self.dtype = dtype
        self.shape = tuple(int(s) for s in data.shape)
        self.ndim = len(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self._data.compute()).astype(self.dtype, copy=False)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self._data[index].compute()).astype(self.dtype, copy=False)


#: The numpy arrays that `as_volume` wrapped, by the name of the dask array over them.
_IN_MEMORY: weakref.WeakValueDictionary[str, _NoCopy] = weakref.WeakValueDictionary()


#: Readers that dask arrays were made from (`da.from_array(reader, ...)`), by array name.
_SOURCES: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def remember_source(data: da.Array, reader: Any) -> None:
    """Record that `data` is ``da.from_array(reader, chunks=..., fancy=False)``: its block at
    slices ``s`` is ``reader[s]``.  `block_source` returns `reader` for as long as something
    (the array's graph) holds it."""
    if tuple(reader.shape) != data.shape:
        raise ValueError(f"`reader` of shape {tuple(reader.shape)} is not the source of {data.shape}.")
    _SOURCES[data.name] = reader


#: Loaded data above this size is reduced through its dask graph, which reports progress on
#: a terminal (`volbin.progress`); below it a pass takes about a second or less.
SOURCE_MAX_BYTES = 2**30


def block_source(data: da.Array) -> Any:
    """What the blocks of `data` can be read from without a dask graph (``source[slices]``):
    the numpy array `in_memory` returns, or the reader of a loaded file (`remember_source`) of
    at most `SOURCE_MAX_BYTES`; None for any other dask array."""
    arr = in_memory(data)
    if arr is not None:
        return arr
    src = _SOURCES.get(data.name)
    if src is None or tuple(src.shape) != data.shape or data.nbytes > SOURCE_MAX_BYTES:
        return None
    return src


def in_memory(data: da.Array) -> np.ndarray | None:
    """The numpy array `data` was made from by `as_volume` (its blocks are views of it), or
    None for any other dask array.  Reductions over such data may run on its blocks directly,
    without a dask graph."""
    src = _IN_MEMORY.get(data.name)
    return None if src is None or src.shape != data.shape else src.arr


def as_volume(
    volume: Any,
    *,
    volume_axis: int | None = None,
    chunk_bytes: int | None = None,
) -> tuple[Volume, Kind]:
    """Wrap numpy/dask/Volume input as a Volume, remembering what kind it was.

    numpy arrays are wrapped without hashing their data (``name=False``), in slabs
    contiguous in their memory order.
    """
    if isinstance(volume, Volume):
        if volume_axis is not None and volume.ndim == 4:
            volume = dataclasses.replace(volume, volume_axis=volume_axis)
        return volume, "volume"
    if isinstance(volume, da.Array):
        return Volume(volume, volume_axis=volume_axis), "dask"
    if hasattr(volume, "__array__") or isinstance(volume, (list, tuple)):
        arr = np.asarray(volume)
        if arr.ndim not in (3, 4):
            raise VolbinDataError(
                f"volumes must be 3D (X, Y, Z) or 4D (X, Y, Z, T); got {arr.ndim}D data of shape {arr.shape}."
            )
        order: Literal["C", "F"] = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        chunks = slab_chunks(arr.shape, arr.dtype.itemsize, order, chunk_bytes or DEFAULT_CHUNK_BYTES)
        src = _NoCopy(arr)
        data = da.from_array(
            src, chunks=chunks, name=False, asarray=False, meta=np.empty((0,) * arr.ndim, arr.dtype)
        )
        _IN_MEMORY[data.name] = src
        return Volume(data, volume_axis=volume_axis), "numpy"
    raise TypeError(
        f"`volume` must be a numpy array, a dask array or a volbin.Volume; got {type(volume).__name__}."
    )


def fill_eagerly(data: da.Array, fill: Callable[[], np.ndarray]) -> da.Array:
    """Mark `data` (a lazy result of data wrapped from a numpy array) as one that `fill`
    computes straight into a new numpy array, without a dask graph: `like_input` then calls
    it for numpy output.  An array derived from `data` does not inherit the mark."""
    data._volbin_fill = fill  # type: ignore[attr-defined]
    return data


def like_input(result: Volume, kind: Kind) -> Any:
    """Return `result` as the kind of object the user passed in."""
    if kind == "volume":
        return result
    if kind == "dask":
        return result.data
    fill = getattr(result.data, "_volbin_fill", None)
    if fill is not None:
        return fill()
    # Store blocks into one preallocated array: no second full-size copy at the end.
    out = np.empty(result.shape, dtype=result.dtype)
    da.store(result.data, out, lock=False)
    return out
