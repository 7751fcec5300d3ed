"""Choosing thresholds from exact per-group histograms.

Where scikit-image computes a threshold from a histogram (``hist=``: Otsu, Yen, isodata,
minimum) volbin calls it on the histogram it streamed.  Li, triangle and mean, which
scikit-image computes only from the image, are computed here on the same histogram with
scikit-image's algorithms (Li and mean also use the mean value of each bin).  They agree
with scikit-image on the same data and bin count to within one bin width, and exactly for
Otsu, Yen, isodata, minimum and triangle on float data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage import filters

from .errors import VolbinDataError, VolbinWarning
from .histogram import group_histograms, group_histograms_with_offsets
from .recipe import HISTOGRAM_METHODS, Recipe
from .rescale import Transform, fit_transform
from .volume import Grouping, Volume, as_volume

__all__ = ["Decision", "decide", "threshold", "warn_trivial"]

Hist = tuple[np.ndarray, np.ndarray]


def _li(hist: Hist, means: np.ndarray | None = None) -> float:
    """Li's minimum cross entropy threshold (scikit-image's iteration) on a histogram.

    Like scikit-image, values are shifted so that the minimum (the histogram's left edge) is
    0 and the iteration starts from the mean.  Class means come from the mean value of each
    bin (`means`; bin centres if not given); a bin holding the threshold is split in
    proportion to the part of the bin on each side.
    """
    # Li's fixed point is sensitive to the class means: with bin centres instead of the bins'
    # own means (a spike of zeros sits half a bin off its centre) and with whole bins on either
    # side of the threshold (a step-function map), it lands several bins away from
    # scikit-image's, which works on the voxels themselves.
    counts, centers = hist
    counts = np.asarray(counts, dtype=np.float64)
    nb = len(counts)
    if np.count_nonzero(counts) < 2:
        nz = np.flatnonzero(counts)
        return float(centers[nz[0]]) if len(nz) else float("nan")
    width = float(centers[1] - centers[0])
    origin = float(centers[0]) - width / 2
    m = np.asarray(centers if means is None else means, dtype=np.float64)
    sums = counts * np.maximum(m - origin, 0.0)
    left = np.arange(nb) * width  # bin k spans [left[k], left[k] + width] after the shift
    n = counts.sum()
    cum_n = np.concatenate([[0.0], np.cumsum(counts)])
    cum_s = np.concatenate([[0.0], np.cumsum(sums)])
    tol = width * 1e-4
    t_next = cum_s[-1] / n
    t_curr = -2 * tol
    for _ in range(10_000):
        if abs(t_next - t_curr) <= tol:
            break
        t_curr = t_next
        k = min(max(int(t_curr // width), 0), nb - 1)
        below = min(max((t_curr - left[k]) / width, 0.0), 1.0)  # part of bin k at or below t
        n_back = cum_n[k] + counts[k] * below
        s_back = cum_s[k] + sums[k] * below
        n_fore = n - n_back
        if n_back <= 0 or n_fore <= 0:
            break
        mean_back = s_back / n_back
        mean_fore = (cum_s[-1] - s_back) / n_fore
        if mean_back <= 0:
            break
        t_next = float((mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore)))
    return t_next + origin


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


def _mean(hist: Hist, means: np.ndarray | None = None) -> float:
    """The mean intensity, from the bins' own means (bin centres if not given)."""
    counts, centers = hist
    m = centers if means is None else means
    return float(np.sum(counts * m) / counts.sum())


def _skimage(fn: Callable[..., Any]) -> Callable[[Hist], float]:
    def run(hist: Hist) -> float:
        return float(fn(hist=hist))

    return run


#: Histogram methods: name -> function of (counts, centers) returning a threshold.
HISTOGRAM_THRESHOLDS: dict[str, Callable[..., float]] = {
    "otsu": _skimage(filters.threshold_otsu),
    "yen": _skimage(filters.threshold_yen),
    "isodata": _skimage(filters.threshold_isodata),
    "minimum": _skimage(filters.threshold_minimum),
    "li": _li,
    "triangle": _triangle,
    "mean": _mean,
}
assert set(HISTOGRAM_THRESHOLDS) == set(HISTOGRAM_METHODS)
#: Methods that also take the mean value of each bin (second argument).
BIN_MEAN_METHODS = ("li", "mean")


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
            return (
                [None if not math.isfinite(v) else v for v in a.ravel().tolist()]
                if a.ndim
                else (None if not math.isfinite(float(a)) else float(a))
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
        pre = None
    else:
        lo, hi = tr.from_raw(tr.data_min), tr.from_raw(tr.data_max)
        pre = tr.apply
    means = None
    if recipe.method in BIN_MEAN_METHODS:
        counts, means = group_histograms_with_offsets(volume, grouping, lo, hi, nbins, pre=pre)
    else:
        counts = group_histograms(volume, grouping, lo, hi, nbins, pre=pre)
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        if const[idx] or counts[idx].sum() == 0:
            out[idx] = np.nan
            continue
        centers = bin_centers(float(lo[idx]), float(hi[idx]), nbins)
        try:
            hist = (counts[idx], centers)
            out[idx] = fn(hist) if means is None else fn(hist, means[idx])
        except (RuntimeError, ValueError) as exc:
            where = grouping.describe(idx)
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


def warn_trivial(tr: Transform, recipe: Recipe, raw: np.ndarray | None = None) -> None:
    """Warn (`VolbinWarning`) where the mask will be empty or full, from the data's range alone.

    `raw` holds the per-group raw thresholds of a threshold method (foreground is ``volume >
    raw``); without it the method draws ones with the rescaled intensity as probability or
    density (stochastic, dithering), so a group whose rescaled range lies at 0 gives no one
    and one at 1 gives only ones.  For histogram methods, groups that are constant after
    rescaling were warned about by `fit_transform` and are skipped.  For ``method='value'``
    the warning names the data's range in the threshold's units.  With ``scope='slice'`` it
    warns only when every slice is empty or full (single empty slices are common at the
    edges of a scan).
    """
    g = tr.grouping
    dmin, dmax = tr.data_min, tr.data_max
    clean = tr.n_nonfinite == 0  # non-finite voxels are 0 in every output: never full
    with np.errstate(invalid="ignore", over="ignore"):
        if raw is not None:
            raw = np.broadcast_to(np.asarray(raw, np.float64), dmin.shape)
            empty = ~(dmax > raw)
            full = (dmin > raw) & clean
        else:
            r_lo = np.clip(tr.from_raw(dmin), 0.0, 1.0)
            r_hi = np.clip(tr.from_raw(dmax), 0.0, 1.0)
            empty = ~(r_hi > 0.0)
            full = (r_lo >= 1.0) & clean
    if recipe.method in HISTOGRAM_METHODS:  # fit_transform said they select nothing there
        empty &= ~tr.constant
        full &= ~tr.constant
    trivial = empty | full
    if not trivial.any() or (g.scope == "slice" and not trivial.all()):
        return
    which = np.flatnonzero(trivial.ravel())
    i = int(which[0])
    state = "empty" if empty.ravel()[i] else "full (every voxel is 1)"
    where = g.describe(i)
    if len(which) > 1:
        where = f"{len(which)} of {g.n_groups} {'slices' if g.scope == 'slice' else 'volumes'} (e.g. {where})"
    lo, hi = float(dmin.ravel()[i]), float(dmax.ravel()[i])
    if recipe.method == "value":
        units = recipe.units
        if units == "rescaled":
            with np.errstate(invalid="ignore", over="ignore"):
                lo, hi = float(tr.from_raw(dmin).ravel()[i]), float(tr.from_raw(dmax).ravel()[i])
        side = "above" if empty.ravel()[i] else "below"
        text = (
            f"`threshold` {recipe.threshold:g} ({units}) lies {side} the data's range {lo:.6g}..{hi:.6g} "
            f"({units} units) in {where}: the mask is {state} there."
        )
    else:
        text = (
            f"the {recipe.method} mask is {state} in {where} (data range {lo:.6g}..{hi:.6g}, raw "
            "units); check the rescale options."
        )
    warnings.warn(text, VolbinWarning, stacklevel=3)


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

    Raises
    ------
    ValueError
        An unknown `method` or `units`, or a bad option value (the message names it).
    VolbinDataError
        No finite voxel in a volume (or the stack), or a method that fails on a histogram.

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
    if units not in ("raw", "rescaled"):
        raise ValueError(f"`units` must be one of raw, rescaled; got {units!r}.")
    recipe = Recipe(method=method, scope=scope, axis=axis, nbins=nbins, rescale=rescale, **options)
    vol, _ = as_volume(volume, volume_axis=volume_axis)
    grouping = vol.grouping(recipe.scope, recipe.axis)
    tr = fit_transform(vol, grouping, recipe)
    dec = decide(vol, grouping, tr, recipe)
    vals = dec.raw if units == "raw" else dec.rescaled
    if units == "raw":
        vals = np.where(np.isinf(vals) & np.isnan(dec.rescaled), np.nan, vals)
    return float(vals) if vals.ndim == 0 else vals
