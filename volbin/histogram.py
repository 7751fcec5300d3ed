"""Exact per-group range, moments and histograms, computed by streamed reductions.

Every statistic volbin uses (ranges, percentiles, histogram thresholds, equalisation
curves, `volbin info`) comes from here.  One pass gives the per-group finite range (or full
moments); a second gives per-group counts.  Each block is reduced by a compiled kernel to a
tiny per-group partial, and dask sums the partials, so memory follows the chunk size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from . import _kernels as K
from .volume import Grouping, Volume, block_source

__all__ = [
    "GroupStats",
    "bin_means",
    "fine_nbins",
    "group_histograms",
    "group_histograms_with_offsets",
    "group_range",
    "group_stats",
    "percentiles_from_hist",
]

#: Upper bound on the total number of fine-histogram bins across groups (64 MiB of int64).
_FINE_BUDGET = 2**23


def _local_gstrides(block_shape: tuple[int, ...], grouping: Grouping) -> tuple[np.ndarray, tuple[int, ...]]:
    """Group strides for the kernels within one block, and the block's local group shape."""
    local_shape = tuple(block_shape[a] for a in grouping.group_axes)
    strides = np.zeros(len(block_shape), dtype=np.int64)
    stride = 1
    for a in reversed(grouping.group_axes):
        strides[a] = stride
        stride *= block_shape[a]
    return strides, local_shape


def _partial_shape(block_shape: tuple[int, ...], grouping: Grouping) -> tuple[int, ...]:
    return tuple(block_shape[a] if a in grouping.group_axes else 1 for a in range(len(block_shape)))


@dataclass(frozen=True)
class _Block:
    """What a per-block kernel driver knows besides the data: the block's array location and,
    under a mask, how many voxels of each local group the mask leaves out (flat, C order)."""

    location: Sequence[tuple[int, int]]
    excluded: np.ndarray | None


def _exclude(block: np.ndarray, inside: np.ndarray, grouping: Grouping) -> np.ndarray:
    """`block` with the voxels outside the mask made NaN, which every kernel skips.

    Integers up to 16 bits are exact in float32, wider ones in float64 (the kernels bin
    float64 values, so the bins do not change).  A block the mask leaves out entirely is cut
    to length 0 along a non-group axis: the kernels then return their empty partials.
    """
    if inside.all():
        return block
    if not inside.any():
        axis = next(a for a in range(block.ndim) if a not in grouping.group_axes)
        return block[tuple(slice(0, 0) if a == axis else slice(None) for a in range(block.ndim))]
    if block.dtype.kind == "f":
        dtype = block.dtype if block.dtype.itemsize >= 4 else np.dtype(np.float32)
    else:
        dtype = np.dtype(np.float32 if block.dtype.itemsize <= 2 else np.float64)
    return np.where(inside, block.astype(dtype, copy=False), dtype.type(np.nan))


def _local_excluded(inside: np.ndarray, grouping: Grouping) -> np.ndarray:
    """Voxels outside the mask per local group of a block (flat, C order over group axes)."""
    axes = tuple(a for a in range(inside.ndim) if a not in grouping.group_axes)
    return (~inside).sum(axis=axes, dtype=np.int64).ravel()


