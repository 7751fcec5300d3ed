"""Choosing thresholds from exact per-group histograms.

Where scikit-image computes a threshold from a histogram (``hist=``: Otsu, Yen, isodata,
minimum) volbin calls it on the histogram it streamed.  Li, triangle and mean, which
scikit-image computes only from the image, are computed here on the same histogram with
scikit-image's algorithms.  Thresholds are bin centres, so they agree with scikit-image on
the same data and bin count to within one bin width (exactly, for Otsu on float data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage import filters

from .errors import VolbinDataError
from .histogram import group_histograms
from .recipe import HISTOGRAM_METHODS, Recipe
from .rescale import Transform, fit_transform
from .volume import Grouping, Volume, as_volume

__all__ = ["Decision", "decide", "threshold"]

Hist = tuple[np.ndarray, np.ndarray]


def _li(hist: Hist) -> float:
    """Li's minimum cross entropy threshold (scikit-image's iteration) on a histogram."""
    counts, centers = hist
    counts = counts.astype(np.float64)
    keep = counts > 0
    c, x = counts[keep], centers[keep]
    if len(x) < 2:
        return float(x[0]) if len(x) else float("nan")
    # As scikit-image: shift so the minimum is 0, iterate from the mean.
    x0 = x[0]
    xs = x - x0
    tol = float(np.min(np.diff(xs))) / 2
    t_next = float(np.sum(c * xs) / c.sum())
    t_curr = -2 * tol
    while abs(t_next - t_curr) > tol:
        t_curr = t_next
        fg = xs > t_curr
        if not fg.any() or fg.all():
            break
        mean_fore = np.sum(c[fg] * xs[fg]) / c[fg].sum()
        mean_back = np.sum(c[~fg] * xs[~fg]) / c[~fg].sum()
        if mean_back == 0:
            break
        t_next = float((mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore)))
    return t_next + float(x0)


def _triangle(hist: Hist) -> float:
    """The triangle threshold (Zack et al. 1977) on a histogram, as scikit-image does it."""
    counts, centers = hist
    counts = np.asarray(counts, dtype=np.float64)
    nbins = len(counts)
    nz = np.flatnonzero(counts)
    arg_low_level, arg_high_level = int(nz[0]), int(nz[-1])
    arg_peak_height = int(np.argmax(counts))
    peak_height = counts[arg_peak_height]
    if arg_low_level == arg_high_level:
        return float(centers[arg_low_level])
    flip = arg_peak_height - arg_low_level < arg_high_level - arg_peak_height
    if flip:
        counts = counts[::-1]
        arg_low_level = nbins - arg_high_level - 1
        arg_peak_height = nbins - arg_peak_height - 1
    del arg_high_level
    width = arg_peak_height - arg_low_level
    x1 = np.arange(width)
    y1 = counts[x1 + arg_low_level]
    norm = np.sqrt(peak_height**2 + width**2)
    peak_height /= norm
    width /= norm
    length = peak_height * x1 - width * y1
    arg_level = int(np.argmax(length)) + arg_low_level
    if flip:
        arg_level = nbins - arg_level - 1
    return float(centers[arg_level])


def _mean(hist: Hist) -> float:
    counts, centers = hist
    return float(np.sum(counts * centers) / counts.sum())


def _skimage(fn: Callable[..., Any]) -> Callable[[Hist], float]:
    def run(hist: Hist) -> float:
        return float(fn(hist=hist))

    return run


#: Histogram methods: name -> function of (counts, centers) returning a threshold.
HISTOGRAM_THRESHOLDS: dict[str, Callable[[Hist], float]] = {
    "otsu": _skimage(filters.threshold_otsu),
    "yen": _skimage(filters.threshold_yen),
    "isodata": _skimage(filters.threshold_isodata),
    "minimum": _skimage(filters.threshold_minimum),
    "li": _li,
    "triangle": _triangle,
    "mean": _mean,
}
assert set(HISTOGRAM_THRESHOLDS) == set(HISTOGRAM_METHODS)


def bin_centers(lo: float, hi: float, nbins: int) -> np.ndarray:
    """Centres of `nbins` equal bins over [lo, hi], computed as np.histogram's edges."""
    edges = np.linspace(lo, hi, nbins + 1)
    return (edges[:-1] + edges[1:]) / 2


@dataclass(frozen=True)
class Decision:
    """Thresholds per group, in raw units (applied as ``volume > raw``) and rescaled units."""

    grouping: Grouping
    method: str
    raw: np.ndarray
    rescaled: np.ndarray
    nbins: int | None = None

    def record(self) -> dict[str, Any]:
        axes = ["slice" if a == self.grouping.slice_axis else "volume" for a in self.grouping.group_axes]

        def clean(a: np.ndarray) -> Any:
            return [None if not math.isfinite(v) else v for v in a.ravel().tolist()] if a.ndim else (
                None if not math.isfinite(float(a)) else float(a)
            )

        return {
            "method": self.method,
            "nbins": self.nbins,
            "scope": self.grouping.scope,
            "group_axes": axes,
            "group_shape": list(self.grouping.group_shape),
            "threshold_raw": clean(self.raw),
            "threshold_rescaled": clean(self.rescaled),
        }


