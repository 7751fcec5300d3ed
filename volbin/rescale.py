"""Rescaling: raw intensities -> float32 in [0, 1], per group, with an optional tone curve.

`fit_transform` measures what a rescale needs (one streamed pass for the range, one more for
percentiles or equalisation) and returns a `Transform`: per-group parameters that map raw
values to rescaled ones (`Transform.apply`) and rescaled thresholds back to raw intensities
(`Transform.to_raw`).  Every transform but CLAHE is monotone non-decreasing, so ``f(x) > t``
and ``x > f⁻¹(t)`` select the same voxels: volbin applies thresholds in raw units.  CLAHE
(``curve="clahe"``) equalises each 3D volume as a whole, one volume in memory at a time;
it has no inverse, so its thresholds exist in rescaled units only.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import dask
import dask.array as da
import numpy as np

from . import _kernels as K
from . import _tone_kernels as TK
from .errors import VolbinDataError, VolbinWarning
from .histogram import (
    blocks_now,
    fine_nbins,
    group_histograms,
    group_histograms_with_offsets,
    group_range,
    percentiles_from_hist,
)
from .recipe import HISTOGRAM_METHODS, Curve, Recipe, RescaleMethod, Scope
from .volume import Grouping, Volume, as_volume, like_input

__all__ = [
    "CLAHE_BYTES_PER_VOXEL",
    "Transform",
    "build_transform",
    "clahe_memory_limit",
    "equalized_histograms",
    "fit_transform",
    "rescale",
]

#: Peak memory of CLAHE per voxel of one 3D volume: the float64 working copy (8 bytes), the
#: float32 result (4) and scikit-image's ``equalize_adapthist`` itself (measured with
#: tracemalloc: 49-63 bytes per voxel for 64**3 to 181 x 217 x 181 volumes).
CLAHE_BYTES_PER_VOXEL = 76
#: dask configuration key of the CLAHE memory limit (bytes, or a string such as "8GiB").
CLAHE_MEMORY_KEY = "volbin.clahe-memory-limit"
_CLAHE_DEFAULT_LIMIT = 4 * 2**30
#: Grey-level bins of CLAHE's local histograms (scikit-image's default).
CLAHE_NBINS = 256


def clahe_memory_limit() -> int:
    """Bytes one CLAHE volume may use: ``dask.config`` key ``volbin.clahe-memory-limit``
    (default 4 GiB)."""
    value = dask.config.get(CLAHE_MEMORY_KEY, _CLAHE_DEFAULT_LIMIT)
    return int(dask.utils.parse_bytes(value) if isinstance(value, str) else value)


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
    gammas: np.ndarray | None = None  # auto-gamma exponents, per group
    means: np.ndarray | None = None  # auto-gamma: mean rescaled value, per group
    gain: float = 10.0  # sigmoid
    cutoff: float = 0.5
    clip_limit: float = 0.01  # clahe
    kernel_size: tuple[int, int, int] | None = None  # clahe, voxels along x, y, z
    spatial_axes: tuple[int, int, int] = (0, 1, 2)  # clahe: array axes of x, y, z
    # equalize, when fitted on the data it is applied to without a mask: the fine histograms
    # the curve was built from, their range, and the name of the dask array they count.
    eq_fine: tuple[np.ndarray, np.ndarray, np.ndarray, str] | None = None

    @property
    def monotone(self) -> bool:
        """Whether thresholds map back to raw units (every curve but ``clahe``)."""
        return self.curve != "clahe"

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

    def _curve(self, r: np.ndarray, gammas: Any = None) -> np.ndarray:
        """The tone curve on rescaled `r`; `gammas` are the auto-gamma exponents for `r`."""
        if self.curve == "gamma" and self.gamma != 1.0:
            return np.power(r, self.gamma)
        if self.curve == "log":
            return np.log1p(self.log_gain * r) / np.log1p(self.log_gain)
        if self.curve == "auto-gamma":
            g = self.gammas if gammas is None else gammas
            assert g is not None
            return np.power(r, g)
        if self.curve == "sigmoid":
            # scikit-image's adjust_sigmoid on [0, 1] data (its scale is 1 for floats).
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(self.gain * (self.cutoff - r)))
        return r

    def _sigmoid_ends(self) -> tuple[float, float]:
        """Values of the sigmoid curve at r = 0 and r = 1."""
        f = self._curve(np.array([0.0, 1.0]))
        return float(f[0]), float(f[1])

    def _not_monotone(self, what: str) -> ValueError:
        return ValueError(
            f"{what} needs a monotone tone curve; curve='clahe' equalises whole volumes and has "
            "no inverse, so its thresholds exist in rescaled units only: threshold the output "
            "of `volbin.rescale(..., curve='clahe')` with rescale='none'."
        )

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
        if self.curve == "clahe":
            raise self._not_monotone("rescaling block by block")
        if self.curve == "equalize":
            return self._equalize(np.asarray(block), location)
        x = np.asarray(block, dtype=np.float64)
        lo = self.grouping.block_values(self.lo, location)
        hi = self.grouping.block_values(self.hi, location)
        gammas = None
        if self.curve == "auto-gamma":
            assert self.gammas is not None
            gammas = self.grouping.block_values(self.gammas, location)
        return self._curve(self._linear(x, lo, hi), gammas).astype(np.float32)

    def apply_linear(self, block: np.ndarray, location: Sequence[tuple[int, int]]) -> np.ndarray:
        """The linear part of the rescale of a raw `block` (float64 in [0, 1], NaN kept)."""
        lo = self.grouping.block_values(self.lo, location)
        hi = self.grouping.block_values(self.hi, location)
        return self._linear(np.asarray(block, dtype=np.float64), lo, hi)

    def _equalize(self, x: np.ndarray, location: Sequence[tuple[int, int]]) -> np.ndarray:
        assert self.eq_edges is not None and self.eq_cdf is not None
        g = self.grouping
        out = np.empty(x.shape, dtype=np.float32)
        ranges = [range(*location[a]) for a in g.group_axes]
        for gidx in np.ndindex(*[len(r) for r in ranges]):
            global_idx = tuple(r[i] for r, i in zip(ranges, gidx, strict=True))
            sel: list[Any] = [slice(None)] * x.ndim
            for a, i in zip(g.group_axes, gidx, strict=True):
                sel[a] = i
            xs = x[tuple(sel)]
            edges = self.eq_edges[global_idx]
            cdf = self.eq_cdf[global_idx]
            out[tuple(sel)] = _uniform_interp(xs, edges, cdf)
        return out

    def from_raw(self, t_raw: np.ndarray) -> np.ndarray:
        """Per-group raw values -> rescaled values."""
        t_raw = np.asarray(t_raw, dtype=np.float64)
        if self.curve == "clahe":
            raise self._not_monotone("mapping raw values to rescaled ones")
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
        if self.curve == "clahe":
            raise self._not_monotone("a raw-unit threshold")
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), self.grouping.group_shape).copy()
        if self.curve == "equalize":
            return self._equalize_inverse(t)
        below = t < 0.0  # every voxel is above such a threshold
        top = None
        if self.curve == "gamma" and self.gamma != 1.0:
            r = np.power(np.clip(t, 0.0, 1.0), 1.0 / self.gamma)
        elif self.curve == "log":
            r = np.expm1(np.clip(t, 0.0, 1.0) * np.log1p(self.log_gain)) / self.log_gain
        elif self.curve == "auto-gamma":
            assert self.gammas is not None
            r = np.power(np.clip(t, 0.0, 1.0), 1.0 / self.gammas)
        elif self.curve == "sigmoid":
            # The sigmoid maps [0, 1] onto [f0, f1] inside (0, 1): thresholds below f0 keep
            # every voxel, those at or above f1 none.
            f0, f1 = self._sigmoid_ends()
            tc = np.clip(t, f0, f1)
            with np.errstate(divide="ignore"):
                r = np.clip(self.cutoff - np.log(1.0 / tc - 1.0) / self.gain, 0.0, 1.0)
            below = t < f0
            top = t >= f1
        else:
            r = t
        if self.method == "none":
            raw = r.copy()
        else:
            raw = self.lo + r * (self.hi - self.lo)
        raw = np.array(raw, dtype=np.float64)
        clipped_top = t >= 1.0 if self.method != "none" else np.zeros_like(t, dtype=bool)
        raw[clipped_top if top is None else top] = np.inf
        raw[below] = -np.inf
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
        if self.curve == "auto-gamma":
            assert self.gammas is not None and self.means is not None
            rec["gamma"] = self.gammas.tolist()
            rec["mean"] = self.means.tolist()
        if self.curve == "sigmoid":
            rec["gain"], rec["cutoff"] = self.gain, self.cutoff
        if self.curve == "clahe":
            rec["clip_limit"] = self.clip_limit
            rec["kernel_size"] = list(self.kernel_size) if self.kernel_size else None
            rec["nbins"] = CLAHE_NBINS
            rec["thresholds"] = "rescaled units only (CLAHE is not monotone)"
        return rec


def _uniform_interp(x: np.ndarray, edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.interp(x, edges, values)`` as float32 for equally spaced `edges`, NaN kept.

    The knot of each value is found by arithmetic in a compiled loop
    (`_tone_kernels.equalize_map`) instead of a binary search over 65537 knots; the result
    is monotone in `x` for non-decreasing `values`.
    """
    nb = len(edges) - 1
    e0, e1 = float(edges[0]), float(edges[-1])
    if not e1 > e0:
        r = np.interp(x, edges, values)
        r[np.isnan(x)] = np.nan
        return r.astype(np.float32)
    x = K.native(x)  # the type the compiled loops take: float16 widens
    # A C-ordered view of the values (F-ordered sub-blocks of NIfTI slabs are transposed).
    transposed = x.flags.f_contiguous and not x.flags.c_contiguous
    view = x.T if transposed else np.ascontiguousarray(x)
    out = np.empty(view.shape, np.float32)
    table = np.ascontiguousarray(values, np.float64)
    TK.equalize_map(view.reshape(-1), e0, nb / (e1 - e0), table, out.reshape(-1))
    return out.T if transposed else out