def _map_partials(
    data: da.Array,
    grouping: Grouping,
    kernel: Callable[[np.ndarray, np.ndarray, tuple[int, ...], _Block], np.ndarray],
    trailing: tuple[int, ...],
    dtype: Any,
    pre: Callable[[np.ndarray, Any], np.ndarray] | None = None,
    mask: da.Array | None = None,
) -> da.Array:
    """Map `kernel(block4d, gstrides4d, local_group_shape, _Block)` over blocks.

    The kernel returns an array ``local_group_shape + trailing``; the result is a dask array
    with one entry per block along non-group axes, to be reduced by the caller.  `pre`, if
    given, maps each block (and its array location) before the kernel sees it.  `mask` (a
    boolean dask array of the data's shape and chunks) keeps only the voxels where it is
    True: the others are made NaN before the kernel sees them (see `_exclude`).
    """

    def run(block: np.ndarray, *inside: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        return _block_partial(block, loc, grouping, kernel, trailing, pre, inside[0] if inside else None)

    chunks = tuple(
        data.chunks[a] if a in grouping.group_axes else (1,) * len(data.chunks[a]) for a in range(data.ndim)
    ) + tuple((t,) for t in trailing)
    new_axis = list(range(data.ndim, data.ndim + len(trailing)))
    meta = np.empty((0,) * (data.ndim + len(trailing)), dtype)
    args = (data,) if mask is None else (data, _aligned(mask, data))
    return da.map_blocks(run, *args, chunks=chunks, dtype=dtype, new_axis=new_axis or None, meta=meta)


def _block_partial(
    block: np.ndarray,
    loc: Sequence[tuple[int, int]],
    grouping: Grouping,
    kernel: Callable[[np.ndarray, np.ndarray, tuple[int, ...], _Block], np.ndarray],
    trailing: tuple[int, ...],
    pre: Callable[[np.ndarray, Any], np.ndarray] | None,
    inside: np.ndarray | None,
) -> np.ndarray:
    """The partial of one block at array location `loc` (see `_map_partials`)."""
    shape = block.shape
    if pre is not None:
        block = pre(block, loc)
    excluded = None
    if inside is not None:
        excluded = _local_excluded(inside, grouping)
        block = _exclude(block, inside, grouping)
    gstrides, local_shape = _local_gstrides(block.shape, grouping)
    x4, g4 = K.as_c4d(block, gstrides)
    res = kernel(x4, g4, local_shape, _Block(loc, excluded))
    return res.reshape(_partial_shape(shape, grouping) + trailing)


def _partials(
    data: da.Array,
    grouping: Grouping,
    kernel: Callable[[np.ndarray, np.ndarray, tuple[int, ...], _Block], np.ndarray],
    trailing: tuple[int, ...],
    dtype: Any,
    pre: Callable[[np.ndarray, Any], np.ndarray] | None = None,
    mask: da.Array | None = None,
) -> np.ndarray:
    """``_map_partials(...).compute()``.  Data wrapped from a numpy array or read from a
    loaded file (`volume.block_source`) is reduced block by block on a pool of threads,
    without building and running a dask graph (tens of milliseconds per pass, as much as a
    pass over memory): the same blocks, so the same partials."""
    parts = None
    if mask is None:
        parts = blocks_now(data, lambda b, loc: _block_partial(b, loc, grouping, kernel, trailing, pre, None))
    if parts is None:
        return np.asarray(_map_partials(data, grouping, kernel, trailing, dtype, pre, mask).compute())
    starts = [np.cumsum((0, *c)) for c in data.chunks]
    out_shape = tuple(
        data.shape[a] if a in grouping.group_axes else data.numblocks[a] for a in range(data.ndim)
    )
    out = np.empty(out_shape + trailing, dtype=dtype)
    for idx, part in zip(np.ndindex(*data.numblocks), parts, strict=True):
        where = tuple(
            slice(int(starts[a][i]), int(starts[a][i + 1])) if a in grouping.group_axes else slice(i, i + 1)
            for a, i in enumerate(idx)
        )
        out[where] = part
    return out


def blocks_now(data: da.Array, fn: Callable[[np.ndarray, list[tuple[int, int]]], Any]) -> list[Any] | None:
    """``[fn(block, location), ...]`` over the blocks of data wrapped from a numpy array
    (`in_memory`) or read from a loaded file (`block_source`), in
    ``np.ndindex(*data.numblocks)`` order, on a pool of threads without a dask graph (a block
    at a time per thread, as the graph would read them); None for other data."""
    arr = block_source(data)
    if arr is None:
        return None
    starts = [np.cumsum((0, *c)) for c in data.chunks]
    locs = [
        [(int(starts[a][i]), int(starts[a][i + 1])) for a, i in enumerate(idx)]
        for idx in np.ndindex(*data.numblocks)
    ]

    def one(loc: list[tuple[int, int]]) -> Any:
        return fn(arr[tuple(slice(lo, hi) for lo, hi in loc)], loc)

    threads = min(len(locs), int(dask.config.get("num_workers", None) or os.cpu_count() or 1))
    if threads <= 1:
        return [one(loc) for loc in locs]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, locs))


def _aligned(mask: da.Array, data: da.Array) -> da.Array:
    if mask.shape != data.shape:
        raise ValueError(f"`mask` must have the data's shape {data.shape}; got {mask.shape}.")
    return mask if mask.chunks == data.chunks else mask.rechunk(data.chunks)