def decide(volume: Volume, grouping: Grouping, tr: Transform, recipe: Recipe) -> Decision:
    """Per-group thresholds for a threshold `recipe` (one histogram pass for histogram methods).

    For linear rescales the histogram is taken of the raw data over its range as seen after
    rescaling, so thresholds are raw bin centres; for tone curves it is taken of the rescaled
    data and thresholds are mapped back with `Transform.to_raw`.
    """
    shape = grouping.group_shape
    if recipe.method == "value":
        assert recipe.threshold is not None
        if recipe.units == "raw":
            raw = np.full(shape, recipe.threshold)
            return Decision(grouping, "value", raw, tr.from_raw(raw))
        t = np.full(shape, recipe.threshold)
        return Decision(grouping, "value", tr.to_raw(t), t)
    fn = HISTOGRAM_THRESHOLDS[recipe.method]
    nbins = recipe.nbins
    const = tr.constant
    if tr.linear:
        lo, hi = tr.decision_range()
        counts = group_histograms(volume, grouping, lo, hi, nbins)
    else:
        lo, hi = tr.from_raw(tr.data_min), tr.from_raw(tr.data_max)
        counts = group_histograms(volume, grouping, lo, hi, nbins, pre=tr.apply)
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        if const[idx] or counts[idx].sum() == 0:
            out[idx] = np.nan
            continue
        centers = bin_centers(lo[idx], hi[idx], nbins)
        try:
            out[idx] = fn((counts[idx], centers))
        except (RuntimeError, ValueError) as exc:
            where = grouping.labels()[int(np.ravel_multi_index(idx, shape))] if shape else "the stack"
            raise VolbinDataError(
                f"threshold method {recipe.method!r} failed for {where}: {exc}. "
                "Try another method (e.g. otsu) or scope."
            ) from exc
    nan = np.isnan(out)
    if tr.linear:
        raw = out
        raw[nan] = np.inf
        rescaled = np.where(nan, np.nan, tr.from_raw(np.where(nan, 0.0, raw)))
    else:
        rescaled = out
        raw = np.where(nan, np.inf, tr.to_raw(np.where(nan, 0.0, rescaled)))
    return Decision(grouping, recipe.method, raw, rescaled, nbins)


def threshold(
    volume: Any,
    method: str = "otsu",
    *,
    scope: str = "volume",
    axis: str | int = "z",
    nbins: int = 256,
    rescale: str = "minmax",
    units: str = "raw",
    volume_axis: int | None = None,
    **options: Any,
) -> float | np.ndarray:
    """Threshold(s) of a histogram method, per group.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    method : {'otsu', 'yen', 'isodata', 'li', 'minimum', 'triangle', 'mean'}
    scope : {'stack', 'volume', 'slice'}
    axis : {'x', 'y', 'z'} or int
    nbins : int
    rescale : str
        Rescale applied before the decision (see `volbin.rescale`).
    units : {'raw', 'rescaled'}
        Units of the returned thresholds.  Foreground is ``volume > threshold`` in raw units.
    volume_axis : int, optional
    **options
        Other `Recipe` fields (percentiles, curve, ...).

    Returns
    -------
    threshold : float or ndarray
        A float for a single group (3D volume with scope 'volume', or scope 'stack'),
        else an array of shape ``Grouping.group_shape``.  Constant groups give NaN.

    Examples
    --------
    >>> import numpy as np, volbin
    >>> from skimage.filters import threshold_otsu
    >>> x = np.random.default_rng(0).normal(size=(20, 20, 20))
    >>> bool(volbin.threshold(x, "otsu") == threshold_otsu(x))
    True
    """
    if method not in HISTOGRAM_METHODS:
        raise ValueError(f"`method` must be one of {', '.join(HISTOGRAM_METHODS)}; got {method!r}.")
    recipe = Recipe(method=method, scope=scope, axis=axis, nbins=nbins, rescale=rescale, **options)
    vol, _ = as_volume(volume, volume_axis=volume_axis)
    grouping = vol.grouping(recipe.scope, recipe.axis)
    tr = fit_transform(vol, grouping, recipe)
    dec = decide(vol, grouping, tr, recipe)
    vals = dec.raw if units == "raw" else dec.rescaled
    if units == "raw":
        vals = np.where(np.isinf(vals) & np.isnan(dec.rescaled), np.nan, vals)
    return float(vals) if vals.ndim == 0 else vals
