"""Compiled loops that numpy cannot vectorize: per-group statistics, binning, random numbers.

Kernels take C-contiguous arrays of fixed types and read no module globals other than
constants; they know nothing of dask, files or scopes.  Data blocks reach them as 4D
C-contiguous arrays; a voxel's group is ``sum(index[a] * gstrides[a])`` (``gstrides`` is 0 on
axes that do not index groups).  Drivers in the stage modules prepare those arguments.

Random numbers are counter-based (SplitMix64 output function of ``key + (index + 1) * gamma``),
keyed by a seed-derived key and the voxel's global C-order index, so that any chunking and any
number of workers give the same values.  Compilation results are cached on disk
(``cache=True``); on clusters point ``NUMBA_CACHE_DIR`` at a writable shared folder.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange  # noqa: F401

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_ONE = np.uint64(1)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True, nogil=True, inline="always")
def mix64(z: np.uint64) -> np.uint64:
    """SplitMix64 output function (a bijective 64-bit mixer)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True, inline="always")
def uniform01(key: np.uint64, index: np.uint64) -> float:
    """The uniform double in [0, 1) for counter `index` under `key`."""
    z = mix64(key + (index + _ONE) * _GAMMA)
    return float(z >> _S11) * _INV53


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


@njit(cache=True, nogil=True)
def uniform_block(key, shape4, offset4, out):
    """Fill 4D `out` with uniforms for the block at `offset4` of a C-order array `shape4`."""
    n0, n1, n2, n3 = out.shape
    s1 = np.uint64(shape4[1])
    s2 = np.uint64(shape4[2])
    s3 = np.uint64(shape4[3])
    for i0 in range(n0):
        g0 = np.uint64(offset4[0] + i0)
        for i1 in range(n1):
            g1 = g0 * s1 + np.uint64(offset4[1] + i1)
            for i2 in range(n2):
                g2 = g1 * s2 + np.uint64(offset4[2] + i2)
                base = g2 * s3 + np.uint64(offset4[3])
                for i3 in range(n3):
                    out[i0, i1, i2, i3] = uniform01(key, base + np.uint64(i3))


@njit(cache=True, nogil=True)
def bernoulli_block(p, key, shape4, offset4, out):
    """out = uniform < p for the 4D block `p` at `offset4` of a C-order array `shape4`.

    NaN probabilities give 0.
    """
    n0, n1, n2, n3 = p.shape
    s1 = np.uint64(shape4[1])
    s2 = np.uint64(shape4[2])
    s3 = np.uint64(shape4[3])
    for i0 in range(n0):
        g0 = np.uint64(offset4[0] + i0)
        for i1 in range(n1):
            g1 = g0 * s1 + np.uint64(offset4[1] + i1)
            for i2 in range(n2):
                g2 = g1 * s2 + np.uint64(offset4[2] + i2)
                base = g2 * s3 + np.uint64(offset4[3])
                for i3 in range(n3):
                    out[i0, i1, i2, i3] = uniform01(key, base + np.uint64(i3)) < p[i0, i1, i2, i3]


@njit(cache=True, nogil=True)
def group_stats(x, gstrides, n_groups, out_min, out_max, out_n, out_sum, out_sumsq, out_nonfinite):
    """Per-group min, max, count, sum, sum of squares of the finite values of 4D `x`.

    `out_nonfinite` is (n_groups, 3): counts of NaN, +Inf, -Inf.  Outputs accumulate (callers
    initialise min to +inf and max to -inf).
    """
    n0, n1, n2, n3 = x.shape
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                gb = i0 * g0s + i1 * g1s + i2 * g2s
                for i3 in range(n3):
                    g = gb + i3 * g3s
                    v = x[i0, i1, i2, i3]
                    fv = np.float64(v)
                    if np.isfinite(fv):
                        if fv < out_min[g]:
                            out_min[g] = fv
                        if fv > out_max[g]:
                            out_max[g] = fv
                        out_n[g] += 1
                        out_sum[g] += fv
                        out_sumsq[g] += fv * fv
                    elif np.isnan(fv):
                        out_nonfinite[g, 0] += 1
                    elif fv > 0:
                        out_nonfinite[g, 1] += 1
                    else:
                        out_nonfinite[g, 2] += 1


