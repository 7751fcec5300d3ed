"""Classifying voxels into N intensity classes: multi-Otsu and k-means, per group.

Multi-Otsu and k-means on intensities decide from exact streamed per-group histograms
(`volbin.histogram`): scikit-image's ``threshold_multiotsu(hist=...)`` on a fixed number of
bins whatever the dtype, or Lloyd's iterations on the bins' voxel counts and mean values.
k-means on voxel vectors (several contrasts of one subject along the 4th axis) makes one
streamed pass per Lloyd iteration, with cluster sums in fixed point so that the result does
not depend on the chunking.  Labels are a lazy uint8 array; class 0 (1 inside a mask) is
always the darkest.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
from skimage import filters

from . import _classify_kernels as CK
from . import _kernels as K
from .components import as_mask
from .errors import VolbinDataError, VolbinWarning
from .histogram import fine_nbins, group_histograms, group_histograms_with_offsets, group_range
from .masks import resolve_mask
from .threshold import bin_centers
from .volume import Grouping, Volume, as_volume, like_input, slab_chunks

__all__ = ["CLASSIFY_METHODS", "Classification", "classify"]

CLASSIFY_METHODS = ("multi-otsu", "kmeans")
_MAX_CLASSES = 255
_DEFAULT_NBINS = 256
_DEFAULT_MAX_ITER = 100


@dataclass(frozen=True)
class Classification:
    """The result of `classify`: labels and the per-group decisions behind them.

    Attributes
    ----------
    labels : same kind as the input, uint8
        Class of each voxel, darkest first: 0..N-1, or with a mask 1..N inside and 0 outside.
        Lazy for dask and Volume input.  With ``channels=True`` it has the three spatial axes
        only.  NaN/±Inf voxels are 0.
    method : str
    classes : int
    grouping : Grouping
        The groups of the decision, on the axes of `labels`.
    thresholds : ndarray or None
        ``grouping.group_shape + (classes - 1,)``, raw units: voxel ``v`` of a group is in
        class ``sum(v > thresholds)`` (plus 1 with a mask).  For k-means on intensities, the
        midpoints between neighbouring centres.  None for k-means on vectors.  NaN for a
        group without statistics (no voxel in the statistics mask).
    centres : ndarray or None
        k-means centres in raw units, sorted: ``group_shape + (classes,)``, or
        ``group_shape + (classes, channels)`` on vectors (sorted by their first channel).
    initial_centres : ndarray or None
        The centres k-means started from (same shape as `centres`, in their order).
    iterations : ndarray of int or None
        Lloyd updates per group (`max_iter` when not converged).
    offset : int
        Label of the darkest class: 1 with a mask, else 0.
    """

    labels: Any
    method: str
    classes: int
    grouping: Grouping
    thresholds: np.ndarray | None
    centres: np.ndarray | None
    initial_centres: np.ndarray | None
    iterations: np.ndarray | None
    offset: int
    options: dict[str, Any]

    def split(self) -> list[Any]:
        """One binary array per class, darkest first (same kind as `labels`, lazy for dask).

        Examples
        --------
        >>> import numpy as np
        >>> x = np.repeat(np.arange(3.0), 8).reshape(2, 3, 4)
        >>> [int(m.sum()) for m in classify(x, "multi-otsu", 3).split()]
        [8, 8, 8]
        """
        out = []
        for k in range(self.classes):
            value = np.uint8(self.offset + k)
            if isinstance(self.labels, Volume):
                data = self.labels.data == value
                out.append(self.labels.derive(data, {"step": "split", "class": k, "label": int(value)}))
            else:
                out.append(self.labels == value)
        return out

    def record(self) -> dict[str, Any]:
        """The sidecar's record: method, options and per-group decisions (JSON types)."""
        g = self.grouping
        axes = ["slice" if a == g.slice_axis else "volume" for a in g.group_axes]
        rec: dict[str, Any] = {
            "step": "classify",
            "method": self.method,
            "classes": self.classes,
            "scope": g.scope,
            "group_axes": axes,
            "group_shape": list(g.group_shape),
            "label_offset": self.offset,
            **self.options,
        }
        for name in ("thresholds", "centres", "initial_centres"):
            value = getattr(self, name)
            if value is not None:
                rec[f"{name}_raw"] = _json(value)
        if self.iterations is not None:
            rec["iterations"] = self.iterations.tolist()
        return rec


def _json(a: np.ndarray) -> Any:
    return _nan_to_none(np.asarray(a, dtype=np.float64).tolist())


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


