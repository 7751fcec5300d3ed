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


def equalized_table(values: np.ndarray, lo: float, hi: float, nbins: int) -> np.ndarray:
    """Per knot interval k (``len(values) - 1`` of them), the bin over [lo, hi] of every value
    `equalize_map` maps it to when the interval's image lies in one bin, else -1 (int32).

    The image of interval k runs from its value at ``frac = 0`` to ``frac = 1`` (monotone in
    frac, rounded to float32 as `equalize_map` does); its ends are binned as
    `_kernels.group_histogram` bins values (np.histogram's assignment).
    """
    values = np.ascontiguousarray(values, np.float64)
    table = np.empty(max(len(values) - 1, 0), np.int32)
    _tone.equalized_table(values, float(lo), float(hi), int(nbins), table)
    return table


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


#: Types `equalized_corrections` takes (as the vector binning loops of `_kernels` do).
_BINNED = frozenset(np.dtype(t) for t in ("uint8", "int16", "uint16", "int32", "float32", "float64"))


def binned_dtype(dtype: np.dtype) -> np.dtype | None:
    """The type values of `dtype` reach the loops as (native-endian; float16 as float32) if
    `equalized_corrections` takes it, else None."""
    d = np.dtype(dtype).newbyteorder("=")  # before the float16 test, which a '>f2' fails
    d = np.dtype(np.float32) if d == np.float16 else d
    return d if d in _BINNED else None


def equalized_corrections(
    x: np.ndarray,
    e0: float,
    scale: float,
    values: np.ndarray,
    table: np.ndarray,
    bits: np.ndarray,
    lo: float,
    hi: float,
    nbins: int,
    fine_lo: float,
    fine_hi: float,
    counts: np.ndarray,
) -> None:
    """Add to `counts` (nbins,) what `equalized_histogram` of `x` adds, less what the fine
    histogram of `x` over [fine_lo, fine_hi] (``len(values) - 1`` bins, as
    `_kernels.group_histogram` counts them) gives when each fine bin k counts in bin
    ``table[k]`` (bins with ``table[k] < 0`` not at all).

    So a histogram known by its fine bins needs only the voxels whose knot interval differs
    from their fine bin, or spans a bin edge (``table < 0``; `bits` holds ``table < 0`` a
    bit per interval, ``np.packbits(..., bitorder="little")`` viewed as little-endian uint32):
    a vector loop finds them, and only they are mapped.  Entries of `counts` may go negative.
    `x` is of a type `binned_dtype` accepts, and ``fine_hi > fine_lo``.
    """
    _tone.equalized_corrections(
        _values(x),
        float(e0),
        float(scale),
        values,
        np.asarray(table, np.int32),
        np.asarray(bits, np.uint32),
        float(lo),
        float(hi),
        int(nbins),
        float(fine_lo),
        float(fine_hi),
        counts,
    )