def _hist_bins(v: np.ndarray, lo: float, hi: float, nbins: int) -> np.ndarray:
    """Bins of float64 values over [lo, hi] as `_kernels.group_histogram` assigns them."""
    step = (hi - lo) / nbins
    norm = nbins / (hi - lo) if hi > lo else 0.0
    flast = float(nbins - 1)
    # Clamped as the kernel clamps: a NaN position (v == lo with norm overflowing to inf, or
    # an infinite lo) is bin 0 there, where np.clip would keep it NaN.
    t = (v - lo) * norm
    t = np.where(t > 0.0, t, 0.0)
    kf = np.floor(np.where(t < flast, t, flast))
    kf = (
        kf - ((v < kf * step + lo) & (kf > 0.0)) + ((v >= (kf + 1.0) * step + lo) & (kf < flast)) * (step > 0)
    )
    return kf.astype(np.int64)


def equalized_histograms(
    volume: Volume | da.Array, tr: Transform, lo: np.ndarray, hi: np.ndarray, nbins: int
) -> np.ndarray:
    """Exact per-group histograms of the equalised values ``tr.apply(block)`` (one pass).

    Equal to ``histogram.group_histograms(volume, tr.grouping, lo, hi, nbins, pre=tr.apply)``
    for ``curve='equalize'``, without making the equalised volume: the curve is linear on
    each fine-bin interval, so a voxel whose interval maps inside one bin is counted from
    its interval alone, and only the voxels of intervals that straddle a bin edge (a few
    hundred of 65536) are mapped (`_tone_kernels.equalized_histogram`).

    When `tr` was fitted on this very data without a mask (``tr.eq_fine``), the fine
    histograms it was fitted on already count those voxels by interval: each fine bin adds
    its count to its interval's bin, and a pass (`_tone_kernels.equalized_corrections`)
    finds in a vector loop the few voxels the fine bins do not settle (in a straddling
    interval, on a fine-bin edge where np.histogram's assignment and the curve's interval
    differ, or not finite), maps only those and moves them to their bin: no store for the
    others, and the same counts.
    """
    assert tr.curve == "equalize" and tr.eq_edges is not None and tr.eq_cdf is not None
    g = tr.grouping
    lo = np.broadcast_to(np.asarray(lo, np.float64), g.group_shape)
    hi = np.broadcast_to(np.asarray(hi, np.float64), g.group_shape)
    tables: dict[tuple[int, ...], tuple[float, float, np.ndarray, np.ndarray]] = {}
    # Constant groups whose -Inf voxels map to another bin than their other voxels: (the
    # bin of the others, that of -Inf).
    minus_inf: dict[tuple[int, ...], tuple[int, int]] = {}
    for idx in np.ndindex(*g.group_shape):
        edges, cdf = tr.eq_edges[idx], np.ascontiguousarray(tr.eq_cdf[idx], np.float64)
        table = TK.equalized_table(cdf, float(lo[idx]), float(hi[idx]), nbins)
        nb = len(edges) - 1
        e0, e1 = float(edges[0]), float(edges[-1])
        if not e1 > e0:
            # A constant group: `apply` maps it with np.interp on knots all at e0, which
            # gives finite values and +Inf cdf[-1] (not cdf[0]: with rescale 'none', 'fixed'
            # or 'dtype' the two differ), and -Inf cdf[0].
            ends = np.float32([np.interp(e0, edges, cdf), cdf[0]]).astype(np.float64)
            b_fin, b_neg = (int(b) for b in _hist_bins(ends, float(lo[idx]), float(hi[idx]), nbins))
            table[:] = b_fin
            if b_neg != b_fin:
                minus_inf[idx] = (b_fin, b_neg)
            e1 = e0 + 1.0
        tables[idx] = (e0, nb / (e1 - e0), cdf, table)
    data = volume.data if isinstance(volume, Volume) else volume
    fine = tr.eq_fine if tr.eq_fine is not None and tr.eq_fine[3] == data.name else None
    if fine is not None and TK.binned_dtype(data.dtype) is None:
        fine = None  # the types the vector binning loops do not take
    total = np.zeros((*g.group_shape, nbins), np.int64)
    # Groups counted from their fine histogram (a non-empty range), with a bit per knot
    # interval whose image spans a bin edge.
    bits: dict[tuple[int, ...], np.ndarray] = {}
    if fine is not None:
        # The fine histograms count every voxel whose knot interval is its fine bin and maps
        # inside one bin; a pass adds the rest (`equalized_corrections`).
        for idx in np.ndindex(*g.group_shape):
            if not fine[2][idx] > fine[1][idx]:
                continue
            table = tables[idx][3]
            ok = table >= 0
            # Float sums of counts are exact below 2**53.
            total[idx] += np.bincount(table[ok], weights=fine[0][idx][ok], minlength=nbins).astype(np.int64)
            packed = np.packbits(~ok, bitorder="little")
            bits[idx] = np.concatenate([packed, np.zeros(-packed.size % 4, np.uint8)]).view("<u4")

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        return partial(block, block_info[0]["array-location"])  # type: ignore[index]

    def partial(block: np.ndarray, loc: Any) -> np.ndarray:
        ranges = [range(*loc[a]) for a in g.group_axes]
        local = tuple(len(r) for r in ranges)
        out = np.zeros((*local, nbins), np.int64)
        for lidx in np.ndindex(*local):
            gidx = tuple(r[i] for r, i in zip(ranges, lidx, strict=True))
            sel: list[Any] = [slice(None)] * block.ndim
            for a, i in zip(g.group_axes, lidx, strict=True):
                sel[a] = i
            xs = np.asarray(block[tuple(sel)])
            xs = K.native(xs)  # the type the compiled loops take: float16 widens
            view = xs.T if (xs.flags.f_contiguous and not xs.flags.c_contiguous) else np.ascontiguousarray(xs)
            e0, scale, cdf, table = tables[gidx]
            if gidx in bits:
                assert fine is not None
                TK.equalized_corrections(
                    view.reshape(-1), e0, scale, cdf, table, bits[gidx], float(lo[gidx]), float(hi[gidx]),
                    nbins, float(fine[1][gidx]), float(fine[2][gidx]), out[lidx],
                )  # fmt: skip
            else:
                TK.equalized_histogram(
                    view.reshape(-1),
                    e0,
                    scale,
                    cdf,
                    table,
                    float(lo[gidx]),
                    float(hi[gidx]),
                    nbins,
                    out[lidx],
                )
            if gidx in minus_inf and xs.dtype.kind == "f":
                # The kernel counted -Inf with the group's other voxels.
                b_fin, b_neg = minus_inf[gidx]
                n_neg = np.count_nonzero(xs == -np.inf)
                out[lidx][b_fin] -= n_neg
                out[lidx][b_neg] += n_neg
        shape = tuple(block.shape[a] if a in g.group_axes else 1 for a in range(block.ndim))
        return out.reshape((*shape, nbins))

    now = blocks_now(data, partial)
    if now is not None:  # numpy input: summed as they come, without a graph
        starts = [np.cumsum((0, *c)) for c in data.chunks]
        for idx, part in zip(np.ndindex(*data.numblocks), now, strict=True):
            where = tuple(slice(int(starts[a][idx[a]]), int(starts[a][idx[a] + 1])) for a in g.group_axes)
            total[where] += part.reshape((*[part.shape[a] for a in g.group_axes], nbins))
        return total
    outer = [data.chunks[a] if a in g.group_axes else (1,) * len(data.chunks[a]) for a in range(data.ndim)]
    parts = da.map_blocks(
        run,
        data,
        chunks=(*outer, (nbins,)),
        dtype=np.int64,
        new_axis=[data.ndim],
        meta=np.empty((0,) * (data.ndim + 1), np.int64),
    ).compute()
    axes = tuple(a for a in range(data.ndim) if a not in g.group_axes)
    return total + parts.sum(axis=axes).reshape((*g.group_shape, nbins))


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
    percentiles are exact to within ``(max - min) / fine_nbins``); ``auto-gamma`` adds one
    pass for the mean rescaled value of each group (exact integer sums of the positions within
    256 bins: to within 2**-32, whatever the chunking).  With `mask` (a `volbin.masks.Mask`),
    the range, percentiles and equalisation measure only the voxels inside it.

    Raises
    ------
    VolbinDataError
        If a volume (or the stack) has no finite voxel (inside the mask), the mask is empty,
        or ``curve='clahe'`` would need more memory for one volume than `clahe_memory_limit`
        allows.
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
        fine_range = (np.where(empty, 0.0, dmin), np.where(empty, 0.0, dmax))
        nf = fine_nbins(grouping.n_groups, recipe.nbins)
        fine = group_histograms(volume, grouping, *fine_range, nf, mask=m)
    dtype_range = _dtype_range(volume) if recipe.rescale == "dtype" else None
    where = "" if mask is None else f" inside the {mask.describe()}"
    tr = build_transform(grouping, recipe, dmin, dmax, nonfinite, fine, dtype_range, where, warn, volume)
    if recipe.curve == "equalize" and m is None and fine is not None:
        tr = dataclasses.replace(tr, eq_fine=(fine, *fine_range, volume.data.name))
    return tr


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
    volume: Volume | None = None,
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
    with np.errstate(over="ignore"):
        wide = np.isinf(dmax - dmin)
    if wide.any():
        # Every rescale, curve and histogram divides by the span: an infinite one would make
        # the whole group one value (or NaN), so it is refused.
        i = int(np.flatnonzero(wide.ravel())[0])
        raise VolbinDataError(
            f"the values of {grouping.describe(i)}{where} run from {dmin.ravel()[i]:.6g} to "
            f"{dmax.ravel()[i]:.6g}, a span float64 cannot hold (max - min overflows): nothing "
            "can be rescaled or thresholded; clip or scale the data first."
        )
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
    if recipe.curve in ("clahe", "auto-gamma") and volume is None:
        raise ValueError(f"`curve={recipe.curve!r}` is measured on each volume; it has no pooled form.")
    if recipe.curve == "clahe":
        assert volume is not None
        _check_clahe_memory(volume)
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
        gain=10.0 if recipe.gain is None else float(recipe.gain),
        cutoff=0.5 if recipe.cutoff is None else float(recipe.cutoff),
        clip_limit=0.01 if recipe.clip_limit is None else float(recipe.clip_limit),
        kernel_size=_clahe_kernel(volume, recipe) if volume is not None and recipe.curve == "clahe" else None,
        spatial_axes=volume.spatial_axes if volume is not None else (0, 1, 2),
    )
    if recipe.curve == "auto-gamma":
        assert volume is not None
        means = _mean_rescaled(volume, tr)
        with np.errstate(divide="ignore", invalid="ignore"):
            gammas = np.where((means > 0) & (means < 1), np.log(0.5) / np.log(means), 1.0)
        tr = dataclasses.replace(tr, gammas=gammas, means=means)
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


