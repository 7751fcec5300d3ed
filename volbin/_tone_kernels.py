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