@njit(cache=True, nogil=True)
def group_minmax(x, gstrides, out_min, out_max, out_nonfinite):
    """Per-group finite min and max of 4D `x`, and the count of non-finite voxels.

    Outputs accumulate (callers initialise min to +inf and max to -inf).
    """
    n0, n1, n2, n3 = x.shape
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                gb = i0 * g0s + i1 * g1s + i2 * g2s
                if g3s == 0:
                    # Branch-free inner loop (vectorises): `fv - fv` is 0 only for finite fv.
                    lo = out_min[gb]
                    hi = out_max[gb]
                    bad = 0
                    for i3 in range(n3):
                        fv = np.float64(x[i0, i1, i2, i3])
                        if fv - fv == 0.0:
                            lo = min(lo, fv)
                            hi = max(hi, fv)
                        else:
                            bad += 1
                    out_min[gb] = lo
                    out_max[gb] = hi
                    out_nonfinite[gb] += bad
                else:
                    for i3 in range(n3):
                        g = gb + i3 * g3s
                        fv = np.float64(x[i0, i1, i2, i3])
                        if fv - fv == 0.0:
                            out_min[g] = min(out_min[g], fv)
                            out_max[g] = max(out_max[g], fv)
                        else:
                            out_nonfinite[g] += 1


@njit(cache=True, nogil=True)
def group_histogram(x, gstrides, lo, hi, nbins, counts):
    """Add the histogram of 4D `x` to `counts` (n_groups, nbins), per group.

    Bins are `nbins` equal bins over [lo[g], hi[g]] with edges ``k * step + lo`` as in
    ``np.linspace``; a value is assigned exactly as ``np.histogram`` assigns it (the last bin
    includes its right edge).  Values outside the range go to the edge bins (clipping);
    non-finite values are skipped.  A group with ``hi <= lo`` puts every finite value in bin 0.
    """
    n0, n1, n2, n3 = x.shape
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    ng = counts.shape[0]
    last = nbins - 1
    norm = np.empty(ng)
    step = np.empty(ng)
    for g in range(ng):
        if hi[g] > lo[g]:
            norm[g] = nbins / (hi[g] - lo[g])
            step[g] = (hi[g] - lo[g]) / nbins
        else:
            norm[g] = 0.0
            step[g] = 0.0
    # Rows whose voxels share a group (the common case) go in two phases: bin indices for the
    # whole row in a branch-free loop that vectorises, then a counting loop over four
    # interleaved sub-histograms (hiding store-to-load latency on runs of equal bins).
    # Index nbins collects non-finite values and is dropped.
    c4 = np.zeros((4, ng, nbins + 1), np.int64)
    idx = np.empty(n3, np.int32)
    flast = float(last)
    fnbins = float(nbins)
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                gb = i0 * g0s + i1 * g1s + i2 * g2s
                if g3s == 0:
                    a = lo[gb]
                    nm = norm[gb]
                    s = step[gb]
                    up_ok = 1.0 if s > 0.0 else 0.0
                    for i3 in range(n3):
                        fv = np.float64(x[i0, i1, i2, i3])
                        # All in floating point, one conversion at the end: it vectorises.
                        kf = np.floor(min(max((fv - a) * nm, 0.0), flast))
                        # np.histogram's assignment against the exact edges k * s + a.
                        kf = (
                            kf
                            - ((fv < kf * s + a) & (kf > 0.0))
                            + ((fv >= (kf + 1.0) * s + a) & (kf < flast)) * up_ok
                        )
                        idx[i3] = np.int32(kf if fv - fv == 0.0 else fnbins)
                    for i3 in range(n3):
                        c4[i3 & 3, gb, idx[i3]] += 1
                else:
                    for i3 in range(n3):
                        g = gb + i3 * g3s
                        fv = np.float64(x[i0, i1, i2, i3])
                        a = lo[g]
                        s = step[g]
                        f = min(max((fv - a) * norm[g], 0.0), flast)
                        k = np.int32(f)
                        k = (
                            k
                            - np.int32((fv < k * s + a) & (k > 0))
                            + np.int32((fv >= (k + 1) * s + a) & (k < last) & (s > 0.0))
                        )
                        c4[i3 & 3, g, k if fv - fv == 0.0 else nbins] += 1
    for g in range(ng):
        for q in range(nbins):
            counts[g, q] += c4[0, g, q] + c4[1, g, q] + c4[2, g, q] + c4[3, g, q]


