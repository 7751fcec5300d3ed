"""Exact, chunk-invariant per-group moments of the finite voxels, in fixed point.

Floating-point sums depend on the order of accumulation, so a mean summed block by block
changes in its last bits with the chunking.  Here each voxel is mapped to ``u = (x - c) / s``
in [-1, 1] (``c``, ``s`` the centre and half-width of its group's range), rounded to a
multiple of 2**-52 and summed as integers, which is exact and independent of the order:
the mean and variance are those of the rounded values, within 2**-53 of ``s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import dask.array as da
import numpy as np

from .volume import Grouping

_BITS = 52
_SPLIT = 26  # q = hi * 2**26 + lo with |hi| <= 2**26: int64 sums of 2**36 voxels are safe


@dataclass(frozen=True)
class Moments:
    """Per-group count, mean and (population) standard deviation of the finite voxels."""

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def _local(values: np.ndarray, grouping: Grouping, location: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per-group `values` for the groups a block at `location` holds, flattened in C order."""
    index = tuple(slice(*location[a]) for a in grouping.group_axes)
    return np.asarray(values, dtype=np.float64)[index].reshape(-1, 1)


def group_rows(block: np.ndarray, grouping: Grouping) -> np.ndarray:
    """`block` as (local groups, voxels): group axes first, in C order."""
    g = grouping.group_axes
    moved = np.moveaxis(block, g, tuple(range(len(g))))
    n_local = int(np.prod([block.shape[a] for a in g])) if g else 1
    return moved.reshape(n_local, -1)


def _parts(data: da.Array, grouping: Grouping, centre: np.ndarray, half: np.ndarray) -> da.Array:
    """Per-block integer partials (count, Σq hi, Σq lo, Σq² hi, Σq² lo) per local group."""
    scale = float(2**_BITS)
    split = float(2**_SPLIT)

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        rows = group_rows(np.asarray(block), grouping).astype(np.float64, copy=False)
        c = _local(centre, grouping, loc)
        s = _local(half, grouping, loc)
        finite = np.isfinite(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.where(finite, (rows - c) / np.where(s > 0, s, 1.0), 0.0)
        np.clip(u, -1.0, 1.0, out=u)
        out = np.empty((rows.shape[0], 5), np.int64)
        out[:, 0] = finite.sum(axis=1)
        for j, v in ((1, u), (3, u * u)):
            q = np.rint(v * scale)
            hi = np.floor(q / split)
            out[:, j] = hi.astype(np.int64).sum(axis=1)
            out[:, j + 1] = (q - hi * split).astype(np.int64).sum(axis=1)
        shape = tuple(block.shape[a] if a in grouping.group_axes else 1 for a in range(block.ndim))
        # Rows are in C order over the group axes, which is this shape's order too.
        return out.reshape((*shape, 5))

    chunks = (
        *tuple(
            data.chunks[a] if a in grouping.group_axes else (1,) * len(data.chunks[a])
            for a in range(data.ndim)
        ),
        (5,),
    )
    return da.map_blocks(
        run,
        data,
        chunks=chunks,
        dtype=np.int64,
        new_axis=[data.ndim],
        meta=np.empty((0,) * (data.ndim + 1), np.int64),
    )


def group_moments(data: da.Array, grouping: Grouping, lo: np.ndarray, hi: np.ndarray) -> Moments:
    """Exact per-group count, mean and standard deviation of the finite voxels (one pass).

    Parameters
    ----------
    data : dask array
    grouping : Grouping
    lo, hi : arrays of shape ``grouping.group_shape``
        Each group's finite range (`volbin.histogram.group_range`); values outside are
        clipped to it.

    Returns
    -------
    Moments
        Groups without a finite voxel have count 0 and NaN mean and std.
    """
    lo = np.asarray(lo, dtype=np.float64).reshape(grouping.group_shape)
    hi = np.asarray(hi, dtype=np.float64).reshape(grouping.group_shape)
    centre = lo + (hi - lo) / 2
    half = (hi - lo) / 2
    parts = _parts(data, grouping, centre, half).compute()
    axes = tuple(a for a in range(len(grouping.shape)) if a not in grouping.group_axes)
    # Python integers: the sums over blocks cannot overflow.
    total = parts.astype(object).sum(axis=axes, keepdims=True).reshape((*grouping.group_shape, 5))
    count = np.zeros(grouping.group_shape, np.int64)
    mean = np.full(grouping.group_shape, np.nan)
    std = np.full(grouping.group_shape, np.nan)
    for idx in np.ndindex(*grouping.group_shape):
        n, s1h, s1l, s2h, s2l = (int(v) for v in total[idx])
        count[idx] = n
        if n == 0:
            continue
        m = Fraction(s1h * 2**_SPLIT + s1l, n * 2**_BITS)
        var = Fraction(s2h * 2**_SPLIT + s2l, n * 2**_BITS) - m * m
        s = Fraction(float(half[idx]))
        mean[idx] = float(Fraction(float(centre[idx])) + s * m)
        std[idx] = float(np.sqrt(float(max(var, Fraction(0)) * s * s)))
    return Moments(count, mean, std)


def per_group(
    block: np.ndarray,
    location: Sequence[tuple[int, int]],
    grouping: Grouping,
    fn: Any,
    dtype: Any = np.float32,
) -> np.ndarray:
    """``fn(sub_block, group_index)`` on each group's part of `block`, assembled."""
    out = np.empty(block.shape, dtype=dtype)
    ranges = [range(*location[a]) for a in grouping.group_axes]
    for local in np.ndindex(*[len(r) for r in ranges]):
        gidx = tuple(r[i] for r, i in zip(ranges, local, strict=True))
        sel: list[Any] = [slice(None)] * block.ndim
        for a, i in zip(grouping.group_axes, local, strict=True):
            sel[a] = i
        out[tuple(sel)] = fn(block[tuple(sel)], gidx)
    return out
