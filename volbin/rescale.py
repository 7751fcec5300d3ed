"""Rescaling: raw intensities -> float32 in [0, 1], per group, with an optional tone curve.

`fit_transform` measures what a rescale needs (one streamed pass for the range, one more for
percentiles or equalisation) and returns a `Transform`: per-group parameters that map raw
values to rescaled ones (`Transform.apply`) and rescaled thresholds back to raw intensities
(`Transform.to_raw`).  Every transform is monotone non-decreasing, so ``f(x) > t`` and
``x > f⁻¹(t)`` select the same voxels: volbin applies thresholds in raw units.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import dask.array as da
import numpy as np

from .errors import VolbinDataError, VolbinWarning
from .histogram import fine_nbins, group_histograms, group_range, percentiles_from_hist
from .recipe import HISTOGRAM_METHODS, Curve, Recipe, RescaleMethod, Scope
from .volume import Grouping, Volume, as_volume, like_input

__all__ = ["Transform", "build_transform", "fit_transform", "rescale"]


@dataclass(frozen=True)
class Transform:
    """Per-group map from raw intensities to [0, 1] (see `fit_transform`)."""

    grouping: Grouping
    method: str
    lo: np.ndarray  # raw value mapped to 0, per group
    hi: np.ndarray  # raw value mapped to 1, per group
    data_min: np.ndarray  # finite range of the raw data, per group
    data_max: np.ndarray
    n_nonfinite: np.ndarray
    curve: str = "linear"
    gamma: float = 1.0
    log_gain: float = 9.0
    eq_edges: np.ndarray | None = None  # group_shape + (F + 1,), raw units
    eq_cdf: np.ndarray | None = None  # group_shape + (F + 1,), in [0, 1]

    @property
    def linear(self) -> bool:
        return self.curve == "linear" or (self.curve == "gamma" and self.gamma == 1.0)

    @property
    def constant(self) -> np.ndarray:
        """Groups whose rescaled values are all equal (constant data or range outside data)."""
        lo, hi = self.decision_range()
        return ~(hi > lo)

    def decision_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw range of the data as seen after rescaling: [min, max] clipped to [lo, hi]."""
        if self.method == "none":
            return self.data_min, self.data_max
        return np.maximum(self.data_min, self.lo), np.minimum(self.data_max, self.hi)

    # --- raw -> rescaled -------------------------------------------------------------------
    def _linear(self, x: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
        if self.method == "none":
            r = x.astype(np.float64, copy=False)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                span = np.where(hi > lo, hi - lo, 1.0)
                r = (x - lo) / span
        return np.clip(r, 0.0, 1.0)

    def _curve(self, r: np.ndarray) -> np.ndarray:
        if self.curve == "gamma" and self.gamma != 1.0:
            return np.power(r, self.gamma)
        if self.curve == "log":
            return np.log1p(self.log_gain * r) / np.log1p(self.log_gain)
        return r

    def apply(self, block: np.ndarray, location: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """Rescale a raw `block` lying at array `location`; float32 in [0, 1], NaN kept.

        ±Inf are mapped like values beyond the range (to 0 or 1); statistics excluded them.
        """
        if location is None:
            location = [(0, s) for s in block.shape]
        if self.method == "none" and self.linear and block.dtype == np.float32:
            # Values used as they are: clipping float32 in float32 is exact, and halves the
            # memory traffic of the float64 route.
            return np.clip(block, np.float32(0), np.float32(1))
        x = np.asarray(block, dtype=np.float64)
        if self.curve == "equalize":
            return self._equalize(x, location).astype(np.float32)
        lo = self.grouping.block_values(self.lo, location)
        hi = self.grouping.block_values(self.hi, location)
        return self._curve(self._linear(x, lo, hi)).astype(np.float32)

    def _equalize(self, x: np.ndarray, location: Sequence[tuple[int, int]]) -> np.ndarray:
        assert self.eq_edges is not None and self.eq_cdf is not None
        g = self.grouping
        out = np.empty(x.shape, dtype=np.float64)
        ranges = [range(*location[a]) for a in g.group_axes]
        for gidx in np.ndindex(*[len(r) for r in ranges]):
            global_idx = tuple(r[i] for r, i in zip(ranges, gidx, strict=True))
            sel: list[Any] = [slice(None)] * x.ndim
            for a, i in zip(g.group_axes, gidx, strict=True):
                sel[a] = i
            xs = x[tuple(sel)]
            edges = self.eq_edges[global_idx]
            cdf = self.eq_cdf[global_idx]
            r = np.interp(xs, edges, cdf)
            r[np.isnan(xs)] = np.nan
            out[tuple(sel)] = r
        return out

    def from_raw(self, t_raw: np.ndarray) -> np.ndarray:
        """Per-group raw values -> rescaled values."""
        t_raw = np.asarray(t_raw, dtype=np.float64)
        if self.curve == "equalize":
            assert self.eq_edges is not None and self.eq_cdf is not None
            out = np.empty(t_raw.shape)
            for idx in np.ndindex(*t_raw.shape):
                out[idx] = np.interp(t_raw[idx], self.eq_edges[idx], self.eq_cdf[idx])
            return out
        if self.method == "none" and self.linear:
            # No rescale: decisions see the values as they are (only probabilities clip).
            return np.array(t_raw, dtype=np.float64)
        return np.array(self._curve(self._linear(t_raw, self.lo, self.hi)), dtype=np.float64)

    # --- rescaled -> raw -------------------------------------------------------------------
    def to_raw(self, t: np.ndarray) -> np.ndarray:
        """Per-group rescaled thresholds -> raw thresholds with ``f(x) > t  <=>  x > to_raw(t)``.

        Thresholds at or above 1 give +inf (nothing is above them), below 0 give -inf.
        """
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), self.grouping.group_shape).copy()
        if self.curve == "equalize":
            return self._equalize_inverse(t)
        if self.curve == "gamma" and self.gamma != 1.0:
            r = np.power(np.clip(t, 0.0, 1.0), 1.0 / self.gamma)
        elif self.curve == "log":
            r = np.expm1(np.clip(t, 0.0, 1.0) * np.log1p(self.log_gain)) / self.log_gain
        else:
            r = t
        if self.method == "none":
            raw = r.copy()
        else:
            raw = self.lo + r * (self.hi - self.lo)
        raw = np.array(raw, dtype=np.float64)
        clipped_top = t >= 1.0 if self.method != "none" else np.zeros_like(t, dtype=bool)
        raw[clipped_top] = np.inf
        raw[t < 0.0] = -np.inf
        return raw

    def _equalize_inverse(self, t: np.ndarray) -> np.ndarray:
        assert self.eq_edges is not None and self.eq_cdf is not None
        out = np.empty(t.shape)
        for idx in np.ndindex(*t.shape):
            edges = self.eq_edges[idx]
            cdf = self.eq_cdf[idx]
            ti = t[idx]
            if ti >= cdf[-1]:
                out[idx] = np.inf
                continue
            if ti < cdf[0]:
                out[idx] = -np.inf
                continue
            # x* = sup{x : cdf(x) <= t}: the first knot above t, interpolated back.
            k = int(np.searchsorted(cdf, ti, side="right"))
            c0, c1 = cdf[k - 1], cdf[k]
            e0, e1 = edges[k - 1], edges[k]
            out[idx] = e0 + (ti - c0) / (c1 - c0) * (e1 - e0) if c1 > c0 else e1
        return out

    def record(self) -> dict[str, Any]:
        """What the sidecar says about this transform."""
        rec: dict[str, Any] = {"method": self.method, "curve": self.curve}
        if self.method != "none":
            rec["lo"], rec["hi"] = self.lo.tolist(), self.hi.tolist()
        if self.curve == "gamma":
            rec["gamma"] = self.gamma
        if self.curve == "log":
            rec["log_gain"] = self.log_gain
        return rec


