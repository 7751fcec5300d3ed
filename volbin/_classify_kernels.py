"""Compiled loops of k-means on voxel vectors: seeding draws, Lloyd sums, nearest centres.

Blocks arrive as 4D arrays ``(n0, n1, n2, C)``: three spatial axes and the channels last (a
strided view is fine).  A voxel's group is ``i0 * gstrides[0] + i1 * gstrides[1] + i2 *
gstrides[2]`` within the block.  Values are normalised per group and channel,
``y = (x - lo) * inv``, and distances are squared Euclidean in that space.  Sums are
accumulated in fixed point (``FIXED_SCALE`` steps per unit) in int64, so their totals do
not depend on the order of accumulation, hence not on the chunking.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._kernels import uniform01

#: Fixed-point steps per unit of the normalised values summed by `lloyd_sums`.
FIXED_SCALE = 2**32


@njit(cache=True, nogil=True, inline="always")
def _valid(x, i0, i1, i2, nc):
    for c in range(nc):
        v = np.float64(x[i0, i1, i2, c])
        if not v - v == 0.0:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _nearest(x, i0, i1, i2, g, lo, inv, centres, nk, y):
    """Index of the nearest of the first `nk` centres of group `g` (lowest on ties), and its
    squared distance; fills `y` with the voxel's normalised values."""
    nc = y.shape[0]
    for c in range(nc):
        y[c] = (np.float64(x[i0, i1, i2, c]) - lo[g, c]) * inv[g, c]
    best = 0
    best_d = np.inf
    for k in range(nk):
        d = 0.0
        for c in range(nc):
            t = y[c] - centres[g, k, c]
            d += t * t
        if d < best_d:
            best_d = d
            best = k
    return best, best_d


@njit(cache=True, nogil=True)
def seeding_draw(x, mask, gstrides, lo, inv, centres, nk, key, shape3, offset3, best_key, best_index, best_y):
    """One k-means++ draw per group: the voxel minimising ``E / D²`` (exponential race).

    ``E = -log(1 - u)`` with ``u`` the counter-based uniform of the voxel's global C-order
    index over `shape3` (block at `offset3`) under `key`; ``D²`` is the squared distance to
    the nearest of the first `nk` centres (1 when `nk` is 0), so each voxel wins with
    probability proportional to ``D²``.  Voxels with ``D² = 0`` never win.  Updates
    `best_key`, `best_index` (ties: the lower index) and `best_y` (the winner's normalised
    values) per group.
    """
    n0, n1, n2, nc = x.shape
    y = np.empty(nc)
    s1 = np.int64(shape3[1])
    s2 = np.int64(shape3[2])
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                if not mask[i0, i1, i2] or not _valid(x, i0, i1, i2, nc):
                    continue
                g = i0 * gstrides[0] + i1 * gstrides[1] + i2 * gstrides[2]
                if nk == 0:
                    for c in range(nc):
                        y[c] = (np.float64(x[i0, i1, i2, c]) - lo[g, c]) * inv[g, c]
                    w = 1.0
                else:
                    _, w = _nearest(x, i0, i1, i2, g, lo, inv, centres, nk, y)
                if not w > 0.0:
                    continue
                index = ((offset3[0] + i0) * s1 + offset3[1] + i1) * s2 + offset3[2] + i2
                u = uniform01(key, np.uint64(index))
                score = -np.log1p(-u) / w
                if score < best_key[g] or (score == best_key[g] and index < best_index[g]):
                    best_key[g] = score
                    best_index[g] = index
                    for c in range(nc):
                        best_y[g, c] = y[c]


@njit(cache=True, nogil=True)
def lloyd_sums(x, mask, gstrides, lo, inv, centres, counts, sums):
    """Add each voxel to its nearest centre: `counts` (G, K) and fixed-point `sums` (G, K, C)."""
    n0, n1, n2, nc = x.shape
    nk = centres.shape[1]
    y = np.empty(nc)
    scale = np.float64(FIXED_SCALE)
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                if not mask[i0, i1, i2] or not _valid(x, i0, i1, i2, nc):
                    continue
                g = i0 * gstrides[0] + i1 * gstrides[1] + i2 * gstrides[2]
                k, _ = _nearest(x, i0, i1, i2, g, lo, inv, centres, nk, y)
                counts[g, k] += 1
                for c in range(nc):
                    sums[g, k, c] += np.int64(y[c] * scale + 0.5)


@njit(cache=True, nogil=True)
def nearest_labels(x, mask, gstrides, lo, inv, centres, offset, out):
    """`out` (n0, n1, n2) uint8: nearest centre + `offset` inside `mask`, 0 elsewhere and
    where a channel is NaN or ±Inf."""
    n0, n1, n2, nc = x.shape
    nk = centres.shape[1]
    y = np.empty(nc)
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                if not mask[i0, i1, i2] or not _valid(x, i0, i1, i2, nc):
                    out[i0, i1, i2] = 0
                    continue
                g = i0 * gstrides[0] + i1 * gstrides[1] + i2 * gstrides[2]
                k, _ = _nearest(x, i0, i1, i2, g, lo, inv, centres, nk, y)
                out[i0, i1, i2] = k + offset