def _nongroup_axes(grouping: Grouping) -> tuple[int, ...]:
    return tuple(a for a in range(len(grouping.shape)) if a not in grouping.group_axes)


def _move_groups(arr: np.ndarray, grouping: Grouping) -> np.ndarray:
    """Reduce-shaped result (ndim of data, 1 on non-group axes, + trailing) -> group_shape + trailing."""
    trailing = arr.shape[len(grouping.shape) :]
    return arr.reshape(grouping.group_shape + trailing)


def _range_kernel(x4: np.ndarray, g4: np.ndarray, local_shape: tuple[int, ...], b: _Block) -> np.ndarray:
    n = int(np.prod(local_shape))
    mn = np.full(n, np.inf)
    mx = np.full(n, -np.inf)
    nf = np.zeros(n, dtype=np.int64)
    K.group_minmax(x4, g4, mn, mx, nf)
    size = np.prod([hi - lo for lo, hi in b.location]) // max(n, 1)
    inside = np.full(n, size, dtype=np.int64)
    if b.excluded is not None:
        inside -= b.excluded
        # Voxels outside the mask reached the kernel as NaN (or not at all, for a block
        # left out entirely, whose `nf` is 0).
        nf -= b.excluded if x4.size else 0
    return np.stack([mn, mx, nf.astype(np.float64), inside.astype(np.float64)], axis=-1)


#: (kernel, trailing shape, dtype) of the per-block range partials.
_RANGE: tuple[Any, tuple[int, ...], Any] = (_range_kernel, (4,), np.float64)


def _range_parts(data: da.Array, grouping: Grouping, mask: da.Array | None = None) -> da.Array:
    """Per-block (min, max, n_nonfinite, n_voxels) partials, one entry per block on non-group
    axes; under a mask, of the voxels inside it."""
    return _map_partials(data, grouping, *_RANGE, mask=mask)


def range_graph(data: da.Array, grouping: Grouping, mask: da.Array | None = None) -> da.Array:
    """Lazy per-group (min, max, n_nonfinite, n_voxels): shape ``group_shape + (4,)``."""
    parts = _range_parts(data, grouping, mask)
    axes = _nongroup_axes(grouping)
    lo = parts[..., 0].min(axis=axes, keepdims=True)
    hi = parts[..., 1].max(axis=axes, keepdims=True)
    rest = parts[..., 2:].sum(axis=axes, keepdims=True)
    return da.concatenate([lo[..., None], hi[..., None], rest], axis=-1)


#: Per-block partial results up to this size are gathered and reduced in numpy: a dask
#: reduction graph costs tens of milliseconds to build and run, as much as a memory pass.
_GATHER_BYTES = 64 * 2**20


def _gather(data: da.Array, grouping: Grouping, trailing: tuple[int, ...]) -> bool:
    """Whether the per-block partials of `data` (8-byte entries of shape `trailing`) are
    small enough to gather and reduce in numpy."""
    n = math.prod(data.shape[a] if a in grouping.group_axes else data.numblocks[a] for a in range(data.ndim))
    return 8 * n * math.prod(trailing) <= _GATHER_BYTES


def group_range(
    volume: Volume | da.Array, grouping: Grouping, mask: da.Array | None = None, *, counts: bool = False
) -> Any:
    """Per-group finite minimum, maximum and number of non-finite voxels (one pass).

    Groups without a finite voxel get min = +inf and max = -inf.  With `mask` (boolean, the
    data's shape), only the voxels where it is True count.  With `counts`, a fourth array
    gives the number of voxels of each group (inside the mask), from the same pass.
    """
    data = volume.data if isinstance(volume, Volume) else volume
    if _gather(data, grouping, _RANGE[1]):
        p = _partials(data, grouping, *_RANGE, mask=mask)
        axes = _nongroup_axes(grouping)
        res = np.concatenate(
            [
                p[..., 0:1].min(axis=axes, keepdims=True),
                p[..., 1:2].max(axis=axes, keepdims=True),
                p[..., 2:].sum(axis=axes, keepdims=True),
            ],
            axis=-1,
        )
    else:
        res = range_graph(data, grouping, mask).compute()
    res = _move_groups(res, grouping)
    out = (res[..., 0], res[..., 1], res[..., 2].astype(np.int64))
    return (*out, res[..., 3].astype(np.int64)) if counts else out


