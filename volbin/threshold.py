"""Choosing thresholds from exact per-group histograms.

Where scikit-image computes a threshold from a histogram (``hist=``: Otsu, Yen, isodata,
minimum) volbin calls it on the histogram it streamed.  Li, triangle and mean, which
scikit-image computes only from the image, are computed here on the same histogram with
scikit-image's algorithms (Li and mean also use the mean value of each bin).  They agree
with scikit-image on the same data and bin count to within one bin width, and exactly for
Otsu, Yen, isodata, minimum and triangle on float data.  The ImageJ/ITK family (Huang,
intermodes, ...) comes from `volbin.autothreshold`; ``percentile`` reads fine histograms.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage import filters

from . import autothreshold
from .errors import VolbinDataError, VolbinWarning
from .histogram import fine_nbins, group_histograms, group_histograms_with_offsets, percentiles_from_hist
from .intensity import prepare
from .masks import mask_fields
from .recipe import HISTOGRAM_METHODS, HistogramMethod, Recipe, RescaleMethod, Scope, Units
from .rescale import Transform, equalized_histograms, fit_transform
from .volume import Grouping, Volume, as_volume

__all__ = ["Decision", "decide", "grouping_for", "threshold", "warn_trivial"]

Hist = tuple[np.ndarray, np.ndarray]


def _li(hist: Hist, means: np.ndarray | None = None) -> float:
    """Li's minimum cross entropy threshold (Li & Lee 1993; Li & Tam 1998) on a histogram.

    The iteration is scikit-image's ``threshold_li`` (BSD-3-Clause), on histogram sums.

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
    """The triangle threshold (Zack et al. 1977) on a histogram.

    This follows scikit-image's ``threshold_triangle`` line by line (BSD-3-Clause,
    skimage/filters/thresholding.py), on a histogram instead of an image.
    """
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


def _skimage(fn: Callable[..., Any] | str) -> Callable[[Hist], float]:
    """A threshold of a histogram by `fn`, or by the function of that name in
    ``skimage.filters`` (looked up when first used: importing its thresholding module takes
    about 35 ms, which commands that never threshold a histogram do not pay)."""

    def run(hist: Hist) -> float:
        f = getattr(filters, fn) if isinstance(fn, str) else fn
        return float(f(hist=hist))

    return run


#: Histogram methods: name -> function of (counts, centers) returning a threshold.
HISTOGRAM_THRESHOLDS: dict[str, Callable[..., float]] = {
    "otsu": _skimage("threshold_otsu"),
    "yen": _skimage("threshold_yen"),
    "isodata": _skimage("threshold_isodata"),
    "minimum": _skimage("threshold_minimum"),
    "li": _li,
    "triangle": _triangle,
    "mean": _mean,
    "huang": _skimage(autothreshold.threshold_huang),
    "intermodes": _skimage(autothreshold.threshold_intermodes),
    "kittler-illingworth": _skimage(autothreshold.threshold_kittler_illingworth),
    "max-entropy": _skimage(autothreshold.threshold_max_entropy),
    "moments": _skimage(autothreshold.threshold_moments),
    "renyi-entropy": _skimage(autothreshold.threshold_renyi_entropy),
    "shanbhag": _skimage(autothreshold.threshold_shanbhag),
}
assert set(HISTOGRAM_THRESHOLDS) | {"percentile"} == set(HISTOGRAM_METHODS)
#: Methods that also take the mean value of each bin (second argument).
BIN_MEAN_METHODS = ("li", "mean")


def bin_centers(lo: float, hi: float, nbins: int) -> np.ndarray:
    """Centres of `nbins` equal bins over [lo, hi], computed as np.histogram's edges."""
    edges = np.linspace(lo, hi, nbins + 1)
    return (edges[:-1] + edges[1:]) / 2


def grouping_for(volume: Volume, recipe: Recipe) -> Grouping:
    """The `Grouping` of `recipe` on `volume`: a cohort is one group per input, like a stack."""
    return volume.grouping("stack" if recipe.scope == "cohort" else recipe.scope, recipe.axis)


def _clean(a: np.ndarray) -> Any:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim:
        return [None if not math.isfinite(v) else v for v in a.ravel().tolist()]
    return None if not math.isfinite(float(a)) else float(a)