# --- validation --------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check(
    method: str,
    classes: Any,
    vol: Volume,
    channels: bool,
    warm_start: bool,
    scope: str,
    seed: Any,
    nbins: Any,
    max_iter: Any,
    tol: Any,
) -> None:
    if method not in CLASSIFY_METHODS:
        raise ValueError(f"`method` must be one of {', '.join(CLASSIFY_METHODS)}; got {method!r}.")
    if not _is_int(classes) or classes < 2:
        raise ValueError(f"`classes` must be an int >= 2; got {classes!r}.")
    if classes > _MAX_CLASSES:
        raise ValueError(f"`classes` must be at most {_MAX_CLASSES} (uint8 labels); got {classes!r}.")
    if not isinstance(channels, (bool, np.bool_)):
        raise ValueError(f"`channels` must be True or False; got {channels!r}.")
    if channels and vol.ndim != 4:
        raise VolbinDataError(
            f"`channels=True` needs 4D data whose 4th axis holds the contrasts; got {vol.ndim}D data "
            f"of shape {vol.shape}."
        )
    if channels and method != "kmeans":
        raise ValueError(f"`channels=True` needs method 'kmeans' (multi-Otsu is 1-D); got {method!r}.")
    if method == "multi-otsu":
        used = {"seed": seed, "max_iter": max_iter, "tol": tol}
        unused = [n for n, v in used.items() if v is not None] + (["warm_start"] if warm_start else [])
        if unused:
            raise ValueError(f"method 'multi-otsu' does not use {', '.join(f'`{u}`' for u in unused)}.")
    if channels and nbins is not None:
        raise ValueError("k-means on voxel vectors (`channels=True`) does not use `nbins`.")
    if warm_start:
        if not isinstance(warm_start, (bool, np.bool_)):
            raise ValueError(f"`warm_start` must be True or False; got {warm_start!r}.")
        if channels or scope != "volume" or vol.ndim != 4:
            raise ValueError(
                "`warm_start=True` starts each volume of a 4D series from the previous one's centres: "
                f"it needs 4D data, scope 'volume' and channels=False; got {vol.ndim}D data, "
                f"scope {scope!r}, channels={channels}."
            )
    if nbins is not None and (not _is_int(nbins) or nbins < 2):
        raise ValueError(f"`nbins` must be an int >= 2; got {nbins!r}.")
    if nbins is not None and nbins < classes:
        raise ValueError(f"`nbins` must be at least `classes` ({classes}); got {nbins!r}.")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ValueError(f"`seed` must be a non-negative int; got {seed!r}.")
    if max_iter is not None and (not _is_int(max_iter) or max_iter < 1):
        raise ValueError(f"`max_iter` must be a positive int; got {max_iter!r}.")
    if tol is not None:
        ok = isinstance(tol, (int, float, np.integer, np.floating)) and not isinstance(tol, bool)
        if not ok or not math.isfinite(float(tol)) or tol < 0:
            raise ValueError(f"`tol` must be a non-negative number; got {tol!r}.")


def _mask_data(mask: Any, vol: Volume, name: str, spatial_only: bool = False) -> da.Array | None:
    """`mask` as a lazy boolean array broadcast to the volume's shape (3D masks of 4D data
    are shared by every volume), or to its spatial shape with `spatial_only`.  ``"nonzero"``
    and mask files or Volumes are resolved as `volbin.masks.resolve_mask` does (on the input's
    grid; with `spatial_only`, 3D, and ``"nonzero"`` where any channel is not 0)."""
    if mask is None:
        return None
    if isinstance(mask, (str, os.PathLike, Volume)):
        # Files and Volumes carry a grid: resolve_mask checks it against the input's.
        return resolve_mask(mask, vol, name=name, spatial=spatial_only).data  # type: ignore[union-attr]
    m, _ = as_volume(mask)
    spatial = vol.spatial_shape
    # Blockwise steps pair a mask's blocks with the volume's, and dask broadcasts a single
    # block against many instead of aligning them: the mask takes the volume's chunks.
    if m.shape == vol.shape and not spatial_only:
        return as_mask(m.data).rechunk(vol.data.chunks)
    if m.shape != spatial:
        want = f"{spatial}" if spatial_only or vol.ndim == 3 else f"{vol.shape} or {spatial}"
        raise ValueError(f"`{name}` must have the volume's shape {want}; got shape {m.shape}.")
    data = as_mask(m.data)
    if vol.ndim == 3:
        return data.rechunk(vol.data.chunks)
    if spatial_only:
        return data
    assert vol.volume_axis is not None
    spatial_chunks = tuple(c for a, c in enumerate(vol.data.chunks) if a != vol.volume_axis)
    data = da.expand_dims(data.rechunk(spatial_chunks), vol.volume_axis)
    return da.broadcast_to(data, vol.shape, chunks=vol.data.chunks)


def _both(a: da.Array | None, b: da.Array | None) -> da.Array | None:
    if a is None or b is None:
        return a if b is None else b
    return a & b


