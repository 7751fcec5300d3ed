"""Compiled loops of k-means on voxel vectors: seeding draws, Lloyd sums, nearest centres.

Blocks arrive as 4D arrays ``(n0, n1, n2, C)``: three spatial axes and the channels last (a
strided view is fine).  A voxel's group is ``i0 * gstrides[0] + i1 * gstrides[1] + i2 *
gstrides[2]`` within the block.  Values are normalised per group and channel,
``y = (x - lo) * inv``, and distances are squared Euclidean in that space.  Sums are
accumulated in fixed point (``FIXED_SCALE`` steps per unit) in int64, so their totals do
not depend on the order of accumulation, hence not on the chunking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .kernels import _classify

#: Fixed-point steps per unit of the normalised values summed by `lloyd_sums`.
FIXED_SCALE = _classify.FIXED_SCALE


def _block(x: np.ndarray) -> np.ndarray:
    # Every value is used as a double, as the loops always did: one conversion per block.
    return np.asarray(x, dtype=np.float64)


def _mask(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m)
    return m.view(np.uint8) if m.dtype == np.bool_ else m.astype(np.uint8)


def _i64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def seeding_draw(
    x, mask, gstrides, lo, inv, centres, nk, key, shape3, offset3, best_key, best_index, best_y
) -> None:
    """One k-means++ draw per group: the voxel minimising ``E / D²`` (exponential race).

    ``E = -log(1 - u)`` with ``u`` the counter-based uniform of the voxel's global C-order
    index over `shape3` (block at `offset3`) under `key`; ``D²`` is the squared distance to
    the nearest of the first `nk` centres (1 when `nk` is 0), so each voxel wins with
    probability proportional to ``D²``.  Voxels with ``D² = 0`` never win.  Updates
    `best_key`, `best_index` (ties: the lower index) and `best_y` (the winner's normalised
    values) per group.
    """
    _classify.seeding_draw(
        _block(x),
        _mask(mask),
        _i64(gstrides),
        lo,
        inv,
        centres,
        int(nk),
        np.uint64(key),
        _i64(shape3),
        _i64(offset3),
        best_key,
        best_index,
        best_y,
    )


def lloyd_sums(x, mask, gstrides, lo, inv, centres, counts, sums) -> None:
    """Add each voxel to its nearest centre: `counts` (G, K) and fixed-point `sums` (G, K, C)."""
    _classify.lloyd_sums(_block(x), _mask(mask), _i64(gstrides), lo, inv, centres, counts, sums)


def nearest_labels(x, mask, gstrides, lo, inv, centres, offset, out) -> None:
    """`out` (n0, n1, n2) uint8: nearest centre + `offset` inside `mask`, 0 elsewhere and
    where a channel is NaN or ±Inf."""
    _classify.nearest_labels(_block(x), _mask(mask), _i64(gstrides), lo, inv, centres, int(offset), out)