@dataclass(frozen=True)
class Decision:
    """Thresholds per group, in raw units and rescaled units.

    Foreground is ``raw < x`` (``raw <= x`` when `inclusive`), and ``x <= upper_raw`` when
    an upper bound is given (`volbin.binarize.foreground`); `invert` takes the complement.
    """

    grouping: Grouping
    method: str
    raw: np.ndarray
    rescaled: np.ndarray
    nbins: int | None = None
    upper_raw: np.ndarray | None = None
    upper_rescaled: np.ndarray | None = None
    inclusive: bool = False
    invert: bool = False
    scope: str | None = None  # the recipe's scope, when it is not the grouping's (cohort)
    source: dict[str, Any] | None = None  # where thresholds decided elsewhere came from

    def record(self) -> dict[str, Any]:
        axes = ["slice" if a == self.grouping.slice_axis else "volume" for a in self.grouping.group_axes]
        rec: dict[str, Any] = {
            "method": self.method,
            "nbins": self.nbins,
            "scope": self.scope or self.grouping.scope,
            "group_axes": axes,
            "group_shape": list(self.grouping.group_shape),
            "threshold_raw": _clean(self.raw),
            "threshold_rescaled": _clean(self.rescaled),
        }
        below = np.flatnonzero(np.asarray(self.raw).ravel() == -np.inf)
        if below.size:  # JSON has no -inf: these groups take every finite voxel
            rec["threshold_raw_minus_inf"] = below.tolist()
        if self.upper_raw is not None:
            rec["upper_raw"] = _clean(self.upper_raw)
            rec["upper_rescaled"] = _clean(self.upper_rescaled)
        rec["comparison"] = ">=" if self.inclusive else ">"
        if self.invert:
            rec["invert"] = True
        if self.source:
            rec.update(self.source)
        return rec


def histogram_thresholds(
    method: str,
    counts: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    const: np.ndarray,
    grouping: Grouping,
    means: np.ndarray | None = None,
) -> np.ndarray:
    """Per-group thresholds of a histogram `method` from per-group histograms over [lo, hi],
    in the histogram's units; NaN for constant or empty groups.

    Raises
    ------
    VolbinDataError
        The method fails on a group's histogram (the message names the group).
    """
    fn = HISTOGRAM_THRESHOLDS[method]
    nbins = counts.shape[-1]
    shape = grouping.group_shape
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        if const[idx] or counts[idx].sum() == 0:
            out[idx] = np.nan
            continue
        centers = bin_centers(float(lo[idx]), float(hi[idx]), nbins)
        try:
            hist = (counts[idx], centers)
            out[idx] = fn(hist) if means is None or method not in BIN_MEAN_METHODS else fn(hist, means[idx])
        except (RuntimeError, ValueError) as exc:
            where = grouping.describe(idx)
            raise VolbinDataError(
                f"threshold method {method!r} failed for {where}: {exc}. "
                "Try another method (e.g. otsu) or scope."
            ) from exc
    return out


def decision_histogram_range(tr: Transform) -> tuple[np.ndarray, np.ndarray, Any]:
    """(lo, hi, pre) of the decision histograms of `tr`: raw values over the range seen after
    rescaling for linear transforms, rescaled values over the rescaled range otherwise."""
    if tr.linear:
        lo, hi = tr.decision_range()
        return lo, hi, None
    return tr.from_raw(tr.data_min), tr.from_raw(tr.data_max), tr.apply


def to_units(out: np.ndarray, tr: Transform) -> tuple[np.ndarray, np.ndarray]:
    """(raw, rescaled) from thresholds in the decision histogram's units (NaN: undecided,
    raw +inf so that nothing is selected)."""
    nan = np.isnan(out)
    if tr.linear:
        raw = np.array(out, dtype=np.float64)
        raw[nan] = np.inf
        rescaled = np.where(nan, np.nan, tr.from_raw(np.where(nan, 0.0, raw)))
    else:
        rescaled = np.array(out, dtype=np.float64)
        raw = np.where(nan, np.inf, tr.to_raw(np.where(nan, 0.0, rescaled)))
    return raw, rescaled