#: Fixed-point scale of the within-bin positions summed by `group_histogram_offsets`.
OFFSET_SCALE = 2**24


@njit(cache=True, nogil=True)
def group_histogram_offsets(x, gstrides, lo, hi, nbins, counts, offsets):
    """Add the histogram of 4D `x` to `counts`, and the positions of the values within their
    bins to `offsets` (both (n_groups, nbins) int64), per group.

    Bins, edges and clipping are those of `group_histogram`.  A value's position is
    ``(v - left_edge) / width`` in [0, 1] (a clipped value sits on the edge it is clipped
    to), summed in fixed point (``OFFSET_SCALE`` steps per bin), so the mean of each bin is
    known to 2**-24 of a bin.  Integer sums do not depend on the order of accumulation, hence
    not on the chunking.
    """
    n0, n1, n2, n3 = x.shape
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    last = nbins - 1
    scale = np.float64(OFFSET_SCALE)
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                gb = i0 * g0s + i1 * g1s + i2 * g2s
                for i3 in range(n3):
                    g = gb + i3 * g3s
                    fv = np.float64(x[i0, i1, i2, i3])
                    if not fv - fv == 0.0:  # NaN or ±Inf
                        continue
                    a = lo[g]
                    b = hi[g]
                    if not b > a:
                        counts[g, 0] += 1
                        continue
                    s = (b - a) / nbins
                    f = (fv - a) * (nbins / (b - a))
                    if f < 0.0:
                        k = 0
                        pos = 0.0
                    elif f >= nbins:
                        k = last
                        pos = 1.0
                    else:
                        k = int(f)
                        r = f - k
                        if r < 1e-7 or r > 0.9999999:
                            # Near an edge: decide against the exact edges, as np.histogram.
                            if k > 0 and fv < k * s + a:
                                k -= 1
                            elif k < last and fv >= (k + 1) * s + a:
                                k += 1
                        pos = min(max((fv - (k * s + a)) / s, 0.0), 1.0)
                    counts[g, k] += 1
                    offsets[g, k] += np.int64(pos * scale + 0.5)


def as_c4d(block: np.ndarray, gstrides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """View `block` (3D or 4D) as a C-contiguous 4D array, with `gstrides` to match.

    F-contiguous blocks are transposed (a free view) rather than copied.
    """
    g = np.asarray(gstrides, dtype=np.int64)
    if not block.dtype.isnative or block.dtype == np.float16:
        # numba compiles for native-endian types and has no float16.
        block = block.astype(np.float32 if block.dtype.kind == "f" else block.dtype.newbyteorder("="))
    if not block.flags.c_contiguous:
        if block.flags.f_contiguous:
            block, g = block.T, g[::-1]
        else:
            block = np.ascontiguousarray(block)
    if block.ndim == 3:
        # A leading axis of 1 keeps the long contiguous axis innermost, where the loops
        # vectorise.
        block, g = block[None], np.concatenate([[0], g])
    return block, np.ascontiguousarray(g, dtype=np.int64)
