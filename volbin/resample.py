"""Resampling volumes onto other voxel grids: `upsample` and `resample_to_grid`.

Both are lazy and chunked: every output chunk is computed from the input region it needs (plus
a margin for the interpolation's support), so peak memory follows the chunk size and the
values do not depend on the chunking.  Interpolation follows scipy.ndimage: a voxel value
sits at the voxel's centre, integer coordinates are voxel centres, and each voxel is the box
from ``-0.5`` to ``+0.5`` around its centre.  A volume covers ``[-0.5, n - 0.5]`` along an
axis of ``n`` voxels; output points inside that extent are interpolated with the edge voxels
extended outwards (``mode='nearest'``), output points outside it get `cval`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from scipy import ndimage

from .volume import DEFAULT_CHUNK_BYTES, Volume, as_volume, like_input, slab_chunks

__all__ = ["VoxelMap", "resample_to_grid", "upsample"]

#: Input voxels kept beyond a spline's support for orders >= 2.  The spline prefilter is an
#: infinite-response filter whose influence decays by 0.268 per voxel (cubic); 16 voxels take
#: a chunk edge's effect below 1e-9 of the data's range.
_SPLINE_MARGIN = 16
#: scipy's own edge padding before spline prefiltering with mode='nearest'.
_SPLINE_NPAD = 12
#: Output points per map_coordinates call (its coordinates take 24 bytes per point).
_POINTS_PER_CALL = 2**20
#: Entries of a voxel-to-voxel matrix below this fraction of their row's norm are rounding
#: noise of ``inv(A) @ B`` and are set to 0, so that axis-aligned grids are recognised.
_SNAP = 1e-10


@dataclass(frozen=True)
class VoxelMap:
    """Output voxel index -> input voxel coordinate: ``c = matrix @ o + offset``.

    Parameters
    ----------
    matrix : (3, 3) ndarray
        Row ``p`` gives input axis ``p``'s coordinate in terms of the output indices.
    offset : (3,) ndarray
    in_shape, out_shape : 3 ints
        Spatial shapes of the input and of the output grid.
    order : int
        Spline order of the interpolation, 0 to 5 (1: linear).
    cval : float
        Value of output points outside the input's extent.
    axis_order : tuple of 3 ints, optional
        For grids aligned with the input's axes, the order in which output axes are
        interpolated (default: the axes that shrink the data most first).  Fixed per map,
        so that every chunk computes its values the same way.
    """

    matrix: np.ndarray
    offset: np.ndarray
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    order: int = 1
    cval: float = 0.0
    axis_order: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64).reshape(3, 3)
        norms = np.abs(m).max(axis=1, keepdims=True)
        m[np.abs(m) <= _SNAP * norms] = 0.0
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "offset", np.array(self.offset, dtype=np.float64).reshape(3))
        object.__setattr__(self, "in_shape", tuple(int(s) for s in self.in_shape))
        object.__setattr__(self, "out_shape", tuple(int(s) for s in self.out_shape))
        if not isinstance(self.order, (int, np.integer)) or not 0 <= self.order <= 5:
            raise ValueError(f"`order` must be an int from 0 to 5; got {self.order!r}.")
        if not np.isfinite(m).all() or not np.isfinite(self.offset).all():
            raise ValueError("the voxel-to-voxel map must be finite.")
        if self.axis_order is None and self.perm is not None:
            ratio = [1.0 / abs(m[self.perm[a], a]) for a in range(3)]
            order = tuple(sorted(range(3), key=lambda a: (ratio[a], a)))
            object.__setattr__(self, "axis_order", order)

    @property
    def perm(self) -> tuple[int, int, int] | None:
        """Input axis of each output axis if the grids are aligned (one non-zero per row and
        column), else None."""
        nz = self.matrix != 0
        if not (nz.sum(axis=0) == 1).all() or not (nz.sum(axis=1) == 1).all():
            return None
        return tuple(int(np.flatnonzero(nz[:, a])[0]) for a in range(3))  # type: ignore[return-value]

    @property
    def separable(self) -> bool:
        return self.perm is not None and self.order <= 1

    def coords(self, p: int, idx: Sequence[np.ndarray]) -> np.ndarray:
        """Input coordinate along axis `p` at output indices `idx` (three broadcastable
        arrays of global indices); the same arithmetic for every chunking."""
        m = self.matrix[p]
        return ((m[0] * idx[0] + m[1] * idx[1]) + m[2] * idx[2]) + self.offset[p]

    def region(self, out_loc: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Input index range (start, stop) per input axis that output block `out_loc` reads;
        an empty range where the block lies wholly outside the input."""
        corners = np.array(
            [
                [lo if bit == 0 else hi - 1 for (lo, hi), bit in zip(out_loc, bits, strict=True)]
                for bits in np.ndindex(2, 2, 2)
            ],
            dtype=np.float64,
        ).T
        c = self.matrix @ corners + self.offset[:, None]
        margin = 1 if self.order <= 1 else self.order // 2 + 1 + _SPLINE_MARGIN
        out = []
        for p in range(3):
            n = self.in_shape[p]
            lo_c, hi_c = float(c[p].min()), float(c[p].max())
            if hi_c < -0.5 or lo_c > n - 0.5:
                out.append((0, 0))
                continue
            lo = max(0, math.floor(min(max(lo_c, 0.0), n - 1.0)) - margin)
            hi = min(n, math.floor(min(max(hi_c, 0.0), n - 1.0)) + 1 + margin)
            out.append((lo, hi))
        return out