def decide(
    volume: Volume,
    grouping: Grouping,
    tr: Transform,
    recipe: Recipe,
    mask: Any = None,
    *,
    thresholded: str | None = None,
) -> Decision:
    """Per-group thresholds for a threshold `recipe` (one histogram pass for histogram methods).

    For linear rescales the histogram is taken of the raw data over its range as seen after
    rescaling, so thresholds are raw bin centres; for tone curves it is taken of the rescaled
    data and thresholds are mapped back with `Transform.to_raw`.  With `mask` (a
    `volbin.masks.Mask`) only the voxels inside it are counted.  With
    ``recipe.threshold_from`` the raw thresholds of that sidecar are used instead
    (`thresholded`: ``"normalized"`` when `volume` is a normalised input, whose thresholds
    are the sidecar's normalised ones).
    """
    if recipe.threshold_from is not None:
        dec = thresholds_from_sidecar(recipe.threshold_from, grouping, recipe, tr, thresholded)
        return with_bounds(dec, tr, recipe)
    if recipe.scope == "cohort":
        raise ValueError(
            "`scope='cohort'` pools the histograms of several inputs: use volbin.batch(..., "
            "scope='cohort') (CLI: volbin batch --scope cohort), or apply a cohort's thresholds "
            "to one input with threshold_from=SIDECAR."
        )
    m = None if mask is None else mask.data
    shape = grouping.group_shape
    if recipe.method == "value":
        assert recipe.threshold is not None
        if recipe.units == "raw":
            raw = np.full(shape, recipe.threshold)
            dec = Decision(grouping, "value", raw, tr.from_raw(raw))
        else:
            t = np.full(shape, recipe.threshold)
            dec = Decision(grouping, "value", _to_raw(tr, t, recipe.inclusive), t)
        return with_bounds(dec, tr, recipe)
    if recipe.method == "percentile":
        return with_bounds(_percentile_decision(volume, grouping, tr, recipe, m), tr, recipe)
    nbins = recipe.nbins
    lo, hi, pre = decision_histogram_range(tr)
    means = None
    if recipe.method in BIN_MEAN_METHODS:
        counts, means = group_histograms_with_offsets(volume, grouping, lo, hi, nbins, pre=pre, mask=m)
    elif tr.curve == "equalize" and m is None and tr.grouping == grouping:
        # The same counts, mapping only the voxels whose fine interval straddles a bin edge.
        counts = equalized_histograms(volume, tr, lo, hi, nbins)
    else:
        counts = group_histograms(volume, grouping, lo, hi, nbins, pre=pre, mask=m)
    out = histogram_thresholds(recipe.method, counts, lo, hi, tr.constant, grouping, means)
    raw, rescaled = to_units(out, tr)
    return with_bounds(Decision(grouping, recipe.method, raw, rescaled, nbins), tr, recipe)


def _to_raw(tr: Transform, t: np.ndarray, inclusive: bool) -> np.ndarray:
    """Raw thresholds of rescaled ones: ``f(x) > t <=> x > raw`` (``>=`` when `inclusive`:
    a rescaled 1 is then the top of the range, which ``>=`` still reaches)."""
    raw = tr.to_raw(t)
    if inclusive and tr.linear and tr.method != "none":
        raw = np.where(np.broadcast_to(t, raw.shape) == 1.0, tr.hi, raw)
    return raw


def with_bounds(dec: Decision, tr: Transform, recipe: Recipe) -> Decision:
    """`dec` with the recipe's upper bound (in its units), comparison and inversion."""
    upper_raw = dec.upper_raw
    upper_rescaled = dec.upper_rescaled
    if recipe.upper is not None:
        u = np.full(dec.grouping.group_shape, recipe.upper)
        if recipe.units == "raw":
            upper_raw, upper_rescaled = u, tr.from_raw(u)
        else:
            # f(x) <= U  <=>  not f(x) > U  <=>  x <= to_raw(U)
            upper_raw, upper_rescaled = tr.to_raw(u), u
    return dataclasses.replace(
        dec,
        upper_raw=upper_raw,
        upper_rescaled=upper_rescaled,
        inclusive=recipe.inclusive,
        invert=recipe.invert,
        scope=recipe.scope if recipe.scope != dec.grouping.scope else None,
    )