def _dtype_range(volume: Volume) -> tuple[float, float]:
    """Range of the stored dtype, in the units of the loaded (scaled) data."""
    dtype = volume.dtype
    slope, inter = 1.0, 0.0
    src = volume.source or {}
    hdr = volume.header
    if "stored_dtype" in src:
        # The loader's record: nibabel clears the scaling in the header it hands out.
        dtype = np.dtype(src["stored_dtype"])
        slope, inter = float(src.get("scl_slope", 1.0)), float(src.get("scl_inter", 0.0))
    elif hdr is not None and hasattr(hdr, "get_data_dtype"):
        dtype = np.dtype(hdr.get_data_dtype())
        s, i = hdr.get_slope_inter()
        slope = 1.0 if s is None or not np.isfinite(s) else float(s)
        inter = 0.0 if i is None or not np.isfinite(i) else float(i)
    if dtype == np.bool_:
        lo, hi = 0.0, 1.0
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        raise ValueError(
            f"`rescale='dtype'` needs integer data (its range is the dtype's); the data are "
            f"{dtype}. Use 'minmax', 'percentile' or 'fixed'."
        )
    a, b = sorted((lo * slope + inter, hi * slope + inter))
    return a, b


def fit_transform(
    volume: Volume, grouping: Grouping, recipe: Recipe, mask: Any = None, *, warn: bool = True
) -> Transform:
    """Measure the per-group parameters of the rescale and tone curve of `recipe`.

    One streamed pass gives the finite range of each group; percentiles and histogram
    equalisation add one pass over fine histograms (``fine_nbins`` bins per group, so
    percentiles are exact to within ``(max - min) / fine_nbins``).  With `mask` (a
    `volbin.masks.Mask`), only the voxels inside it are measured.

    Raises
    ------
    VolbinDataError
        If a volume (or the stack) has no finite voxel (inside the mask), or the mask is empty.
    """
    m = None if mask is None else mask.data
    dmin, dmax, nonfinite, inside = group_range(volume, grouping, m, counts=True)
    if mask is not None and not inside.any():
        if mask.source == "nonzero":
            raise VolbinDataError(
                "mask 'nonzero': every voxel of the input is 0, so there is nothing to measure; "
                "check the file, or give a mask file."
            )
        raise VolbinDataError(f"{mask.describe()} is empty (no non-zero voxel); check the mask file.")
    fine = None
    if recipe.rescale == "percentile" or recipe.curve == "equalize":
        empty = ~(dmax >= dmin)
        nf = fine_nbins(grouping.n_groups, recipe.nbins)
        fine = group_histograms(
            volume, grouping, np.where(empty, 0.0, dmin), np.where(empty, 0.0, dmax), nf, mask=m
        )
    dtype_range = _dtype_range(volume) if recipe.rescale == "dtype" else None
    where = "" if mask is None else f" inside the {mask.describe()}"
    return build_transform(grouping, recipe, dmin, dmax, nonfinite, fine, dtype_range, where, warn)


