"""Compiled loops that numpy cannot vectorize: per-group statistics, binning, threshold masks
written in place and counted, random numbers.

Kernels take C-contiguous arrays of fixed types and read no module globals other than
constants; they know nothing of dask, files or scopes.  Data blocks reach them as 4D
C-contiguous arrays; a voxel's group is ``sum(index[a] * gstrides[a])`` (``gstrides`` is 0 on
axes that do not index groups).  Drivers in the stage modules prepare those arguments.

Random numbers are counter-based (SplitMix64 output function of ``key + (index + 1) * gamma``),
keyed by a seed-derived key and the voxel's global C-order index, so that any chunking and any
number of workers give the same values.  The loops themselves are compiled ahead of time,
in `volbin.kernels`; the functions here prepare their arguments.
"""

from __future__ import annotations

import numpy as np

from .kernels import _histogram, _random, _threshold

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


def mix64(z: np.uint64) -> np.uint64:
    """SplitMix64 output function (a bijective 64-bit mixer)."""
    return np.uint64(_random.mix64(z))


def uniform01(key: np.uint64, index: np.uint64) -> float:
    """The uniform double in [0, 1) for counter `index` under `key`."""
    return _random.uniform01(key, index)


def seed_key(seed: int, stream: int = 0) -> np.uint64:
    """A 64-bit key from a user seed and a stream number (distinct uses of one seed)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int; got {seed!r}.")
    with np.errstate(over="ignore"):
        k = _mix_py(np.uint64(int(seed) % 2**64))
        k = _mix_py(k ^ np.uint64((0xD1B54A32D192ED03 * (int(stream) + 1)) % 2**64))
    return k


def _mix_py(z: np.uint64) -> np.uint64:
    with np.errstate(over="ignore"):
        z = np.uint64(z)
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return np.uint64(z ^ (z >> _S31))


def uniform_block(key, shape4, offset4, out):
    """Fill 4D `out` with uniforms for the block at `offset4` of a C-order array `shape4`."""
    _random.uniform_block(key, _int64s(shape4), _int64s(offset4), out)


def bernoulli_block(p, key, shape4, offset4, out):
    """out = uniform < p for the 4D block `p` at `offset4` of a C-order array `shape4`.

    `p` is float32 or float64, `out` a bool array of its shape.  NaN probabilities give 0.
    """
    if p.dtype not in (np.float32, np.float64):
        p = np.ascontiguousarray(p, dtype=np.float64)
    _random.bernoulli_block(p, key, _int64s(shape4), _int64s(offset4), _bytes(out))


def group_stats(x, gstrides, n_groups, out_min, out_max, out_n, out_sum, out_sumsq, out_nonfinite):
    """Per-group min, max, count, sum, sum of squares of the finite values of 4D `x`.

    `out_nonfinite` is (n_groups, 3): counts of NaN, +Inf, -Inf.  Outputs accumulate (callers
    initialise min to +inf and max to -inf).
    """
    _histogram.group_stats(_data(x), _int64s(gstrides), n_groups, out_min, out_max, out_n, out_sum,
                           out_sumsq, out_nonfinite)  # fmt: skip


def group_minmax(x, gstrides, out_min, out_max, out_nonfinite):
    """Per-group finite min and max of 4D `x`, and the count of non-finite voxels.

    Outputs accumulate (callers initialise min to +inf and max to -inf).
    """
    _histogram.group_minmax(_data(x), _int64s(gstrides), out_min, out_max, out_nonfinite)


def group_histogram(x, gstrides, lo, hi, nbins, counts):
    """Add the histogram of 4D `x` to `counts` (n_groups, nbins), per group.

    Bins are `nbins` equal bins over [lo[g], hi[g]] with edges ``k * step + lo`` as in
    ``np.linspace``; a value is assigned exactly as ``np.histogram`` assigns it (the last bin
    includes its right edge).  Values outside the range go to the edge bins (clipping);
    non-finite values are skipped.  A group with ``hi <= lo`` puts every finite value in bin 0.
    """
    _histogram.group_histogram(_data(x), _int64s(gstrides), _float64s(lo), _float64s(hi), nbins,
                               counts)  # fmt: skip


def group_count(x, gstrides, counts):
    """Add the number of True (non-zero) voxels of 4D boolean `x` to `counts`, per group."""
    _histogram.group_count(_bytes(x), _int64s(gstrides), counts)


#: Flags of `group_above`.
ABOVE_INCLUSIVE = _threshold.INCLUSIVE
ABOVE_UPPER = _threshold.UPPER
ABOVE_INVERT = _threshold.INVERT
ABOVE_FINITE = _threshold.FINITE


def group_above(x, tstrides, thresholds, upper, flags, out, cstrides, counts):
    """Write the foreground of 4D `x` into boolean `out` (``x > t``, or ``x >= t`` with
    `ABOVE_INCLUSIVE`; and ``x <= u`` with `ABOVE_UPPER`; complemented with `ABOVE_INVERT`;
    never a non-finite voxel with `ABOVE_FINITE`), the thresholds per group of `tstrides`,
    and add the foreground voxels of each group of `cstrides` to `counts`."""
    up = _float64s(thresholds if upper is None else upper)
    _threshold.group_above(_data(x), _int64s(tstrides), _float64s(thresholds), up, int(flags),
                           _bytes(out), _int64s(cstrides), counts)  # fmt: skip


#: Fixed-point scale of the within-bin positions summed by `group_histogram_offsets`.
OFFSET_SCALE = _histogram.OFFSET_SCALE


def group_histogram_offsets(x, gstrides, lo, hi, nbins, counts, offsets):
    """Add the histogram of 4D `x` to `counts`, and the positions of the values within their
    bins to `offsets` (both (n_groups, nbins) int64), per group.

    Bins, edges and clipping are those of `group_histogram`.  A value's position is
    ``(v - left_edge) / width`` in [0, 1] (a clipped value sits on the edge it is clipped
    to), summed in fixed point (``OFFSET_SCALE`` steps per bin), so the mean of each bin is
    known to 2**-24 of a bin.  Integer sums do not depend on the order of accumulation, hence
    not on the chunking.
    """
    _histogram.group_histogram_offsets(_data(x), _int64s(gstrides), _float64s(lo), _float64s(hi),
                                       nbins, counts, offsets)  # fmt: skip


def _int64s(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _float64s(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def _bytes(a: np.ndarray) -> np.ndarray:
    """A bool array as uint8 (a view): the compiled loops read and write bools as bytes."""
    return a.view(np.uint8) if a.dtype == np.bool_ else a


#: Data types the compiled loops take directly; bool is read as uint8.
_DATA_TYPES = frozenset(
    np.dtype(t) for t in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
) | {np.dtype(np.float32), np.dtype(np.float64)}


def _data(x: np.ndarray) -> np.ndarray:
    x = _bytes(x)
    if x.dtype not in _DATA_TYPES:
        raise TypeError(f"The kernels take native-endian integer, bool or float data; got dtype {x.dtype}.")
    return x


def native(block: np.ndarray) -> np.ndarray:
    """`block` itself, or a copy in a type the compiled loops take (native-endian; float16 as
    float32): the same values."""
    if not block.dtype.isnative or block.dtype == np.float16:
        # Only float16 (of either byte order) widens; a big-endian float64 stays float64.
        half = block.dtype.kind == "f" and block.dtype.itemsize == 2
        return block.astype(np.float32 if half else block.dtype.newbyteorder("="))
    return block


def as_c4d(block: np.ndarray, gstrides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """View `block` (3D or 4D) as a C-contiguous 4D array, with `gstrides` to match, its rows
    merged where the groups allow (`merge_rows`).

    F-contiguous blocks are transposed (a free view) rather than copied.
    """
    g = np.asarray(gstrides, dtype=np.int64)
    block = native(block)
    if not block.flags.c_contiguous:
        if block.flags.f_contiguous:
            block, g = block.T, g[::-1]
        else:
            block = np.ascontiguousarray(block)
    block, (g,) = merge_rows(block, g)
    return block, g


#: Rows that `merge_rows` makes stay this short (the row loops hold a row's bin indices or
#: doubles in buffers of its length).
ROW_MERGE_MAX = 4096


def merge_rows(block: np.ndarray, *strides: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Merge the innermost axis of C-contiguous `block` with the axes before it while that
    keeps every voxel's group in each of the group `strides` (``g[a] == g[a + 1] *
    shape[a + 1]``: the same traversal, the same groups) and the row at most
    `ROW_MERGE_MAX` long: the row loops then run over rows of hundreds of values instead of
    a short last axis (a C-order (X, Y, Z, T) stack).  The result is 4D: leading axes of 1
    (group stride 0) keep the long contiguous axis innermost, where the loops vectorise."""
    shape = list(block.shape)
    gs = [[int(v) for v in g] for g in strides]
    while (
        len(shape) > 1
        and shape[-2] * shape[-1] <= ROW_MERGE_MAX
        and all(g[-2] == g[-1] * shape[-1] for g in gs)
    ):
        shape[-2:] = [shape[-2] * shape[-1]]
        for g in gs:
            g[-2:] = [g[-1]]
    lead = 4 - len(shape)
    return block.reshape([1] * lead + shape), [np.asarray([0] * lead + g, dtype=np.int64) for g in gs]