def thresholds_from_sidecar(
    path: str, grouping: Grouping, recipe: Recipe, tr: Transform, thresholded: str | None = None
) -> Decision:
    """The raw thresholds recorded in the sidecar `path`, for an input of `grouping`.

    With ``thresholded="normalized"`` (the input was normalised by its recipe) the
    sidecar's thresholds must be normalised ones (``threshold_normalized``), and otherwise
    raw ones: thresholds in other units than the input's would select other tissue.

    Raises
    ------
    VolbinDataError
        The sidecar holds no thresholds, thresholds in other units (normalised against raw,
        or CLAHE's rescaled ones), or thresholds for another scope, method or number of
        groups (the message names both).
    InputFileError
        The sidecar cannot be read.
    """
    from .io import read_sidecar

    record = read_sidecar(path)
    decisions = [s["decision"] for s in record.get("steps", []) if isinstance(s, dict) and "decision" in s]
    rec = decisions[-1] if decisions else None
    if not isinstance(rec, dict) or not ({"threshold_raw", "threshold_normalized"} & set(rec)):
        raise VolbinDataError(
            f"threshold_from {path}: the sidecar records no thresholds (no threshold method)."
        )
    theirs_units = rec.get("thresholded")
    if theirs_units == "clahe":
        raise VolbinDataError(
            f"threshold_from {path}: its thresholds are on a CLAHE output (rescaled units only; "
            "CLAHE is not monotone), so they have no raw equivalent to apply here."
        )
    if (theirs_units == "normalized") != (thresholded == "normalized"):
        units = {"normalized": "normalised intensities", None: "raw intensities"}
        raise VolbinDataError(
            f"threshold_from {path}: its thresholds are in {units.get(theirs_units, theirs_units)}; "
            f"this recipe's are in {units.get(thresholded, thresholded)} (give the same `normalize`)."
        )
    if theirs_units == "normalized":
        rec = {k.replace("_normalized", "_raw"): v for k, v in rec.items()}
    scope = recipe.scope
    theirs = rec.get("scope")
    their_shape = [int(n) for n in rec.get("group_shape", [])]
    mine = list(grouping.group_shape)
    if theirs != scope or math.prod(their_shape) != math.prod(mine) or len(their_shape) != len(mine):
        raise VolbinDataError(
            f"threshold_from {path}: its thresholds are for scope {theirs!r} with "
            f"{math.prod(their_shape)} group(s) {tuple(their_shape)}; this input with scope {scope!r} has "
            f"{math.prod(mine)} group(s) {tuple(mine)}."
        )
    if rec.get("method") != recipe.method:
        raise VolbinDataError(
            f"threshold_from {path}: its thresholds are of method {rec.get('method')!r}; the recipe's "
            f"method is {recipe.method!r} (leave the method out to take the sidecar's)."
        )

    def values(key: str, minus: list[int] | None = None) -> np.ndarray:
        v = rec[key]
        flat = np.array([np.inf if x is None else float(x) for x in (v if isinstance(v, list) else [v])])
        if minus:
            flat[minus] = -np.inf
        return flat.reshape(grouping.group_shape)

    raw = values("threshold_raw", rec.get("threshold_raw_minus_inf"))
    finite = np.isfinite(raw)
    rescaled = np.where(finite, tr.from_raw(np.where(finite, raw, 0.0)), np.nan)
    upper_raw = upper_rescaled = None
    if rec.get("upper_raw") is not None:
        upper_raw = values("upper_raw")
        upper_rescaled = tr.from_raw(upper_raw)
    source = {"threshold_from": {"path": os.path.abspath(path), "input": record.get("input")}}
    return Decision(
        grouping, recipe.method, raw, rescaled, rec.get("nbins"), upper_raw, upper_rescaled, source=source
    )


def _percentile_decision(
    volume: Volume, grouping: Grouping, tr: Transform, recipe: Recipe, mask: Any = None
) -> Decision:
    """The `recipe.percentile`-th percentile of each group's finite raw voxels, from fine
    histograms over the group's range (within one fine bin of ``np.percentile``).

    Groups that are constant after rescaling select no voxel, as for the other methods.
    """
    assert recipe.percentile is not None
    nbins = fine_nbins(grouping.n_groups, recipe.nbins)
    counts = group_histograms(volume, grouping, tr.data_min, tr.data_max, nbins, mask=mask)
    return percentile_decision(counts, grouping, tr, recipe.percentile)