def build_transform(
    grouping: Grouping,
    recipe: Recipe,
    dmin: np.ndarray,
    dmax: np.ndarray,
    nonfinite: np.ndarray,
    fine: np.ndarray | None = None,
    dtype_range: tuple[float, float] | None = None,
    where: str = "",
    warn: bool = True,
) -> Transform:
    """The `Transform` of `recipe` from measured per-group ranges (and fine histograms over
    them, for percentiles and equalisation): what `fit_transform` computes once it has read
    the data, and what a cohort builds from the sums of its inputs' measurements."""
    empty = ~(dmax >= dmin)
    if empty.any():
        bad = np.flatnonzero(empty.ravel())
        if grouping.scope != "slice" or empty.all():
            names = ", ".join(grouping.describe(int(i)) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise VolbinDataError(
                f"no finite voxel{where} in {names} (all NaN/Inf): nothing to rescale or threshold; "
                "check the file or exclude that volume."
            )
        if warn:
            warnings.warn(
                f"{int(empty.sum())} slice(s) have no finite voxel{where}; their output is 0.",
                VolbinWarning,
                stacklevel=4,
            )
        dmin = np.where(empty, 0.0, dmin)
        dmax = np.where(empty, 0.0, dmax)
    n_bad = int(nonfinite.sum())
    if n_bad and warn:
        warnings.warn(
            f"{n_bad} NaN/Inf voxel(s) excluded from statistics; they are written as 0.",
            VolbinWarning,
            stacklevel=4,
        )
    shape = grouping.group_shape
    method = recipe.rescale
    if method == "minmax":
        lo, hi = dmin.copy(), dmax.copy()
    elif method == "none":
        lo, hi = np.zeros(shape), np.ones(shape)
    elif method == "fixed":
        assert recipe.value_range is not None
        lo, hi = np.full(shape, recipe.value_range[0]), np.full(shape, recipe.value_range[1])
    elif method == "dtype":
        assert dtype_range is not None
        lo, hi = np.full(shape, dtype_range[0]), np.full(shape, dtype_range[1])
    else:
        assert fine is not None
        p = percentiles_from_hist(fine, dmin, dmax, recipe.percentiles)
        lo, hi = p[..., 0], p[..., 1]
    eq_edges = eq_cdf = None
    if recipe.curve == "equalize":
        assert fine is not None
        eq_edges, eq_cdf = _equalize_tables(fine, dmin, dmax, lo, hi, method == "none")
    tr = Transform(
        grouping,
        method,
        np.asarray(lo, float),
        np.asarray(hi, float),
        dmin,
        dmax,
        nonfinite,
        recipe.curve,
        float(recipe.gamma),
        float(recipe.log_gain),
        eq_edges,
        eq_cdf,
    )
    const = tr.constant & ~empty
    # With rescale 'none' a constant volume keeps its meaning for stochastic and dithering;
    # it only defeats histogram thresholds.
    if warn and const.any() and (method != "none" or recipe.method in HISTOGRAM_METHODS):
        which = np.flatnonzero(const.ravel())
        what = ", ".join(grouping.describe(int(i)) for i in which[:5]) + (" ..." if len(which) > 5 else "")
        consequence = (
            "histogram thresholds select no voxel there"
            if recipe.method in HISTOGRAM_METHODS
            else "its rescaled intensity is 0 or 1 everywhere"
        )
        warnings.warn(
            f"{what} {'is' if len(which) == 1 else 'are'} constant{where} after rescaling "
            f"(values {float(dmin.ravel()[which[0]]):g}..{float(dmax.ravel()[which[0]]):g}); {consequence}.",
            VolbinWarning,
            stacklevel=4,
        )
    return tr


def _equalize_tables(
    fine: np.ndarray, dmin: np.ndarray, dmax: np.ndarray, lo: np.ndarray, hi: np.ndarray, identity: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear equalisation maps: knots at fine-bin edges, values = CDF in [0, 1],
    restricted to [lo, hi] (values outside map to 0 and 1)."""
    nb = fine.shape[-1]
    t = np.arange(nb + 1) / nb
    edges = dmin[..., None] + (dmax - dmin)[..., None] * t
    cum = np.concatenate([np.zeros((*fine.shape[:-1], 1)), np.cumsum(fine, axis=-1)], axis=-1)
    if not identity:
        c_lo = np.array([np.interp(lo[i], edges[i], cum[i]) for i in np.ndindex(*lo.shape)]).reshape(lo.shape)
        c_hi = np.array([np.interp(hi[i], edges[i], cum[i]) for i in np.ndindex(*hi.shape)]).reshape(hi.shape)
    else:
        c_lo, c_hi = cum[..., 0], cum[..., -1]
    span = np.where(c_hi > c_lo, c_hi - c_lo, 1.0)
    cdf = np.clip((cum - c_lo[..., None]) / span[..., None], 0.0, 1.0)
    return edges, cdf


@overload
def rescale(
    volume: np.ndarray,
    method: RescaleMethod = ...,
    *,
    percentiles: tuple[float, float] = ...,
    value_range: tuple[float, float] | None = ...,
    curve: Curve = ...,
    gamma: float = ...,
    log_gain: float = ...,
    scope: Scope = ...,
    axis: str | int = ...,
    volume_axis: int | None = ...,
) -> np.ndarray: ...
@overload
def rescale(
    volume: da.Array,
    method: RescaleMethod = ...,
    *,
    percentiles: tuple[float, float] = ...,
    value_range: tuple[float, float] | None = ...,
    curve: Curve = ...,
    gamma: float = ...,
    log_gain: float = ...,
    scope: Scope = ...,
    axis: str | int = ...,
    volume_axis: int | None = ...,
) -> da.Array: ...
@overload
def rescale(
    volume: Volume,
    method: RescaleMethod = ...,
    *,
    percentiles: tuple[float, float] = ...,
    value_range: tuple[float, float] | None = ...,
    curve: Curve = ...,
    gamma: float = ...,
    log_gain: float = ...,
    scope: Scope = ...,
    axis: str | int = ...,
    volume_axis: int | None = ...,
) -> Volume: ...


def rescale(
    volume: Any,
    method: RescaleMethod = "minmax",
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    value_range: tuple[float, float] | None = None,
    curve: Curve = "linear",
    gamma: float = 1.0,
    log_gain: float = 9.0,
    scope: Scope = "volume",
    axis: str | int = "z",
    volume_axis: int | None = None,
) -> Any:
    """Rescale intensities to float32 in [0, 1] per group, with an optional tone curve.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    method : {'minmax', 'percentile', 'fixed', 'dtype', 'none'}
        ``minmax`` maps each group's finite [min, max] to [0, 1]; ``percentile`` maps the
        `percentiles` and clips; ``fixed`` maps `value_range` and clips; ``dtype`` maps the
        range of the stored integer dtype; ``none`` only clips to [0, 1].
    percentiles, value_range : (float, float)
    curve : {'linear', 'gamma', 'log', 'equalize'}
    gamma, log_gain : float
    scope : {'stack', 'volume', 'slice'}
    axis : {'x', 'y', 'z'} or int
        Slice axis for ``scope='slice'``.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3).

    Returns
    -------
    rescaled : same kind as `volume`, float32
        NaN stays NaN; ±Inf map to 1 and 0.

    Raises
    ------
    VolbinDataError
        If a volume has no finite voxel.

    Examples
    --------
    >>> import numpy as np, volbin
    >>> x = np.arange(24, dtype=float).reshape(2, 3, 4)
    >>> r = volbin.rescale(x)
    >>> float(r.min()), float(r.max()), r.dtype
    (0.0, 1.0, dtype('float32'))
    """
    recipe = Recipe(
        rescale=method,
        percentiles=percentiles,
        value_range=value_range,
        curve=curve,
        gamma=gamma,
        log_gain=log_gain,
        scope=scope,
        axis=axis,
    )
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    grouping = vol.grouping(recipe.scope, recipe.axis)
    tr = fit_transform(vol, grouping, recipe)
    out = vol.derive(apply_transform(vol.data, tr), {"step": "rescale", **tr.record()})
    return like_input(out, kind)


def apply_transform(data: da.Array, tr: Transform) -> da.Array:
    """Lazy float32 rescaled data."""

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        return tr.apply(block, block_info[0]["array-location"])  # type: ignore[index]

    return da.map_blocks(run, data, dtype=np.float32, meta=np.empty((0,) * data.ndim, np.float32))