def _taps(c: np.ndarray, n: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global input indices and weights of linear (or nearest) interpolation at `c`,
    edges extended (scipy's mode='nearest')."""
    cn = np.clip(c, 0.0, n - 1.0)
    if order == 0:
        i0 = np.floor(cn + 0.5).astype(np.intp)
        np.minimum(i0, n - 1, out=i0)
        return i0, i0, np.zeros(c.shape)
    i0 = np.floor(cn).astype(np.intp)
    np.minimum(i0, max(n - 2, 0), out=i0)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, cn - i0


def _separable(
    m: VoxelMap, x: np.ndarray, start: Sequence[int], out_loc: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Linear/nearest interpolation axis by axis (grids aligned with the input's axes)."""
    perm = m.perm
    assert perm is not None and m.axis_order is not None
    y = x.transpose(perm)  # axis a of y runs along input axis perm[a]
    outside = []
    for a in m.axis_order:
        p = perm[a]
        idx = [np.zeros(1)] * 3
        idx[a] = np.arange(*out_loc[a], dtype=np.float64)
        c = m.coords(p, idx)
        outside.append((a, (c < -0.5) | (c > m.in_shape[p] - 0.5)))
        i0, i1, w = _taps(c, m.in_shape[p], m.order)
        i0 = i0 - start[p]
        if m.order == 0:
            y = np.take(y, i0, axis=a)
            continue
        shape = [1, 1, 1]
        shape[a] = w.size
        w32 = w.astype(y.dtype).reshape(shape)
        lo = np.take(y, i0, axis=a)
        lo *= 1 - w32
        hi = np.take(y, i1 - start[p], axis=a)
        hi *= w32
        lo += hi
        y = lo
    y = np.ascontiguousarray(y)
    for a, out in outside:
        if out.any():
            sel: list[Any] = [slice(None)] * 3
            sel[a] = out
            y[tuple(sel)] = m.cval
    return y


def _general(
    m: VoxelMap, x: np.ndarray, start: Sequence[int], out_loc: Sequence[tuple[int, int]]
) -> np.ndarray:
    """scipy.ndimage.map_coordinates on coordinates computed from global output indices."""
    shape = tuple(hi - lo for lo, hi in out_loc)
    out = np.empty(shape, dtype=x.dtype)
    shift = np.asarray(start, dtype=np.float64)
    src = x
    if m.order > 1:
        # scipy pads edge values before prefiltering for mode='nearest'; do the same at the
        # input's true edges (a chunk's inner edges have real neighbours instead).
        pad = [
            (_SPLINE_NPAD if s == 0 else 0, _SPLINE_NPAD if s + n == full else 0)
            for s, n, full in zip(start, x.shape, m.in_shape, strict=True)
        ]
        src = ndimage.spline_filter(np.pad(x, pad, mode="edge"), m.order, output=np.float64, mode="nearest")
        shift = shift - np.array([p[0] for p in pad], dtype=np.float64)
    rows = max(1, _POINTS_PER_CALL // max(1, shape[1] * shape[2]))
    i1 = np.arange(*out_loc[1], dtype=np.float64)[None, :, None]
    i2 = np.arange(*out_loc[2], dtype=np.float64)[None, None, :]
    for r0 in range(0, shape[0], rows):
        r1 = min(shape[0], r0 + rows)
        i0 = np.arange(out_loc[0][0] + r0, out_loc[0][0] + r1, dtype=np.float64)[:, None, None]
        sub = (r1 - r0, shape[1], shape[2])
        coords = np.empty((3, *sub))
        inside = np.ones(sub, dtype=bool)
        for p in range(3):
            c = np.broadcast_to(m.coords(p, (i0, i1, i2)), sub)
            inside &= (c >= -0.5) & (c <= m.in_shape[p] - 0.5)
            np.subtract(c, shift[p], out=coords[p])
        ndimage.map_coordinates(
            src, coords, output=out[r0:r1], order=m.order, mode="nearest", prefilter=False
        )
        out[r0:r1][~inside] = m.cval
    return out


def resample_block(
    m: VoxelMap, x: np.ndarray, start: Sequence[int], out_loc: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Output block `out_loc` of map `m`, from the input region `x` that starts at `start`.

    `x` must hold at least ``m.region(out_loc)``; its dtype is the dtype computed in.
    Returns a C-contiguous array of the block's shape.
    """
    shape = tuple(hi - lo for lo, hi in out_loc)
    if x.size == 0 or 0 in shape:
        return np.full(shape, m.cval, dtype=x.dtype)
    if m.separable:
        return _separable(m, x, start, out_loc)
    return _general(m, x, start, out_loc)


# --- the lazy graph ----------------------------------------------------------------------------
def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.result_type(dtype, np.float32)


def _block_task(
    m: VoxelMap,
    spatial: tuple[int, ...],
    vaxis: int | None,
    out_loc: list[tuple[int, int]],
    region: list[tuple[int, int]],
    dtype: np.dtype,
    pieces: list[np.ndarray],
    piece_locs: list[list[tuple[int, int]]],
) -> np.ndarray:
    shape = tuple(hi - lo for lo, hi in region)
    x = np.empty(shape, dtype=dtype)
    for piece, loc in zip(pieces, piece_locs, strict=True):
        src = tuple(
            slice(max(lo, rlo) - lo, min(hi, rhi) - lo)
            for (lo, hi), (rlo, rhi) in zip(loc, region, strict=True)
        )
        dst = tuple(
            slice(max(lo, rlo) - rlo, min(hi, rhi) - rlo)
            for (lo, hi), (rlo, rhi) in zip(loc, region, strict=True)
        )
        x[dst] = piece[src]
    s_out = [out_loc[a] for a in spatial]
    s_start = [region[a][0] for a in spatial]
    if vaxis is None:
        return resample_block(m, x, s_start, s_out)
    out_shape = tuple(hi - lo for lo, hi in out_loc)
    out = np.empty(out_shape, dtype=dtype)
    for t in range(out_shape[vaxis]):
        block = resample_block(m, np.take(x, t, axis=vaxis), s_start, s_out)
        sel: list[Any] = [slice(None)] * len(out_shape)
        sel[vaxis] = t
        out[tuple(sel)] = block
    return out


def _resample_data(vol: Volume, m: VoxelMap, chunks: Any, name: str) -> da.Array:
    """Lazy output of map `m` over `vol`'s spatial axes (a volume axis is carried along)."""
    data = vol.data
    spatial, vaxis = vol.spatial_axes, vol.volume_axis
    dtype = _compute_dtype(data.dtype)
    out_shape = list(data.shape)
    for a, n in zip(spatial, m.out_shape, strict=True):
        out_shape[a] = n
    if chunks is None:
        nchunks = [len(c) for c in data.chunks]
        order: Literal["C", "F"] = "C" if nchunks[0] > 1 and max(nchunks[1:]) == 1 else "F"
        chunks = slab_chunks(out_shape, dtype.itemsize, order, DEFAULT_CHUNK_BYTES)
    out_chunks = da.core.normalize_chunks(chunks, tuple(out_shape), dtype=dtype)
    if vaxis is not None:
        out_chunks = tuple(data.chunks[a] if a == vaxis else c for a, c in enumerate(out_chunks))
    in_bounds = [np.cumsum((0, *c)) for c in data.chunks]
    out_bounds = [np.cumsum((0, *c)) for c in out_chunks]
    token = tokenize(
        data.name,
        m.matrix,
        m.offset,
        m.in_shape,
        m.out_shape,
        m.order,
        m.cval,
        m.axis_order,
        out_chunks,
        str(dtype),
    )
    name = f"{name}-{token}"
    dsk: dict[Any, Any] = {}
    for idx in np.ndindex(*[len(c) for c in out_chunks]):
        out_loc = [(int(b[i]), int(b[i + 1])) for b, i in zip(out_bounds, idx, strict=True)]
        sregion = m.region([out_loc[a] for a in spatial])
        region = list(out_loc) if vaxis is not None else [(0, 0)] * data.ndim
        for a, r in zip(spatial, sregion, strict=True):
            region[a] = r
        keys, locs = [], []
        if all(hi > lo for lo, hi in region):
            ranges = [
                range(int(np.searchsorted(b, lo, "right")) - 1, int(np.searchsorted(b, hi, "left")))
                for b, (lo, hi) in zip(in_bounds, region, strict=True)
            ]
            for j in np.ndindex(*[len(r) for r in ranges]):
                k = tuple(r[i] for r, i in zip(ranges, j, strict=True))
                keys.append((data.name, *k))
                locs.append([(int(b[i]), int(b[i + 1])) for b, i in zip(in_bounds, k, strict=True)])
        else:
            region = [(0, 0)] * data.ndim
        dsk[(name, *idx)] = (_block_task, m, spatial, vaxis, out_loc, region, dtype, keys, locs)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[data])  # type: ignore[list-item]
    return da.Array(graph, name, out_chunks, meta=np.empty((0,) * data.ndim, dtype))


def _factors(factors: Any) -> tuple[float, float, float]:
    try:
        f = tuple(float(v) for v in (factors if np.ndim(factors) else [factors] * 3))
    except (TypeError, ValueError):
        raise ValueError(f"`factors` must be a number >= 1 or three of them; got {factors!r}.") from None
    if len(f) != 3 or not all(math.isfinite(v) and v >= 1.0 for v in f):
        raise ValueError(f"`factors` must be a number >= 1 or three of them; got {factors!r}.")
    return f[0], f[1], f[2]


def _with_grid(vol: Volume, data: da.Array, affine: np.ndarray, step: dict[str, Any]) -> Volume:
    """`vol` with new data on a new grid: affine, header shape and voxel sizes updated."""
    header = vol.header
    if header is not None and hasattr(header, "set_zooms"):
        header = header.copy()
        zooms = list(header.get_zooms())
        shape = tuple(int(s) for s in data.shape)
        header.set_data_shape(shape)
        new = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        zooms = [float(v) for v in new] + [float(z) for z in zooms[3 : len(shape)]]
        zooms += [1.0] * (len(shape) - len(zooms))
        header.set_zooms(zooms)
        # Keep the input's qform/sform codes: the new grid is the same space, finer.
        if "qform_code" in header:
            qcode, scode = int(header["qform_code"]), int(header["sform_code"])
            if qcode:
                header.set_qform(affine, code=qcode)
            if scode:
                header.set_sform(affine, code=scode)
    return vol.derive(data, step, affine=affine, header=header)


def upsample(
    volume: Any,
    factors: float | Sequence[float],
    *,
    order: int = 1,
    chunks: Any = None,
    volume_axis: int | None = None,
) -> Any:
    """Upsample the spatial axes of a volume by interpolation, lazily and chunk by chunk.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
        numpy in gives numpy out, dask gives dask, a Volume gives a Volume with its affine
        and header voxel sizes updated.  A volume axis is not resampled.
    factors : float or 3 floats
        Upsampling factor per spatial axis (x, y, z), each >= 1, or one for all.  An axis of
        ``n`` voxels gets ``round(n * factor)`` voxels; the factor used is that ratio.
    order : int
        Spline order, 0 (nearest) to 5; 1 (linear, default) never overshoots the data range.
    chunks : dask chunk specification, optional
        Output chunks; by default slabs of about 32 MiB along the input's slab axis.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3).

    Returns
    -------
    upsampled : same kind as `volume`
        float32 for inputs of up to 32-bit floats or up to 16-bit integers, else float64.

    Raises
    ------
    ValueError
        A factor below 1 or not finite, or `order` outside 0..5.

    Notes
    -----
    Output voxels tile the input's physical extent exactly (scipy's ``grid_mode=True``):
    output voxel ``o`` along an axis of ``n`` input and ``m`` output voxels samples input
    coordinate ``(o + 0.5) * n / m - 0.5``, so the outer faces of the corner voxels, at
    ``-0.5`` and ``n - 0.5``, stay where they were and the result overlays the input in a
    viewer.  Unlike ``scipy.ndimage.zoom``, the array is never held whole: each output chunk
    reads the input region it needs plus a margin.  For orders 0 and 1 the values do not
    depend on the chunking (bit for bit); for higher orders the spline prefilter runs per
    chunk with a margin of 16 voxels, which changes values by less than 1e-6 of the data's
    range.  Linear interpolation on aligned grids runs axis by axis in numpy (float32 for
    float32 data); other cases call ``scipy.ndimage.map_coordinates``.  NaN spreads to the
    output voxels that interpolate it.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    >>> upsample(x, 2).shape
    (4, 4, 4)
    >>> upsample(x, (2, 1, 1))[:, 0, 0].tolist()
    [0.0, 1.0, 3.0, 4.0]
    """
    f = _factors(factors)
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    n_in = vol.spatial_shape
    n_out = (
        max(n_in[0], round(n_in[0] * f[0])),
        max(n_in[1], round(n_in[1] * f[1])),
        max(n_in[2], round(n_in[2] * f[2])),
    )
    s = np.array([a / b for a, b in zip(n_in, n_out, strict=True)])
    m = VoxelMap(np.diag(s), 0.5 * s - 0.5, n_in, n_out, order)
    data = _resample_data(vol, m, chunks, "upsample")
    grid = np.eye(4)
    grid[:3, :3] = np.diag(s)
    grid[:3, 3] = 0.5 * s - 0.5
    step = {
        "step": "upsample",
        "factors": [b / a for a, b in zip(n_in, n_out, strict=True)],
        "order": order,
        "shape": list(data.shape),
    }
    return like_input(_with_grid(vol, data, vol.affine @ grid, step), kind)


def resample_to_grid(
    volume: Any,
    target_affine: Any,
    target_shape: Sequence[int],
    *,
    order: int = 1,
    cval: float = 0.0,
    chunks: Any = None,
    volume_axis: int | None = None,
) -> Any:
    """Resample a volume onto another voxel grid given by an affine and a shape.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
        The source; its affine (identity for arrays) maps its voxels to world mm.
    target_affine : (4, 4) array_like
        Voxel-to-world transform of the output grid.
    target_shape : 3 ints
        Spatial shape of the output grid.
    order : int
        Spline order, 0 to 5 (1: linear).
    cval : float
        Value of output voxels whose centres lie outside the source's extent (the boxes of
        its voxels); inside it, edge voxels are extended outwards.
    chunks : dask chunk specification, optional
        Output chunks; by default slabs of about 32 MiB.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3); volumes are resampled one by one.

    Returns
    -------
    resampled : same kind as `volume`
        On the target grid: a Volume gets `target_affine` and a header with the new shape
        and voxel sizes.  Lazy: each output chunk reads only the source region it needs.

    Raises
    ------
    ValueError
        A bad affine or shape, or `order` outside 0..5.

    Notes
    -----
    Output voxel ``o`` samples the source at voxel coordinate
    ``inv(A_source) @ target_affine @ o``.  Grids whose axes are parallel to the source's
    (any permutation or flip) and orders 0 and 1 are interpolated axis by axis; other cases
    use ``scipy.ndimage.map_coordinates`` with ``mode='nearest'``, to which both are equal
    within float32 rounding.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(4.0, dtype=np.float32).reshape(4, 1, 1) * np.ones((1, 2, 2), np.float32)
    >>> half = np.diag([2.0, 1.0, 1.0, 1.0]); half[0, 3] = 0.5   # 2 voxels of 2 mm
    >>> resample_to_grid(x, half, (2, 2, 2))[:, 0, 0].tolist()
    [0.5, 2.5]
    """
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    target = np.asarray(target_affine, dtype=np.float64)
    if target.shape != (4, 4) or not np.isfinite(target).all():
        raise ValueError(f"`target_affine` must be a finite 4x4 matrix; got {target_affine!r}.")
    shape = tuple(int(s) for s in target_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"`target_shape` must be 3 positive ints; got {target_shape!r}.")
    try:
        vox = np.linalg.solve(vol.affine, target)
    except np.linalg.LinAlgError:
        raise ValueError("the volume's affine is singular; cannot resample it.") from None
    m = VoxelMap(vox[:3, :3], vox[:3, 3], vol.spatial_shape, shape, order, float(cval))
    data = _resample_data(vol, m, chunks, "resample")
    step = {
        "step": "resample",
        "shape": list(data.shape),
        "affine": target.tolist(),
        "order": order,
        "cval": float(cval),
    }
    return like_input(_with_grid(vol, data, target, step), kind)