def _masked_values(data: da.Array, m: da.Array) -> da.Array:
    """The data as floats with NaN outside `m` (exact for every integer type it holds)."""
    if data.dtype.kind == "f":
        ft = data.dtype
    else:
        ft = np.dtype(np.float32 if data.dtype.itemsize <= 2 else np.float64)

    def run(x: np.ndarray, inside: np.ndarray) -> np.ndarray:
        return np.where(inside, x, np.nan).astype(ft, copy=False)

    return da.map_blocks(run, data, m, dtype=ft, meta=np.empty((0,) * data.ndim, ft))


def _describe_few(grouping: Grouping, which: np.ndarray, nvals: np.ndarray) -> str:
    idx = np.flatnonzero(which.ravel())
    parts = [f"{grouping.describe(int(i))} ({int(nvals.ravel()[i])})" for i in idx[:5]]
    return ", ".join(parts) + (" ..." if len(idx) > 5 else "")


# --- k-means on a histogram ---------------------------------------------------------------
def _kmeanspp_1d(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding of weighted 1-D points (Arthur & Vassilvitskii; scikit-learn's
    greedy variant with ``2 + log(k)`` candidates per centre)."""
    trials = 2 + int(np.log(k))
    p = weights / weights.sum()
    centres = [float(points[rng.choice(len(points), p=p)])]
    d2 = (points - centres[0]) ** 2
    for _ in range(1, k):
        pot = float(np.sum(weights * d2))
        cum = np.cumsum(weights * d2)
        cand = np.minimum(np.searchsorted(cum, rng.uniform(size=trials) * pot), len(points) - 1)
        d2_cand = np.minimum(d2[None, :], (points[None, :] - points[cand, None]) ** 2)
        best = int(np.argmin((d2_cand * weights[None, :]).sum(axis=1)))
        centres.append(float(points[cand[best]]))
        d2 = d2_cand[best]
    return np.array(centres)


def _lloyd_1d(
    points: np.ndarray, weights: np.ndarray, init: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Lloyd's iterations on weighted sorted 1-D points; stops when no point changes cluster
    (or the largest centre shift is at most `tol`).  Returns sorted centres and updates made."""
    c = np.sort(np.asarray(init, dtype=np.float64))
    k = len(c)
    prev = None
    it = 0
    wp = weights * points
    while it < max_iter:
        assign = np.searchsorted((c[1:] + c[:-1]) / 2, points, side="left")
        if prev is not None and np.array_equal(assign, prev):
            break
        n = np.bincount(assign, weights=weights, minlength=k)
        s = np.bincount(assign, weights=wp, minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            new = np.sort(np.where(n > 0, s / n, c))
        shift = float(np.max(np.abs(new - c)))
        c, prev = new, assign
        it += 1
        if tol > 0 and shift <= tol:
            break
    return c, it


# --- intensities (one value per voxel) ----------------------------------------------------------
def _exact_thresholds(t: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Thresholds in the block's float32 type that select exactly ``x > t``."""
    if dtype != np.float32:
        return t
    t32 = t.astype(np.float32)
    with np.errstate(invalid="ignore"):
        above = t32.astype(np.float64) > t
    return np.where(above, np.nextafter(t32, np.float32(-np.inf)), t32)


def _label_graph(
    data: da.Array, grouping: Grouping, thresholds: np.ndarray, m: da.Array | None, nonfinite: bool
) -> da.Array:
    nt = thresholds.shape[-1]

    def run(block: np.ndarray, *inside: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        t = grouping.block_values(thresholds, block_info[0]["array-location"])  # type: ignore[index]
        t = _exact_thresholds(t, block.dtype)
        out = np.zeros(block.shape, dtype=np.uint8)
        for i in range(nt):
            ti = t[..., i]
            out += block > (ti.reshape(()) if ti.size == 1 else ti)
        if inside:
            out += inside[0]
            out *= inside[0]
        if nonfinite and block.dtype.kind == "f":
            out[~np.isfinite(block)] = 0
        return out

    args = [data] + ([m] if m is not None else [])
    return da.map_blocks(run, *args, dtype=np.uint8, meta=np.empty((0,) * data.ndim, np.uint8))


def _classify_values(
    vol: Volume,
    method: str,
    classes: int,
    scope: str,
    axis: Any,
    m: da.Array | None,
    stats: da.Array | None,
    warm_start: bool,
    seed: int,
    nbins: int | None,
    max_iter: int,
    tol: float,
) -> tuple[da.Array, Grouping, dict[str, Any]]:
    grouping = vol.grouping(scope, axis)
    if nbins is None:
        # k-means: fine bins (65536 for up to 128 groups) bring binned Lloyd close to the
        # voxels' own; multi-Otsu's search is quadratic in the bins.
        nbins = _DEFAULT_NBINS if method == "multi-otsu" else fine_nbins(grouping.n_groups)
    sdata = vol.data if stats is None else _masked_values(vol.data, stats)
    lo, hi, nonfinite = group_range(vol.derive(sdata), grouping)
    empty = ~(hi >= lo)
    where = " inside the mask" if stats is not None else ""
    if empty.all():
        which = grouping.describe(0) if grouping.n_groups == 1 else "any group"
        raise VolbinDataError(f"no finite voxel{where} in {which}: nothing to classify.")
    lo = np.where(empty, 0.0, lo)
    hi = np.where(empty, 0.0, hi)
    means = None
    if method == "multi-otsu":
        counts = group_histograms(sdata, grouping, lo, hi, nbins)
    else:
        counts, means = group_histograms_with_offsets(sdata, grouping, lo, hi, nbins)
    nvals = np.count_nonzero(counts, axis=-1)
    few = (nvals < classes) & ~empty
    if few.any():
        what = _describe_few(grouping, few, nvals)
        msg = (
            f"`classes` is {classes} but {what} {'has' if few.sum() == 1 else 'have'} fewer distinct "
            f"values than that{where} (distinct values in parentheses, after binning into {nbins} bins)"
        )
        if grouping.scope != "slice" or (few | empty).all():
            raise VolbinDataError(f"{msg}; use fewer classes or more `nbins`.")
        warnings.warn(f"{msg}; their voxels get the darkest class.", VolbinWarning, stacklevel=3)
    shape = grouping.group_shape
    thresholds = np.full((*shape, classes - 1), np.nan)
    centres = init_c = iters = None
    if method == "kmeans":
        centres = np.full((*shape, classes), np.nan)
        init_c = np.full((*shape, classes), np.nan)
        iters = np.zeros(shape, dtype=np.int64)
    previous = None
    for flat, idx in enumerate(np.ndindex(*shape)):
        if empty[idx] or few[idx]:
            continue
        c = counts[idx]
        if method == "multi-otsu":
            centers = bin_centers(float(lo[idx]), float(hi[idx]), nbins)
            # Probabilities, as scikit-image's own histogram of an image gives them.
            thresholds[idx] = filters.threshold_multiotsu(hist=(c / c.sum(), centers), classes=classes)
            continue
        assert means is not None and centres is not None and init_c is not None and iters is not None
        keep = c > 0
        pts, w = means[idx][keep], c[keep].astype(np.float64)
        if warm_start and previous is not None:
            start = previous
        else:
            start = _kmeanspp_1d(pts, w, classes, np.random.default_rng((seed, flat)))
        span = float(hi[idx] - lo[idx])
        final, n_it = _lloyd_1d(pts, w, start, max_iter, tol * span)
        init_c[idx], centres[idx], iters[idx] = start, final, n_it
        thresholds[idx] = (final[1:] + final[:-1]) / 2
        previous = final
    labels = _label_graph(vol.data, grouping, thresholds, m, bool(nonfinite.any()))
    return (
        labels,
        grouping,
        {
            "thresholds": thresholds,
            "centres": centres,
            "initial_centres": init_c,
            "iterations": iters,
            "nbins": nbins,
        },
    )


# --- voxel vectors (channels along the 4th axis) ----------------------------------------------
@dataclass(frozen=True)
class _Vectors:
    """Blocks of channel data with the channels whole, and the spatial grouping."""

    data: da.Array  # 4D, one chunk along the channel axis
    caxis: int
    grouping: Grouping  # on the spatial axes
    lo: np.ndarray  # (G, C)
    inv: np.ndarray  # (G, C)

    @property
    def spatial_chunks(self) -> tuple[tuple[int, ...], ...]:
        return tuple(c for a, c in enumerate(self.data.chunks) if a != self.caxis)

    def blocks(self, m: da.Array | None) -> list[tuple[Any, Any, tuple[tuple[int, int], ...]]]:
        """(data block, mask block or None, spatial location) per block, as delayed objects."""
        xs = self.data.to_delayed(optimize_graph=False)
        ms = m.rechunk(self.spatial_chunks).to_delayed(optimize_graph=False) if m is not None else None
        starts = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in self.spatial_chunks]
        out = []
        for bid in np.ndindex(*xs.shape):
            sid = tuple(i for a, i in enumerate(bid) if a != self.caxis)
            loc = tuple((int(starts[a][i]), int(starts[a][i + 1])) for a, i in enumerate(sid))
            out.append((xs[bid], None if ms is None else ms[sid], loc))
        return out


def _spatial_grouping(vol: Volume, scope: str, axis: Any) -> Grouping:
    shape3 = vol.spatial_shape
    if scope not in ("stack", "volume", "slice"):
        raise ValueError(f"`scope` must be one of stack, volume, slice; got {scope!r}.")
    if scope != "slice":
        return Grouping(shape3, scope, (), None)
    pos = vol.spatial_axes.index(vol.axis_index(axis))
    return Grouping(shape3, scope, (pos,), pos)


def _block_groups(grouping: Grouping, loc: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Group strides within a block and the global group of each local group."""
    gstrides = np.zeros(3, dtype=np.int64)
    if not grouping.group_axes:
        return gstrides, np.zeros(1, dtype=np.int64)
    a = grouping.group_axes[0]
    gstrides[a] = 1
    return gstrides, np.arange(loc[a][0], loc[a][1], dtype=np.int64)


def _as_block(x: np.ndarray, caxis: int) -> np.ndarray:
    x = np.moveaxis(x, caxis, -1)
    x = K.native(x)  # the type the compiled loops take: float16 widens
    return x


def _all_true(shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.True_, shape)


def _seed_task(
    x: np.ndarray,
    m: np.ndarray | None,
    loc: Any,
    caxis: int,
    grouping: Grouping,
    lo: np.ndarray,
    inv: np.ndarray,
    centres: np.ndarray,
    nk: int,
    key: np.uint64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xb = _as_block(x, caxis)
    gstrides, groups = _block_groups(grouping, loc)
    nc = xb.shape[-1]
    best_key = np.full(len(groups), np.inf)
    best_index = np.full(len(groups), np.iinfo(np.int64).max, dtype=np.int64)
    best_y = np.zeros((len(groups), nc))
    mb = _all_true(xb.shape[:3]) if m is None else m
    shape3 = np.asarray(grouping.shape, dtype=np.int64)
    offset3 = np.asarray([lo_ for lo_, _ in loc], dtype=np.int64)
    CK.seeding_draw(
        xb,
        mb,
        gstrides,
        np.ascontiguousarray(lo[groups]),
        np.ascontiguousarray(inv[groups]),
        np.ascontiguousarray(centres[groups]),
        nk,
        key,
        shape3,
        offset3,
        best_key,
        best_index,
        best_y,
    )
    return groups, best_key, best_index, best_y


def _lloyd_task(
    x: np.ndarray,
    m: np.ndarray | None,
    loc: Any,
    caxis: int,
    grouping: Grouping,
    lo: np.ndarray,
    inv: np.ndarray,
    centres: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xb = _as_block(x, caxis)
    if math.prod(xb.shape[:3]) >= 2**31:
        raise ValueError(
            "blocks of 2**31 voxels or more would overflow the k-means sums; use smaller chunks."
        )
    gstrides, groups = _block_groups(grouping, loc)
    nk, nc = centres.shape[1], centres.shape[2]
    counts = np.zeros((len(groups), nk), dtype=np.int64)
    sums = np.zeros((len(groups), nk, nc), dtype=np.int64)
    mb = _all_true(xb.shape[:3]) if m is None else m
    CK.lloyd_sums(
        xb,
        mb,
        gstrides,
        np.ascontiguousarray(lo[groups]),
        np.ascontiguousarray(inv[groups]),
        np.ascontiguousarray(centres[groups]),
        counts,
        sums,
    )
    return groups, counts, sums


def _vector_ranges(vol: Volume, data: da.Array, caxis: int, grouping: Grouping, stats: da.Array | None):
    """Per group and channel finite range of the statistics voxels: (G, C) arrays."""
    gaxes4 = [a for a in range(4) if a != caxis]
    g4 = tuple(sorted([gaxes4[a] for a in grouping.group_axes] + [caxis]))
    slice4 = gaxes4[grouping.slice_axis] if grouping.slice_axis is not None else None
    grouping4 = Grouping(vol.shape, grouping.scope, g4, slice4)
    sdata = data
    if stats is not None:
        spatial_chunks = tuple(c for a, c in enumerate(data.chunks) if a != caxis)
        m4 = da.expand_dims(stats.rechunk(spatial_chunks), caxis)
        m4 = da.broadcast_to(m4, vol.shape, chunks=data.chunks)
        sdata = _masked_values(data, m4)
    lo, hi, _ = group_range(vol.derive(sdata), grouping4)
    # group_shape of grouping4 is (groups..., C) or (C, groups...) in axis order.
    if grouping.group_axes and g4.index(caxis) == 0:
        lo, hi = lo.T, hi.T
    return lo.reshape(grouping.n_groups, -1), hi.reshape(grouping.n_groups, -1)


def _vector_chunks(vol: Volume, caxis: int) -> da.Array:
    """The data with whole voxel vectors in each block, blocks no larger than the input's
    (whose size follows the memory the caller allows)."""
    data = vol.data
    if data.numblocks[caxis] == 1:
        return data
    nc = vol.shape[caxis]
    largest = math.prod(max(c) for c in data.chunks) * data.dtype.itemsize
    spatial = slab_chunks(vol.spatial_shape, data.dtype.itemsize * nc, "F", max(largest, 1))
    chunks = list(spatial)
    chunks.insert(caxis, nc)
    return data.rechunk(tuple(chunks))


def _sum_exact(parts: list[np.ndarray]) -> np.ndarray:
    """Exact sum of int64 arrays (Python integers: no overflow, any order gives the same)."""
    total = np.zeros(parts[0].shape, dtype=object)
    for p in parts:
        total = total + p.astype(object)
    return total


def _classify_vectors(
    vol: Volume,
    classes: int,
    scope: str,
    axis: Any,
    m: da.Array | None,
    stats: da.Array | None,
    seed: int,
    max_iter: int,
    tol: float,
) -> tuple[da.Array, Grouping, dict[str, Any]]:
    assert vol.volume_axis is not None
    caxis = vol.volume_axis
    grouping = _spatial_grouping(vol, scope, axis)
    data = _vector_chunks(vol, caxis)
    lo, hi = _vector_ranges(vol, data, caxis, grouping, stats)
    empty = ~(hi >= lo).all(axis=1)
    where = " inside the mask" if stats is not None else ""
    if empty.all():
        raise VolbinDataError(f"no finite voxel{where}: nothing to classify.")
    lo = np.where(np.isfinite(lo), lo, 0.0)
    span = np.where(hi > lo, hi - lo, 0.0)
    with np.errstate(divide="ignore"):
        inv = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0)
    vec = _Vectors(data, caxis, grouping, lo, inv)
    G, nc = lo.shape
    blocks = vec.blocks(stats)
    # k-means++ seeding, one streamed draw per centre (exponential races keyed by voxel index).
    centres = np.zeros((G, classes, nc))
    seed_task = dask.delayed(_seed_task, pure=True)
    for j in range(classes):
        key = K.seed_key(seed, stream=16 + j)
        tasks = [seed_task(x, mb, loc, caxis, grouping, lo, inv, centres, j, key) for x, mb, loc in blocks]
        best_key = np.full(G, np.inf)
        best_index = np.full(G, np.iinfo(np.int64).max, dtype=np.int64)
        for groups, bk, bi, by in dask.compute(*tasks):
            for gi, g in enumerate(groups):
                if bk[gi] < best_key[g] or (bk[gi] == best_key[g] and bi[gi] < best_index[g]):
                    best_key[g], best_index[g] = bk[gi], bi[gi]
                    centres[g, j] = by[gi]
        lacking = ~np.isfinite(best_key) & ~empty
        if lacking.any():
            what = ", ".join(grouping.describe(int(i)) for i in np.flatnonzero(lacking)[:5])
            verb = "has" if lacking.sum() == 1 else "have"
            msg = f"`classes` is {classes} but {what} {verb} only {j} distinct voxel vectors{where}"
            if grouping.scope != "slice" or (lacking | empty).all():
                raise VolbinDataError(f"{msg}; use fewer classes.")
            warnings.warn(f"{msg}; their voxels get the darkest class.", VolbinWarning, stacklevel=3)
            empty = empty | lacking
    initial = centres.copy()
    iters = np.zeros(G, dtype=np.int64)
    active = ~empty
    lloyd_task = dask.delayed(_lloyd_task, pure=True)
    for _ in range(max_iter):
        tasks = [lloyd_task(x, mb, loc, caxis, grouping, lo, inv, centres) for x, mb, loc in blocks]
        counts = np.zeros((G, classes), dtype=np.int64)
        sums = []
        for groups, c, s in dask.compute(*tasks):
            full = np.zeros((G, classes, nc), dtype=np.int64)
            full[groups] = s
            counts[groups] += c
            sums.append(full)
        total = _sum_exact(sums)
        new = centres.copy()
        for g, k in zip(*np.nonzero(counts), strict=True):
            n = int(counts[g, k])
            for ch in range(nc):
                new[g, k, ch] = int(total[g, k, ch]) / n / CK.FIXED_SCALE
        changed = (new != centres).any(axis=(1, 2)) & active
        shift = np.abs(new - centres).max(axis=(1, 2))
        centres[changed] = new[changed]
        iters[changed] += 1
        active &= changed & ~((tol > 0) & (shift <= tol))
        if not active.any():
            break
    # Darkest first: sort each group's centres by their first channel (then the next ones).
    order = np.array([np.lexsort(centres[g].T[::-1]) for g in range(G)])
    centres = np.take_along_axis(centres, order[:, :, None], axis=1)
    raw = lo[:, None, :] + centres * span[:, None, :]
    raw_init = lo[:, None, :] + initial * span[:, None, :]
    raw[empty] = np.nan
    raw_init[empty] = np.nan
    # NaN centres: no distance is smaller than infinity, so voxels get the darkest class.
    centres[empty] = np.nan
    labels = _vector_labels(vec, m, centres, 0 if m is None else 1)
    shape = grouping.group_shape
    return (
        labels,
        grouping,
        {
            "thresholds": None,
            "centres": raw.reshape(*shape, classes, nc),
            "initial_centres": raw_init.reshape(*shape, classes, nc),
            "iterations": iters.reshape(shape),
        },
    )


def _vector_labels(vec: _Vectors, m: da.Array | None, centres: np.ndarray, offset: int) -> da.Array:
    caxis, grouping, lo, inv = vec.caxis, vec.grouping, vec.lo, vec.inv

    def run(x: np.ndarray, *inside: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = [r for a, r in enumerate(block_info[0]["array-location"]) if a != caxis]  # type: ignore[index]
        xb = _as_block(x, caxis)
        gstrides, groups = _block_groups(grouping, tuple(loc))
        out = np.empty(xb.shape[:3], dtype=np.uint8)
        mb = np.squeeze(inside[0], axis=caxis) if inside else _all_true(xb.shape[:3])
        CK.nearest_labels(
            xb,
            mb,
            gstrides,
            np.ascontiguousarray(lo[groups]),
            np.ascontiguousarray(inv[groups]),
            np.ascontiguousarray(centres[groups]),
            offset,
            out,
        )
        return out

    args = [vec.data]
    if m is not None:
        args.append(da.expand_dims(m.rechunk(vec.spatial_chunks), caxis))
    meta = np.empty((0, 0, 0), np.uint8)
    return da.map_blocks(run, *args, drop_axis=caxis, dtype=np.uint8, meta=meta)


def classify(
    volume: Any,
    method: Literal["multi-otsu", "kmeans"],
    classes: int = 3,
    *,
    scope: str = "volume",
    axis: str | int = "z",
    mask: Any = None,
    stats_mask: Any = None,
    channels: bool = False,
    warm_start: bool = False,
    seed: int | None = None,
    nbins: int | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    volume_axis: int | None = None,
) -> Classification:
    """Classify voxels into `classes` intensity classes by multi-Otsu or k-means, per group.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    method : {'multi-otsu', 'kmeans'}
        ``multi-otsu``: the thresholds maximising the between-class variance of the group's
        histogram (scikit-image's ``threshold_multiotsu``).  ``kmeans``: Lloyd's algorithm
        on intensities (from the histogram) or, with `channels`, on voxel vectors.
    classes : int
        Number of classes, 2 to 255.
    scope : {'stack', 'volume', 'slice'}
        One decision for the stack, per 3D volume, or per 2D slice along `axis`.  With
        `channels`, 'stack' and 'volume' both mean one decision for the image.
    axis : {'x', 'y', 'z'} or int
        Slice axis for ``scope='slice'``.
    mask : str, path, array or Volume, optional
        Voxels to classify: statistics come from inside it, labels are 1..N inside and 0
        outside.  An array or Volume (non-zero inside) of the volume's shape, or of its
        spatial shape for a 4D volume (only that with `channels`); a NIfTI/.npy/zarr file on
        the input's grid (3D with `channels`); or ``"nonzero"``: the input's non-zero voxels,
        each volume's own for a 4D series and, with `channels`, the voxels where any channel
        is non-zero (a voxel 0 in every contrast is background).
    stats_mask : same as `mask`, optional
        Voxels the statistics come from (intersected with `mask`), without changing which
        voxels are labelled.
    channels : bool
        The 4th axis holds contrasts of one subject: k-means on voxel vectors (each channel
        scaled to [0, 1] by its range in the group), labels on the three spatial axes.
    warm_start : bool
        k-means on a 4D series with scope 'volume': volume t starts from volume t-1's
        centres (the first from k-means++).
    seed : int, optional
        Seed of the k-means++ seeding (default 0).
    nbins : int, optional
        Histogram bins per group, whatever the dtype: default 256 for multi-Otsu, and for
        k-means as many as `volbin.histogram.fine_nbins` allows (65536 for up to 128
        groups, at least 256).
    max_iter : int, optional
        At most this many Lloyd updates per group (default 100).
    tol : float, optional
        Stop a group when no centre moves more than `tol` times its range (default 0:
        only when no voxel changes class).
    volume_axis : int, optional
        Volume (or channel) axis of 4D numpy/dask input (default 3).

    Returns
    -------
    Classification
        Labels (same kind as `volume`, uint8, lazy for dask and Volume input; a Volume
        gets the decision appended to its steps) and the per-group thresholds, centres and
        iteration counts (see `Classification`).

    Raises
    ------
    ValueError
        A bad or unused option (the message names it), ``classes < 2``, a mask of another
        shape.
    VolbinDataError
        `channels` on 3D data; fewer distinct values (after binning) or voxel vectors than
        `classes` in a volume or the stack (slices that have too few get the darkest class,
        with a VolbinWarning); no finite voxel (inside the masks).

    Notes
    -----
    Passes over the data: multi-Otsu and k-means on intensities read it twice to decide
    (per-group range, then histograms; with bin means for k-means) and once more when the
    labels are computed.  Their thresholds are bin centres (multi-Otsu, equal to
    ``threshold_multiotsu`` on the same data for float data, within a bin for integer data,
    which scikit-image bins one value per bin) or midpoints of centres (k-means).  A voxel
    equal to a threshold goes to the darker class (``volume > threshold`` is foreground,
    where ``np.digitize`` would put it in the brighter one).

    k-means on intensities runs Lloyd's iterations on the weighted bins (voxel counts and
    mean values, from one pass): exact k-means of the data whenever each bin holds one
    distinct value (integer data of a range up to `nbins`); otherwise a fixed point of the
    binned data, from which one Lloyd step on the voxels moves no centre by a bin.
    Seeding is greedy k-means++ on the histogram with ``numpy.random.default_rng((seed,
    group))``.

    k-means on voxel vectors seeds by k-means++ with one streamed pass per centre: each
    voxel draws ``E / D²`` with ``E`` exponential from a counter-based generator keyed by
    the seed and the voxel's index, and the smallest wins (probability proportional to
    ``D²``).  Then each Lloyd iteration is one pass: per block, the nearest centre of each
    voxel and per-cluster counts and sums, the sums in 32-bit fixed point of each channel's
    range in int64, added exactly across blocks.  Integer sums do not depend on how the
    voxels are split into blocks, so labels, centres and iteration counts are the same
    bytes for any chunking.  Centres are exact means up to 2**-32 of each channel's range.

    References
    ----------
    .. [1] P.-S. Liao, T.-S. Chen and P.-C. Chung, "A fast algorithm for multilevel
       thresholding," Journal of Information Science and Engineering 17(5), pp. 713-727,
       2001.
    .. [2] S. Lloyd, "Least squares quantization in PCM," IEEE Transactions on Information
       Theory 28(2), pp. 129-137, 1982.
    .. [3] D. Arthur and S. Vassilvitskii, "k-means++: the advantages of careful seeding,"
       Proceedings of the 18th ACM-SIAM Symposium on Discrete Algorithms, pp. 1027-1035,
       2007.
    .. [4] P. S. Efraimidis and P. G. Spirakis, "Weighted random sampling with a
       reservoir," Information Processing Letters 97(5), pp. 181-185, 2006.

    Examples
    --------
    >>> import numpy as np, volbin
    >>> from skimage.filters import threshold_multiotsu
    >>> x = volbin.phantom((32, 36, 32), seed=0).intensity
    >>> res = classify(x, "multi-otsu", 3)
    >>> bool(np.allclose(res.thresholds, threshold_multiotsu(x, 3)))
    True
    >>> res.labels.dtype, sorted(np.unique(res.labels).tolist())
    (dtype('uint8'), [0, 1, 2])
    >>> km = classify(x, "kmeans", 3, seed=1)
    >>> km.centres.shape, bool((np.diff(km.centres) > 0).all())
    ((3,), True)
    """
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    _check(method, classes, vol, channels, warm_start, scope, seed, nbins, max_iter, tol)
    seed_ = 0 if seed is None else int(seed)
    max_iter_ = _DEFAULT_MAX_ITER if max_iter is None else int(max_iter)
    tol_ = 0.0 if tol is None else float(tol)
    options: dict[str, Any] = {
        "channels": bool(channels),
        "masked": mask is not None,
        "stats_masked": stats_mask is not None,
    }
    if channels:
        m = _mask_data(mask, vol, "mask", spatial_only=True)
        s = _mask_data(stats_mask, vol, "stats_mask", spatial_only=True)
        labels, grouping, found = _classify_vectors(
            vol, classes, scope, axis, m, _both(m, s), seed_, max_iter_, tol_
        )
        options.update(seed=seed_, max_iter=max_iter_, tol=tol_)
        out = vol.derive(labels, None, volume_axis=None)
    else:
        m = _mask_data(mask, vol, "mask")
        s = _mask_data(stats_mask, vol, "stats_mask")
        labels, grouping, found = _classify_values(
            vol,
            method,
            classes,
            scope,
            axis,
            m,
            _both(m, s),
            bool(warm_start),
            seed_,
            nbins,
            max_iter_,
            tol_,
        )
        options["nbins"] = found["nbins"]
        if method == "kmeans":
            options.update(seed=seed_, max_iter=max_iter_, tol=tol_, warm_start=bool(warm_start))
        out = vol.derive(labels)
    result = Classification(
        None,
        method,
        classes,
        grouping,
        found["thresholds"],
        found["centres"],
        found["initial_centres"],
        found["iterations"],
        0 if mask is None else 1,
        options,
    )
    out = vol.derive(out.data, result.record(), volume_axis=out.volume_axis)
    return dataclasses.replace(result, labels=like_input(out, kind))
