"""The compiled loop of the histogram-equalisation curve (a table lookup numpy cannot fuse).

Like `_kernels`, it takes plain contiguous arrays and knows nothing of dask or groups; the
loops are Cython (`volbin.kernels._tone`), built with the package.
"""

from __future__ import annotations

import numpy as np

from .kernels import _tone


def _values(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint8) if x.dtype == np.bool_ else x


def equalize_map(x: np.ndarray, e0: float, scale: float, values: np.ndarray, out: np.ndarray) -> None:
    """``out = np.interp(x, edges, values)`` for 1D `x` and equally spaced knots
    ``edges = e0 + k / scale`` (k = 0 .. len(values) - 1), written as float32; NaN stays NaN.

    The knot is found by arithmetic (``floor((x - e0) * scale)``, clamped to the table),
    and the position within it clamped to [0, 1], so the map is monotone in `x` for
    non-decreasing `values`; -Inf and +Inf map to the first and last value.
    """
    _tone.equalize_map(_values(x), float(e0), float(scale), values, out)


def equalized_histogram(
    x: np.ndarray,
    e0: float,
    scale: float,
    values: np.ndarray,
    table: np.ndarray,
    lo: float,
    hi: float,
    nbins: int,
    counts: np.ndarray,
) -> None:
    """Add to `counts` (nbins,) the histogram over [lo, hi] of ``equalize_map(x, ...)``.

    The same values as binning `equalize_map`'s float32 output with `_kernels.group_histogram`
    (np.histogram's assignment), without computing most of them: ``table[k]`` is the bin of
    every value of knot interval k when that interval's whole image lies in one bin, else
    -1, and only those voxels are mapped.  NaN is skipped; ±Inf count as 1 and 0 (their
    equalised values).  Counting goes into four interleaved histograms, which hides the
    latency of incrementing one bin many times in a row (as background voxels do).
    """
    _tone.equalized_histogram(
        _values(x),
        float(e0),
        float(scale),
        values,
        np.asarray(table, np.int32),
        float(lo),
        float(hi),
        int(nbins),
        counts,
    )