def _mean_rescaled(volume: Volume, tr: Transform) -> np.ndarray:
    """Per-group mean of the linearly rescaled finite values, from exact integer sums."""
    nb = 256
    shape = tr.grouping.group_shape
    counts, means = group_histograms_with_offsets(
        volume, tr.grouping, np.zeros(shape), np.ones(shape), nb, pre=tr.apply_linear
    )
    n = counts.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (counts * means).sum(axis=-1) / np.maximum(n, 1), 0.5)


def _clahe_kernel(volume: Volume, recipe: Recipe) -> tuple[int, int, int]:
    """CLAHE region in voxels along x, y, z: given, from millimetres, or 1/8 of each size."""
    # Recipe validation makes both options 3-tuples.
    if isinstance(recipe.kernel_size, tuple):
        a, b, c = (int(k) for k in recipe.kernel_size)
        return a, b, c
    if isinstance(recipe.kernel_mm, tuple):
        a, b, c = (
            max(1, round(float(mm) / float(z))) for mm, z in zip(recipe.kernel_mm, volume.zooms, strict=True)
        )
        return a, b, c
    a, b, c = (max(s // 8, 1) for s in volume.spatial_shape)
    return a, b, c


def _check_clahe_memory(volume: Volume) -> None:
    n = math.prod(volume.spatial_shape)
    need = n * CLAHE_BYTES_PER_VOXEL
    limit = clahe_memory_limit()
    if need > limit:
        raise VolbinDataError(
            f"curve='clahe' holds one whole 3D volume in memory: a volume of shape "
            f"{volume.spatial_shape} needs about {need} bytes ({need / 2**30:.2f} GiB), above the "
            f"limit of {limit} bytes; raise it (CLI: --memory-limit; API: "
            f"dask.config.set({{{CLAHE_MEMORY_KEY!r}: ...}})) or crop / downsample the volume."
        )


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
    gain: float | None = ...,
    cutoff: float | None = ...,
    clip_limit: float | None = ...,
    kernel_size: int | tuple[int, int, int] | None = ...,
    kernel_mm: float | tuple[float, float, float] | None = ...,
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
    gain: float | None = ...,
    cutoff: float | None = ...,
    clip_limit: float | None = ...,
    kernel_size: int | tuple[int, int, int] | None = ...,
    kernel_mm: float | tuple[float, float, float] | None = ...,
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
    gain: float | None = ...,
    cutoff: float | None = ...,
    clip_limit: float | None = ...,
    kernel_size: int | tuple[int, int, int] | None = ...,
    kernel_mm: float | tuple[float, float, float] | None = ...,
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
    gain: float | None = None,
    cutoff: float | None = None,
    clip_limit: float | None = None,
    kernel_size: int | tuple[int, int, int] | None = None,
    kernel_mm: float | tuple[float, float, float] | None = None,
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
    curve : {'linear', 'gamma', 'log', 'equalize', 'auto-gamma', 'sigmoid', 'clahe'}
        Tone curve on the rescaled values r in [0, 1] (see Notes).  Options of other curves
        than the chosen one are refused.
    gamma : float
        Exponent of ``gamma``: ``r ** gamma``.
    log_gain : float
        Gain of ``log``: ``log1p(log_gain * r) / log1p(log_gain)``.
    gain, cutoff : float, optional
        Of ``sigmoid``: ``1 / (1 + exp(gain * (cutoff - r)))`` (default 10 and 0.5), equal to
        ``skimage.exposure.adjust_sigmoid(r, cutoff, gain)``.
    clip_limit : float, optional
        Of ``clahe``: clip limit in (0, 1] (default 0.01).
    kernel_size : int or (int, int, int), optional
        Of ``clahe``: contextual region in voxels along x, y, z (default 1/8 of each size).
    kernel_mm : float or (float, float, float), optional
        Of ``clahe``: contextual region in millimetres, divided by the voxel sizes and rounded
        (anisotropic voxels get regions of the same physical extent).
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
        If a volume has no finite voxel, or a volume too large for ``clahe`` (see
        `clahe_memory_limit`).
    ValueError
        A bad option value, or an option the chosen curve does not use.

    Notes
    -----
    Every curve but ``clahe`` is monotone non-decreasing and applied block by block, lazily;
    thresholds then map back to raw units through its inverse (`Transform.to_raw`).

    ``auto-gamma`` is ``r ** g`` with ``g = log(0.5) / log(mean r)`` per group: it maps each
    group's mean rescaled value to 0.5, like ImageMagick's ``-auto-gamma`` (``g = 1`` when
    the mean is 0 or 1, i.e. for constant groups).

    ``equalize`` maps a value to the fraction of the group's voxels below it, from the
    streamed fine histogram (``fine_nbins`` bins: 65536 for up to 128 groups), interpolated
    linearly between bin edges: the minimum maps to 0, so a zero background stays 0, and
    the maximum to 1.  scikit-image's ``equalize_hist`` instead maps each bin centre to the
    fraction of voxels in that bin or below, so a background spike becomes its own mass.
    Away from such a spike the two differ by at most the mass of one fine bin (within 1e-4
    of ``equalize_hist(r, nbins=65536)`` on MRI-sized volumes).

    ``clahe`` runs ``skimage.exposure.equalize_adapthist`` (256 grey-level bins) on each
    linearly rescaled 3D volume as a whole, never block by block (separately equalised
    blocks would show seams at their borders): it holds one volume in memory, about
    `CLAHE_BYTES_PER_VOXEL` bytes per voxel, and refuses a volume above
    `clahe_memory_limit`.  Its output is rescaled to [0, 1] per volume, as scikit-image
    does.  CLAHE is not monotone, so thresholds on its output exist in rescaled units only:
    ``units='raw'`` is refused, `Transform.to_raw` raises, and so do `volbin.threshold` and
    `volbin.binarize` with ``curve='clahe'``; threshold the rescaled output instead,
    ``volbin.binarize(volbin.rescale(x, curve='clahe'), 'otsu', rescale='none')``, whose
    thresholds are in rescaled units (scikit-image's on the CLAHE volume).

    References
    ----------
    .. [1] K. Zuiderveld, "Contrast Limited Adaptive Histogram Equalization", Graphics Gems
       IV, 474-485, 1994.
    .. [2] ImageMagick, ``-auto-gamma``: https://imagemagick.org/script/command-line-options.php

    Examples
    --------
    >>> import numpy as np, volbin
    >>> x = np.arange(24, dtype=float).reshape(2, 3, 4)
    >>> r = volbin.rescale(x)
    >>> float(r.min()), float(r.max()), r.dtype
    (0.0, 1.0, dtype('float32'))
    >>> g = volbin.rescale(x, curve="auto-gamma")
    >>> round(float(g.mean()), 2) == round(float(np.mean(r ** (np.log(0.5) / np.log(r.mean())))), 2)
    True
    """
    recipe = Recipe(
        rescale=method,
        percentiles=percentiles,
        value_range=value_range,
        curve=curve,
        gamma=gamma,
        log_gain=log_gain,
        gain=gain,
        cutoff=cutoff,
        clip_limit=clip_limit,
        kernel_size=kernel_size,
        kernel_mm=kernel_mm,
        scope=scope,
        axis=axis,
    )
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    grouping = vol.grouping(recipe.scope, recipe.axis)
    tr = fit_transform(vol, grouping, recipe)
    out = vol.derive(apply_transform(vol.data, tr), {"step": "rescale", **tr.record()})
    return like_input(out, kind)


def apply_transform(data: da.Array, tr: Transform) -> da.Array:
    """Lazy float32 rescaled data (``clahe``: one task per 3D volume, then the input's chunks)."""
    if tr.curve == "clahe":
        return _clahe_graph(data, tr)

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        return tr.apply(block, block_info[0]["array-location"])  # type: ignore[index]

    return da.map_blocks(run, data, dtype=np.float32, meta=np.empty((0,) * data.ndim, np.float32))


def _clahe_graph(data: da.Array, tr: Transform) -> da.Array:
    """CLAHE of each whole 3D volume: the volume is one block, the result is rechunked back."""
    spatial = tr.spatial_axes
    whole = tuple(data.shape[a] if a in spatial else 1 for a in range(data.ndim))
    vols = data.rechunk(whole)

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        from skimage.exposure import equalize_adapthist

        r = tr.apply_linear(block, block_info[0]["array-location"])  # type: ignore[index]
        nan = np.isnan(r)
        shape = r.shape
        # The volume's x, y, z axes in that order, as the kernel size is given.
        r3 = np.transpose(r, (*spatial, *[a for a in range(r.ndim) if a not in spatial]))
        r3 = r3.reshape(r3.shape[:3])
        r3 = np.where(np.isnan(r3), 0.0, r3)
        if r3.max() > r3.min():
            out3 = equalize_adapthist(
                r3, kernel_size=tr.kernel_size, clip_limit=tr.clip_limit, nbins=CLAHE_NBINS
            )
        else:  # a constant volume stays what the linear rescale made it
            out3 = r3
        out = np.empty(shape, np.float32)
        view = np.transpose(out, (*spatial, *[a for a in range(r.ndim) if a not in spatial]))
        view.reshape(view.shape[:3])[...] = out3
        out[nan] = np.nan
        return out

    out = da.map_blocks(run, vols, dtype=np.float32, meta=np.empty((0,) * data.ndim, np.float32))
    return out.rechunk(data.chunks)