@dataclass(frozen=True)
class GroupStats:
    """Per-group moments of the finite voxels and counts of the non-finite ones."""

    grouping: Grouping
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    nan: np.ndarray
    posinf: np.ndarray
    neginf: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.count

    @property
    def rms(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.sumsq / self.count)

    @property
    def std(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            var = self.sumsq / self.count - self.mean**2
        return np.sqrt(np.maximum(var, 0.0))

    @property
    def nonfinite(self) -> np.ndarray:
        return self.nan + self.posinf + self.neginf


def stats_graph(data: da.Array, grouping: Grouping) -> da.Array:
    """Lazy per-group (min, max, n, sum, sumsq, nan, +inf, -inf): ``group_shape + (8,)``."""

    def kernel(x4: np.ndarray, g4: np.ndarray, local_shape: tuple[int, ...], _: Any) -> np.ndarray:
        n = int(np.prod(local_shape))
        mn = np.full(n, np.inf)
        mx = np.full(n, -np.inf)
        cnt = np.zeros(n, dtype=np.int64)
        s = np.zeros(n)
        ss = np.zeros(n)
        nf = np.zeros((n, 3), dtype=np.int64)
        K.group_stats(x4, g4, n, mn, mx, cnt, s, ss, nf)
        return np.concatenate([np.stack([mn, mx, cnt, s, ss], axis=-1), nf.astype(np.float64)], axis=-1)

    parts = _map_partials(data, grouping, kernel, (8,), np.float64)
    axes = _nongroup_axes(grouping)
    lo = parts[..., 0].min(axis=axes, keepdims=True)
    hi = parts[..., 1].max(axis=axes, keepdims=True)
    rest = parts[..., 2:].sum(axis=axes, keepdims=True)
    return da.concatenate([lo[..., None], hi[..., None], rest], axis=-1)


def group_stats(volume: Volume, grouping: Grouping) -> GroupStats:
    """Per-group min, max, count, sum, sum of squares and non-finite counts (one pass)."""
    res = _move_groups(stats_graph(volume.data, grouping).compute(), grouping)
    ints = res[..., [2, 5, 6, 7]].astype(np.int64)
    return GroupStats(
        grouping,
        res[..., 0],
        res[..., 1],
        ints[..., 0],
        res[..., 3],
        res[..., 4],
        ints[..., 1],
        ints[..., 2],
        ints[..., 3],
    )


def histogram_graph(
    data: da.Array,
    grouping: Grouping,
    lo: np.ndarray,
    hi: np.ndarray,
    nbins: int,
    pre: Callable[[np.ndarray, Any], np.ndarray] | None = None,
    offsets: bool = False,
    gather: bool = False,
    mask: da.Array | None = None,
) -> da.Array:
    """Lazy per-group counts (``group_shape + (nbins,)``) of `nbins` bins over [lo, hi].

    `pre(block, location)` maps blocks first (a tone curve, for histograms of rescaled data);
    `mask` keeps only the voxels where it is True.
    With `offsets`, the result is ``group_shape + (2, nbins)``: counts, then the fixed-point
    sums of the positions of the values within their bins (see
    `_kernels.group_histogram_offsets`).
    """
    kernel, trailing = _histogram_kernel(grouping, lo, hi, nbins, offsets)
    parts = _map_partials(data, grouping, kernel, trailing, np.int64, pre, mask)
    if gather:
        return parts
    return parts.sum(axis=_nongroup_axes(grouping), keepdims=True)


def _histogram_kernel(
    grouping: Grouping, lo: np.ndarray, hi: np.ndarray, nbins: int, offsets: bool
) -> tuple[Callable[[np.ndarray, np.ndarray, tuple[int, ...], _Block], np.ndarray], tuple[int, ...]]:
    """The per-block kernel of `histogram_graph` and the trailing shape of its partials."""
    lo_full = np.asarray(lo, dtype=np.float64).reshape(grouping.group_shape)
    hi_full = np.asarray(hi, dtype=np.float64).reshape(grouping.group_shape)
    trailing = (2, nbins) if offsets else (nbins,)

    def kernel(x4: np.ndarray, g4: np.ndarray, local_shape: tuple[int, ...], b: _Block) -> np.ndarray:
        loc = b.location
        index = tuple(slice(*loc[a]) for a in grouping.group_axes)
        blo = np.ascontiguousarray(lo_full[index]).ravel()
        bhi = np.ascontiguousarray(hi_full[index]).ravel()
        out = np.zeros((blo.size, *trailing), dtype=np.int64)
        if offsets:
            counts, sums = np.zeros((blo.size, nbins), np.int64), np.zeros((blo.size, nbins), np.int64)
            K.group_histogram_offsets(x4, g4, blo, bhi, nbins, counts, sums)
            out[:, 0], out[:, 1] = counts, sums
        else:
            K.group_histogram(x4, g4, blo, bhi, nbins, out)
        return out

    return kernel, trailing


#: Bytes of per-group results gathered from the workers at a time by `_compute_by_batch`.
_BATCH_BYTES = 32 * 2**20


def _compute_by_batch(graph: da.Array) -> np.ndarray:
    """``graph.compute()`` for a reduction whose blocks are independent groups of results,
    without the full second copy that joining the blocks at the end makes: a batch of
    blocks (up to `_BATCH_BYTES`) at a time is computed and copied into one array.  Each
    block reads only its own groups' data, so batches read no voxel twice."""
    if graph.npartitions == 1 or graph.nbytes <= _BATCH_BYTES:
        return graph.compute()
    out = np.empty(graph.shape, graph.dtype)
    blocks = graph.to_delayed()
    starts = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in graph.chunks]
    largest = max(1, int(np.prod([max(c) for c in graph.chunks])) * graph.dtype.itemsize)
    ids = list(np.ndindex(*graph.numblocks))
    step = max(1, _BATCH_BYTES // largest)
    for i in range(0, len(ids), step):
        batch = ids[i : i + step]
        for bid, part in zip(batch, dask.compute(*[blocks[b] for b in batch]), strict=True):
            out[tuple(slice(starts[a][j], starts[a][j + 1]) for a, j in enumerate(bid))] = part
    return out


def group_histograms(
    volume: Volume | da.Array,
    grouping: Grouping,
    lo: np.ndarray,
    hi: np.ndarray,
    nbins: int = 256,
    pre: Callable[[np.ndarray, Any], np.ndarray] | None = None,
    mask: da.Array | None = None,
) -> np.ndarray:
    """Exact per-group histograms of the finite voxels (one pass).

    Parameters
    ----------
    volume : Volume or dask array
    grouping : Grouping
    lo, hi : array of shape ``grouping.group_shape``
        Range of each group's `nbins` equal bins.  Values outside it are counted in the edge
        bins (as clipping to [lo, hi] would do).
    nbins : int
    pre : callable, optional
        ``pre(block, location) -> block`` applied to each block before binning.
    mask : dask array of bool, optional
        Only the voxels where `mask` is True are counted (the data's shape).

    Returns
    -------
    counts : ndarray of int64, shape ``grouping.group_shape + (nbins,)``
        Bin assignment is the same as ``np.histogram(values, nbins, (lo, hi))`` for values
        inside the range.
    """
    if not isinstance(nbins, (int, np.integer)) or nbins < 2:
        raise ValueError(f"`nbins` must be an int >= 2; got {nbins!r}.")
    data = volume.data if isinstance(volume, Volume) else volume
    res = _summed_histograms(data, grouping, lo, hi, int(nbins), pre, mask, offsets=False)
    return _move_groups(res, grouping)


def _summed_histograms(
    data: da.Array,
    grouping: Grouping,
    lo: np.ndarray,
    hi: np.ndarray,
    nbins: int,
    pre: Callable[[np.ndarray, Any], np.ndarray] | None,
    mask: da.Array | None,
    offsets: bool,
) -> np.ndarray:
    """The summed partials of `histogram_graph`, gathered and summed in numpy when small."""
    kernel, trailing = _histogram_kernel(grouping, lo, hi, nbins, offsets)
    if _gather(data, grouping, trailing):
        p = _partials(data, grouping, kernel, trailing, np.int64, pre, mask)
        return p.sum(axis=_nongroup_axes(grouping), keepdims=True)
    return _compute_by_batch(histogram_graph(data, grouping, lo, hi, nbins, pre, offsets=offsets, mask=mask))


def group_histograms_with_offsets(
    volume: Volume | da.Array,
    grouping: Grouping,
    lo: np.ndarray,
    hi: np.ndarray,
    nbins: int = 256,
    pre: Callable[[np.ndarray, Any], np.ndarray] | None = None,
    mask: da.Array | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`group_histograms`, plus the mean value of each bin (one pass).

    Returns
    -------
    counts : ndarray of int64, shape ``grouping.group_shape + (nbins,)``
    means : ndarray of float64, same shape
        The mean of the (clipped) values in each bin, to within 2**-24 of a bin width;
        the bin centre for empty bins.  Exact integer accumulation makes both independent
        of the chunking.
    """
    if not isinstance(nbins, (int, np.integer)) or nbins < 2:
        raise ValueError(f"`nbins` must be an int >= 2; got {nbins!r}.")
    data = volume.data if isinstance(volume, Volume) else volume
    res = _move_groups(
        _summed_histograms(data, grouping, lo, hi, int(nbins), pre, mask, offsets=True), grouping
    )
    counts, offsets = res[..., 0, :], res[..., 1, :]
    # The means take the offsets' place (both 8 bytes a bin): no second array of the size.
    means = bin_means(counts, offsets, lo, hi, grouping.group_shape, out=offsets.view(np.float64))
    return counts, means


def bin_means(
    counts: np.ndarray,
    offsets: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    group_shape: tuple[int, ...],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The mean value of each bin from the fixed-point offset sums of `histogram_graph`.

    One group at a time, so that temporaries are one group's bins; `out` (float64, the
    counts' shape) may be the memory of `offsets` itself.
    """
    nbins = counts.shape[-1]
    lo_ = np.asarray(lo, dtype=np.float64).reshape(group_shape)
    hi_ = np.asarray(hi, dtype=np.float64).reshape(group_shape)
    if out is None:
        out = np.empty(counts.shape, dtype=np.float64)
    edges = np.arange(nbins)
    for idx in np.ndindex(*group_shape):
        step = (hi_[idx] - lo_[idx]) / nbins
        left = edges * step + lo_[idx]  # the kernels' (and np.linspace's) edges
        c = counts[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            pos = np.where(c > 0, offsets[idx] / (np.maximum(c, 1) * float(K.OFFSET_SCALE)), 0.5)
        out[idx] = left + pos * step
    return out


def percentiles_from_hist(
    counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, q: Sequence[float]
) -> np.ndarray:
    """Percentiles (group_shape + (len(q),)) from histograms over [lo, hi].

    Follows ``np.percentile``'s default (linear) definition: interpolation between the order
    statistics at ranks ``floor`` and ``ceil`` of ``q / 100 * (n - 1)``.  Each order statistic
    is placed inside its bin (evenly spread over it; the first and last are `lo` and `hi`),
    so when [lo, hi] is the data's range each percentile is within one bin width of
    ``np.percentile``, however sparse the data.
    """
    # Interpolating the CDF at rank q * n instead (the obvious histogram percentile) is off by
    # up to a gap between neighbouring values: far more than a bin for small or sparse groups.
    nb = counts.shape[-1]
    qs = np.asarray(q, dtype=np.float64)
    out = np.empty((*counts.shape[:-1], len(qs)))
    for idx in np.ndindex(*counts.shape[:-1]):
        c = counts[idx]
        n = int(c.sum())
        a, b = float(lo[idx]), float(hi[idx])
        if n == 0 or not b > a:
            out[idx] = a
            continue
        cum = np.cumsum(c)
        width = (b - a) / nb
        rank = qs / 100.0 * (n - 1)
        i0 = np.floor(rank).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        s0, s1 = (_order_stat(i, c, cum, a, b, width) for i in (i0, i1))
        out[idx] = s0 + (rank - i0) * (s1 - s0)
    return out


def _order_stat(
    i: np.ndarray, counts: np.ndarray, cum: np.ndarray, lo: float, hi: float, width: float
) -> np.ndarray:
    """The `i`-th smallest values (0-based) placed inside their bins; the extremes on lo, hi."""
    k = np.searchsorted(cum, i, side="right")  # bin holding the i-th smallest value
    inside = (i - (cum[k] - counts[k]) + 0.5) / counts[k]
    v = lo + (k + inside) * width
    return np.where(i == 0, lo, np.where(i == cum[-1] - 1, hi, v))


def fine_nbins(n_groups: int, nbins: int = 256) -> int:
    """Bins of the fine histograms used for percentiles and curves: a power-of-two multiple
    of `nbins`, at most 65536, within a fixed total budget across groups."""
    fine = 65536
    while fine > nbins and fine * n_groups > _FINE_BUDGET:
        fine //= 2
    return max(fine, nbins)
