"""Compiled loop of the histogram-equalisation curve (a table lookup numpy cannot fuse).

Like `_kernels`, it takes plain contiguous arrays and knows nothing of dask or groups.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def equalize_map(x, e0, scale, values, out):
    """``out = np.interp(x, edges, values)`` for 1D `x` and equally spaced knots
    ``edges = e0 + k / scale`` (k = 0 .. len(values) - 1), written as float32; NaN stays NaN.

    The knot is found by arithmetic (``floor((x - e0) * scale)``, clamped to the table),
    and the position within it clamped to [0, 1], so the map is monotone in `x` for
    non-decreasing `values`; -Inf and +Inf map to the first and last value.
    """
    last = float(values.shape[0] - 2)
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s = (v - e0) * scale
        s = s if s == s else 0.0  # NaN: any knot, the result is NaN below
        # Branch-free (selects, no jumps), so that the loop vectorises around the lookups.
        k = np.floor(min(max(s, 0.0), last))
        frac = min(max(s - k, 0.0), 1.0)
        ki = int(k)
        lo = values[ki]
        r = lo + frac * (values[ki + 1] - lo)
        out[i] = r if v == v else np.nan


@njit(cache=True, nogil=True)
def equalized_histogram(x, e0, scale, values, table, lo, hi, nbins, counts):
    """Add to `counts` (nbins,) the histogram over [lo, hi] of ``equalize_map(x, ...)``.

    The same values as binning `equalize_map`'s float32 output with `_kernels.group_histogram`
    (np.histogram's assignment), without computing most of them: ``table[k]`` is the bin of
    every value of knot interval k when that interval's whole image lies in one bin, else
    -1, and only those voxels are mapped.  NaN is skipped; ±Inf count as 1 and 0 (their
    equalised values).
    """
    last = float(values.shape[0] - 2)
    step = (hi - lo) / nbins
    norm = nbins / (hi - lo) if hi > lo else 0.0
    flast = float(nbins - 1)
    up_ok = 1.0 if step > 0.0 else 0.0
    # Counting into four interleaved histograms hides the latency of incrementing one bin
    # many times in a row (as background voxels do); index nbins collects NaN, dropped.
    c4 = np.zeros((4, nbins + 1), np.int64)
    for j in range(x.shape[0]):
        v = np.float64(x[j])
        s = (v - e0) * scale
        s = s if s == s else 0.0
        k = np.floor(min(max(s, 0.0), last))
        ki = int(k)
        b = table[ki]
        if b < 0:  # rare: an interval straddling a bin edge
            frac = min(max(s - k, 0.0), 1.0)
            a = values[ki]
            fv = np.float64(np.float32(a + frac * (values[ki + 1] - a)))
            kf = np.floor(min(max((fv - lo) * norm, 0.0), flast))
            kf = (
                kf
                - ((fv < kf * step + lo) & (kf > 0.0))
                + ((fv >= (kf + 1.0) * step + lo) & (kf < flast)) * up_ok
            )
            b = int(kf)
        c4[j & 3, b if v == v else nbins] += 1
    for q in range(nbins):
        counts[q] += c4[0, q] + c4[1, q] + c4[2, q] + c4[3, q]