def percentile_decision(counts: np.ndarray, grouping: Grouping, tr: Transform, q: float) -> Decision:
    """The `q`-th percentile of each group from fine histograms over its finite range."""
    raw = percentiles_from_hist(counts, tr.data_min, tr.data_max, [q])[..., 0]
    const = tr.constant
    raw = np.where(const, np.inf, raw)
    rescaled = np.where(const, np.nan, tr.from_raw(np.where(const, 0.0, raw)))
    return Decision(grouping, "percentile", raw, rescaled, counts.shape[-1])


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
    method: HistogramMethod = "otsu",
    *,
    scope: Scope = "volume",
    axis: str | int = "z",
    nbins: int = 256,
    rescale: RescaleMethod = "minmax",
    units: Units | None = None,
    volume_axis: int | None = None,
    mask: Any = None,
    stats_mask: Any = None,
    **options: Any,
) -> float | np.ndarray:
    """Threshold(s) of a histogram method, per group.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    method : str
        A histogram method: ``otsu``, ``yen``, ``isodata``, ``li``, ``minimum``,
        ``triangle``, ``mean`` (scikit-image's algorithms), ``huang``, ``intermodes``,
        ``kittler-illingworth``, ``max-entropy``, ``moments``, ``renyi-entropy``,
        ``shanbhag`` (ImageJ's and ITK's, see `volbin.autothreshold`) or ``percentile``
        (with ``percentile=P``: the P-th percentile of the finite voxels, to within
        ``(max - min) / fine_nbins``).
    scope : {'stack', 'volume', 'slice'}
    axis : {'x', 'y', 'z'} or int
    nbins : int
    rescale : str
        Rescale applied before the decision (see `volbin.rescale`).
    units : {'raw', 'rescaled', 'normalized'}, optional
        Units of the returned thresholds: by default ``raw`` (foreground is ``volume >
        threshold``), ``normalized`` with a ``normalize`` option (thresholds of the
        normalised volume; ``raw`` is refused then) and ``rescaled`` with
        ``curve='clahe'`` (CLAHE, not monotone, has no raw thresholds).
    volume_axis : int, optional
    mask, stats_mask : str, path, ndarray, dask array or Volume, optional
        Compute the statistics (rescale range, histograms) inside this mask only: a mask
        file or array on the input's grid (non-zero is inside), or ``"nonzero"`` (the
        input's own non-zero voxels).  Both mean the same here (see `volbin.binarize`).
    **options
        Other `Recipe` fields (percentile, percentiles, curve, normalize and its options,
        ...).

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
        No finite voxel in a volume (or the stack, inside the mask), a method that fails on
        a histogram, an empty mask or a mask on another grid.

    References
    ----------
    .. [1] N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans.
       Systems, Man, and Cybernetics 9(1):62-66, 1979 (``otsu``).
    .. [2] C. H. Li and C. K. Lee, "Minimum cross entropy thresholding", Pattern Recognition
       26(4):617-625, 1993; C. H. Li and P. K. S. Tam, "An iterative algorithm for minimum
       cross entropy thresholding", Pattern Recognition Letters 18(8):771-776, 1998 (``li``).
    .. [3] J. C. Yen, F. J. Chang and S. Chang, "A new criterion for automatic multilevel
       thresholding", IEEE Trans. Image Processing 4(3):370-378, 1995 (``yen``).
    .. [4] T. W. Ridler and S. Calvard, "Picture thresholding using an iterative selection
       method", IEEE Trans. Systems, Man, and Cybernetics 8:630-632, 1978 (``isodata``).
    .. [5] G. W. Zack, W. E. Rogers and S. A. Latt, "Automatic measurement of sister
       chromatid exchange frequency", J. Histochemistry and Cytochemistry 25(7):741-753,
       1977 (``triangle``).
    .. [6] J. M. S. Prewitt and M. L. Mendelsohn, "The analysis of cell images", Annals of
       the New York Academy of Sciences 128:1035-1053, 1966 (``minimum``).
    .. [7] C. A. Glasbey, "An analysis of histogram-based thresholding algorithms", CVGIP:
       Graphical Models and Image Processing 55:532-537, 1993 (``mean``).

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
    fields, array = mask_fields(mask, stats_mask)
    recipe = Recipe(method=method, scope=scope, axis=axis, nbins=nbins, rescale=rescale, **fields, **options)
    if units is None:
        units = "rescaled" if recipe.curve == "clahe" else "normalized" if recipe.normalize else "raw"
    if units not in ("raw", "rescaled", "normalized"):
        raise ValueError(f"`units` must be one of raw, rescaled, normalized; got {units!r}.")
    if units == "normalized" and recipe.normalize is None:
        raise ValueError("`units='normalized'` needs `normalize` (e.g. normalize='zscore'); got none.")
    if units == "normalized" and recipe.curve == "clahe":
        raise ValueError("`units='normalized'` cannot be used with curve='clahe'; use units='rescaled'.")
    if units == "raw" and (recipe.normalize or recipe.curve == "clahe"):
        why = f"normalize={recipe.normalize!r}" if recipe.normalize else "curve='clahe'"
        raise ValueError(
            f"`units='raw'` cannot be used with {why}: thresholds compare the "
            f"{'normalised' if recipe.normalize else 'CLAHE'} volume, not raw intensities; use "
            f"units={'normalized' if recipe.normalize and recipe.curve != 'clahe' else 'rescaled'!r}."
        )
    vol, _ = as_volume(volume, volume_axis=volume_axis)
    stage = prepare(vol, recipe, array)
    vol, m, recipe = stage.volume, stage.mask, stage.recipe
    grouping = grouping_for(vol, recipe)
    tr = fit_transform(vol, grouping, recipe, m)
    dec = decide(vol, grouping, tr, recipe, m)
    vals = dec.rescaled if units == "rescaled" else dec.raw
    if units != "rescaled":
        vals = np.where(np.isinf(vals) & np.isnan(dec.rescaled), np.nan, vals)
    return float(vals) if vals.ndim == 0 else vals
