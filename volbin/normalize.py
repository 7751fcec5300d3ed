"""Intensity normalisation of MRI: z-score, histogram matching, Nyul, WhiteStripe, N4.

`fit_normalize` measures what a method needs from exact streamed statistics inside a mask
(or the non-zero voxels), per 3D volume of a 4D stack or over the whole stack, and returns
a `Normalization`: the learnt parameters as a JSON-able record and a lazy float32 map of the
volume.  `normalize` does both.  `fit_nyul` learns Nyul-Udupa landmarks from a cohort, one
volume at a time.  Every method but N4 is applied block by block; N4 corrects each 3D
volume as a whole (one volume in memory per running task).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from ._moments import group_moments, per_group
from .errors import VolbinDataError, VolbinError
from .histogram import (
    fine_nbins,
    group_histograms,
    group_histograms_with_offsets,
    group_range,
    percentiles_from_hist,
)
from .recipe import NORMALIZE_METHODS, NORMALIZE_OPTIONS, normalize_options, nyul_landmarks
from .volume import Grouping, Volume, as_volume, like_input

__all__ = [
    "NORMALIZE_METHODS",
    "Normalization",
    "NyulLandmarks",
    "fit_normalize",
    "fit_nyul",
    "normalize",
]

#: Default Nyul landmarks: the 1st and 99th percentiles and the deciles between.
NYUL_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)

#: Bins of the WhiteStripe histogram in which the white-matter peak is looked for.
WHITESTRIPE_BINS = 2048


# --- masks and statistics ----------------------------------------------------------------------


def _mask_data(vol: Volume, mask: Any) -> da.Array:
    """The boolean mask as a dask array with the chunks of `vol` (non-zero voxels if None)."""
    data = vol.data
    if mask is None:
        return data != 0
    m = mask.data if isinstance(mask, Volume) else mask
    # numpy masks are wrapped without a copy or a hash of their data.
    m = m if isinstance(m, da.Array) else as_volume(np.asarray(m))[0].data
    if m.ndim == 3 and vol.ndim == 4:
        if m.shape != vol.spatial_shape:
            raise ValueError(
                f"`mask` must have the volume's spatial shape {vol.spatial_shape} or its shape "
                f"{vol.shape}; got {m.shape}."
            )
        m = da.broadcast_to(da.expand_dims(m, vol.volume_axis), vol.shape)
    elif m.shape != vol.shape:
        raise ValueError(f"`mask` must have the volume's shape {vol.shape}; got {m.shape}.")
    if m.dtype != bool:
        m = m > 0
    return m.rechunk(data.chunks)


def _masked(vol: Volume, mask: Any) -> Volume:
    """`vol` with the voxels outside the mask set to NaN (excluded from every statistic)."""
    data = vol.data
    ftype = (
        np.float32
        if data.dtype in (np.float32, np.float16, np.int8, np.uint8, np.int16, np.uint16)
        else np.float64
    )
    if data.dtype == bool:
        ftype = np.float32
    m = _mask_data(vol, mask)
    masked = da.where(m, data.astype(ftype), ftype(np.nan))
    return dataclasses.replace(vol, data=masked, steps=())


def _range(masked: Volume, grouping: Grouping, what: str = "the mask") -> tuple[np.ndarray, np.ndarray]:
    lo, hi, _ = group_range(masked, grouping)
    empty = ~(hi >= lo)
    if empty.any():
        where = grouping.describe(int(np.flatnonzero(empty.ravel())[0]))
        raise VolbinDataError(
            f"no finite voxel inside {what} in {where}: nothing to normalise; check the mask "
            "(by default the non-zero voxels)."
        )
    return lo, hi


def _fine(masked: Volume, grouping: Grouping, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, int]:
    nb = fine_nbins(grouping.n_groups)
    return group_histograms(masked, grouping, lo, hi, nb), nb


def _grouping(vol: Volume, scope: str, method: str) -> Grouping:
    allowed = ("volume",) if method == "n4" else ("stack", "volume")
    if scope not in allowed:
        raise ValueError(f"`scope` must be one of {', '.join(allowed)} for method={method!r}; got {scope!r}.")
    return vol.grouping(scope)


def _as_list(a: np.ndarray) -> Any:
    return np.asarray(a, dtype=np.float64).tolist()


def _bin_index(x: np.ndarray, lo: float, hi: float, nbins: int) -> np.ndarray:
    """The bin of each value among `nbins` equal bins over [lo, hi], as the histogram kernels
    (and ``np.histogram``) assign it; values outside go to the edge bins."""
    if not hi > lo:
        return np.zeros(x.shape, np.int64)
    step = (hi - lo) / nbins
    last = float(nbins - 1)
    with np.errstate(invalid="ignore"):
        k = np.floor(np.clip((x - lo) * (nbins / (hi - lo)), 0.0, last))
        k = k - ((x < k * step + lo) & (k > 0)) + ((x >= (k + 1) * step + lo) & (k < last))
    return np.where(np.isfinite(x), k, 0).astype(np.int64)


# --- the result --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalization:
    """What `fit_normalize` learnt, and the map it defines.

    Attributes
    ----------
    method : str
    grouping : Grouping
        Groups (one per 3D volume, or the stack) with their own parameters.
    params : dict
        The learnt parameters, JSON-able: per-group lists in C order over
        ``grouping.group_shape`` (see `record`).
    """

    method: str
    grouping: Grouping
    params: dict[str, Any]
    block_fn: Callable[[np.ndarray, Sequence[tuple[int, int]]], np.ndarray] | None = field(
        default=None, repr=False
    )
    graph_fn: Callable[[da.Array], da.Array] | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        """The sidecar record: method, scope, groups and learnt parameters."""
        return {
            "step": "normalize",
            "method": self.method,
            "scope": self.grouping.scope,
            "groups": self.grouping.labels(),
            **self.params,
        }

    def apply_data(self, data: da.Array) -> da.Array:
        """Lazy float32 normalised `data` (of the shape the parameters were fitted on)."""
        if tuple(data.shape) != tuple(self.grouping.shape):
            raise ValueError(
                f"this normalisation was fitted on shape {self.grouping.shape}; "
                f"got data of shape {data.shape}."
            )
        if self.graph_fn is not None:
            return self.graph_fn(data)
        fn = self.block_fn
        assert fn is not None

        def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
            return fn(np.asarray(block), block_info[0]["array-location"])  # type: ignore[index]

        return da.map_blocks(run, data, dtype=np.float32, meta=np.empty((0,) * data.ndim, np.float32))

    def apply(self, volume: Any, *, volume_axis: int | None = None) -> Any:
        """Normalise `volume` (numpy, dask or Volume; same kind out, float32)."""
        vol, kind = as_volume(volume, volume_axis=volume_axis)
        return like_input(vol.derive(self.apply_data(vol.data), self.record()), kind)


def _affine_fn(grouping: Grouping, mean: np.ndarray, std: np.ndarray) -> Callable[..., np.ndarray]:
    def fn(block: np.ndarray, location: Sequence[tuple[int, int]]) -> np.ndarray:
        m = grouping.block_values(mean, location)
        s = grouping.block_values(std, location)
        return ((block.astype(np.float64) - m) / s).astype(np.float32)

    return fn


def _check_spread(grouping: Grouping, std: np.ndarray, what: str) -> None:
    bad = ~(std > 0)
    if bad.any():
        where = grouping.describe(int(np.flatnonzero(bad.ravel())[0]))
        raise VolbinDataError(f"{what} of {where} is constant (standard deviation 0): cannot normalise it.")


# --- z-score ----------------------------------------------------------------------------------


def _fit_zscore(vol: Volume, grouping: Grouping, mask: Any) -> Normalization:
    masked = _masked(vol, mask)
    lo, hi = _range(masked, grouping)
    m = group_moments(masked.data, grouping, lo, hi)
    _check_spread(grouping, m.std, "the masked intensity")
    params = {"mean": _as_list(m.mean), "std": _as_list(m.std), "n_voxels": m.count.tolist()}
    return Normalization("zscore", grouping, params, _affine_fn(grouping, m.mean, m.std))


# --- histogram matching -----------------------------------------------------------------------


def _load(item: Any, volume_axis: int | None = None) -> Volume:
    if isinstance(item, (str, os.PathLike)):
        from .io import load

        return load(item, volume_axis=volume_axis)
    return as_volume(item, volume_axis=volume_axis)[0]


def _fit_match(
    vol: Volume, grouping: Grouping, mask: Any, reference: Any, reference_mask: Any
) -> Normalization:
    if reference is None:
        raise ValueError("method='match' needs `reference`: the volume whose histogram to match.")
    ref = _masked(_load(reference), reference_mask)
    rg = ref.grouping("stack")
    rlo, rhi = _range(ref, rg, "the reference mask")
    nb = fine_nbins(max(grouping.n_groups, 1))
    rcounts, rmeans = group_histograms_with_offsets(ref, rg, rlo, rhi, nb)
    rc = rcounts.reshape(nb)
    full = rc > 0
    # Template knots as scikit-image's: (fraction of voxels at or below a value, the value),
    # one per non-empty fine bin at the mean of its values (exact for a bin of equal values).
    t_q = np.cumsum(rc)[full] / rc.sum()
    t_v = rmeans.reshape(nb)[full]

    masked = _masked(vol, mask)
    lo, hi = _range(masked, grouping)
    counts, means = group_histograms_with_offsets(masked, grouping, lo, hi, nb)
    knots: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    for idx in np.ndindex(*grouping.group_shape):
        c = counts[idx]
        full = c > 0
        # Source knots: (mean value of a fine bin, fraction of voxels in it or below).
        knots[idx] = (means[idx][full], np.cumsum(c)[full] / c.sum())

    def fn(block: np.ndarray, location: Sequence[tuple[int, int]]) -> np.ndarray:
        def one(x: np.ndarray, gidx: tuple[int, ...]) -> np.ndarray:
            s_v, s_q = knots[gidx]
            return np.interp(np.interp(x.astype(np.float64), s_v, s_q), t_q, t_v)

        return per_group(block, location, grouping, one)

    params = {
        "nbins": nb,
        "source_range": [_as_list(lo), _as_list(hi)],
        "reference_range": [float(rlo), float(rhi)],
        "reference_voxels": int(rc.sum()),
        "reference": os.fspath(reference) if isinstance(reference, (str, os.PathLike)) else None,
    }
    return Normalization("match", grouping, params, fn)


# --- Nyul -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NyulLandmarks:
    """A Nyul-Udupa standard scale learnt by `fit_nyul`.

    Attributes
    ----------
    percentiles : tuple of float
        The landmark percentiles (the first and last are the ends of the mapped range).
    standard_scale : tuple of float
        The mean over the cohort of each volume's landmarks mapped linearly so that the
        first and last land on `standard_range`.
    standard_range : (float, float)
    n_volumes : int
        Number of 3D volumes learnt from.
    """

    percentiles: tuple[float, ...]
    standard_scale: tuple[float, ...]
    standard_range: tuple[float, float] = (0.0, 100.0)
    n_volumes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "percentiles": list(self.percentiles),
            "standard_scale": list(self.standard_scale),
            "standard_range": list(self.standard_range),
            "n_volumes": self.n_volumes,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NyulLandmarks:
        """From the record `to_dict` makes (`volbin.recipe.nyul_landmarks` checks it)."""
        rec = nyul_landmarks(d)
        return cls(
            tuple(rec["percentiles"]),
            tuple(rec["standard_scale"]),
            (rec["standard_range"][0], rec["standard_range"][1]),
            rec["n_volumes"],
        )

    @classmethod
    def from_json(cls, text: str) -> NyulLandmarks:
        return cls.from_dict(json.loads(text))


def _landmarks(
    vol: Volume, grouping: Grouping, mask: Any, percentiles: Sequence[float]
) -> tuple[np.ndarray, float]:
    """Per-group landmark intensities (group_shape + (P,)) and the widest fine-bin width."""
    masked = _masked(vol, mask)
    lo, hi = _range(masked, grouping)
    counts, nb = _fine(masked, grouping, lo, hi)
    return percentiles_from_hist(counts, lo, hi, percentiles), float(np.max(hi - lo)) / nb


def fit_nyul(
    volumes: Iterable[Any],
    masks: Iterable[Any] | None = None,
    *,
    percentiles: Sequence[float] = NYUL_PERCENTILES,
    standard_range: tuple[float, float] = (0.0, 100.0),
    volume_axis: int | None = None,
) -> NyulLandmarks:
    """Learn a Nyul-Udupa standard scale from a cohort, one volume at a time.

    Parameters
    ----------
    volumes : iterable of ndarray, dask array, Volume or path
        The cohort; each item is read lazily (paths with `volbin.io.load`) and each 3D volume
        of a 4D item counts as one member.  Memory follows the chunk size, not the cohort.
    masks : iterable, optional
        One mask per item (of its shape or its spatial shape); by default the non-zero voxels.
    percentiles : sequence of float
        Increasing landmark percentiles (default 1, 10, 20, ..., 90, 99).
    standard_range : (float, float)
        Where the first and last landmarks are mapped.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask items.

    Returns
    -------
    NyulLandmarks

    Raises
    ------
    ValueError
        Bad `percentiles` or `standard_range`, or no volume.
    VolbinDataError
        A volume without a finite voxel in its mask, or with all landmarks equal.

    Notes
    -----
    Each volume's landmarks are the percentiles of its masked voxels, from a fine streamed
    histogram (within ``(max - min) / 65536`` of ``np.percentile``).  They are mapped
    linearly so that the first and last land on `standard_range`, and averaged over the
    cohort (the training of [1]_ as in [2]_).

    References
    ----------
    .. [1] L. G. Nyul, J. K. Udupa, X. Zhang, "New variants of a method of MRI scale
       standardization", IEEE Trans. Med. Imaging 19(2):143-150, 2000.
    .. [2] M. Shah et al., "Evaluating intensity normalization on MRIs of human brain with
       multiple sclerosis", Medical Image Analysis 15(2):267-282, 2011.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> cohort = [rng.gamma(2.0, size=(8, 8, 8)) * s for s in (1.0, 3.0)]
    >>> lm = fit_nyul(cohort)
    >>> lm.standard_scale[0], lm.standard_scale[-1], lm.n_volumes
    (0.0, 100.0, 2)
    """
    ps, (s1, s2) = _nyul_check(percentiles, standard_range)
    mask_iter = iter(masks) if masks is not None else None
    rows: list[np.ndarray] = []
    for i, item in enumerate(volumes):
        mask = next(mask_iter, None) if mask_iter is not None else None
        if mask_iter is not None and mask is None:
            raise ValueError("`masks` must give one mask per volume; it ran out first.")
        rows.extend(
            nyul_scales(item, mask, percentiles=ps, standard_range=(s1, s2), volume_axis=volume_axis, index=i)
        )
    return nyul_from_scales(rows, ps, (s1, s2))


def _nyul_check(
    percentiles: Sequence[float], standard_range: Any
) -> tuple[tuple[float, ...], tuple[float, float]]:
    """Percentiles and standard range, checked as a landmarks record is."""
    try:
        n = len(percentiles)
    except TypeError:
        n = 0
    rec = nyul_landmarks(
        {"percentiles": percentiles, "standard_scale": [0.0] * n, "standard_range": standard_range}
    )
    return tuple(rec["percentiles"]), (rec["standard_range"][0], rec["standard_range"][1])


def nyul_scales(
    item: Any,
    mask: Any = None,
    *,
    percentiles: Sequence[float] = NYUL_PERCENTILES,
    standard_range: tuple[float, float] = (0.0, 100.0),
    volume_axis: int | None = None,
    index: int = 0,
) -> list[np.ndarray]:
    """One cohort member's part of `fit_nyul`: the landmarks of each of its 3D volumes,
    mapped linearly so that the first and last land on `standard_range`.

    `nyul_from_scales` averages them; ``fit_nyul(items)`` is
    ``nyul_from_scales([row for i, x in enumerate(items) for row in nyul_scales(x, index=i)])``
    (what a batch runs as one task per file).
    """
    ps, (s1, s2) = _nyul_check(percentiles, standard_range)
    vol = _load(item, volume_axis)
    g = vol.grouping("volume")
    lm, _ = _landmarks(vol, g, mask, ps)
    rows = []
    for idx in np.ndindex(*g.group_shape):
        lmi = lm[idx]
        span = lmi[-1] - lmi[0]
        if not span > 0:
            raise VolbinDataError(
                f"all Nyul landmarks of {g.describe(idx)} of cohort item {index} are equal "
                f"({lmi[0]:g}): the masked intensities are (nearly) constant."
            )
        rows.append(s1 + (lmi - lmi[0]) / span * (s2 - s1))
    return rows


def nyul_from_scales(
    rows: Sequence[np.ndarray], percentiles: Sequence[float], standard_range: tuple[float, float]
) -> NyulLandmarks:
    """The standard scale: the mean of the mapped landmarks `rows` (`nyul_scales`), in order."""
    ps, (s1, s2) = _nyul_check(percentiles, standard_range)
    if not rows:
        raise ValueError("`volumes` is empty: Nyul landmarks need at least one volume.")
    total = np.zeros(len(ps))
    for row in rows:
        total += np.asarray(row, dtype=np.float64)
    scale = total / len(rows)
    scale[0], scale[-1] = s1, s2  # exact ends, whatever the rounding of the mean
    return NyulLandmarks(ps, tuple(float(v) for v in scale), (s1, s2), len(rows))


def _fit_nyul_apply(vol: Volume, grouping: Grouping, mask: Any, landmarks: Any) -> Normalization:
    if landmarks is None:
        raise ValueError("method='nyul' needs `landmarks` (from `fit_nyul`, or its JSON).")
    landmarks = NyulLandmarks.from_dict(landmarks)  # checked by normalize_options
    lm, width = _landmarks(vol, grouping, mask, landmarks.percentiles)
    std = np.asarray(landmarks.standard_scale)
    for idx in np.ndindex(*grouping.group_shape):
        if not lm[idx][-1] > lm[idx][0]:
            raise VolbinDataError(
                f"all Nyul landmarks of {grouping.describe(idx)} are equal ({lm[idx][0]:g}): "
                "the masked intensities are (nearly) constant."
            )

    def fn(block: np.ndarray, location: Sequence[tuple[int, int]]) -> np.ndarray:
        def one(x: np.ndarray, gidx: tuple[int, ...]) -> np.ndarray:
            return _piecewise(x.astype(np.float64), lm[gidx], std)

        return per_group(block, location, grouping, one)

    params = {"nyul": landmarks.to_dict(), "landmarks": _as_list(lm), "fine_bin_width": width}
    return Normalization("nyul", grouping, params, fn)


def _piecewise(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear map through (xp, fp), extended linearly by its end segments."""
    keep = np.concatenate([[True], np.diff(xp) > 0])  # tied landmarks: keep the first
    xp, fp = xp[keep], fp[keep]
    y = np.interp(x, xp, fp)
    if len(xp) >= 2:
        lo_slope = (fp[1] - fp[0]) / (xp[1] - xp[0])
        hi_slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        y = np.where(x < xp[0], fp[0] + (x - xp[0]) * lo_slope, y)
        y = np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * hi_slope, y)
    return y


# --- WhiteStripe ------------------------------------------------------------------------------


def _smoothed_peak(
    counts: np.ndarray, lo: float, hi: float, contrast: str, bandwidth: float, peak_fraction: float
) -> tuple[float, int]:
    """The white-matter mode (a bin centre) of a histogram over [lo, hi] and its bin."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    nb = counts.shape[-1]
    width = (hi - lo) / nb
    h = gaussian_filter1d(counts.astype(np.float64), bandwidth / width, mode="constant")
    if contrast == "t2":
        k = int(np.argmax(h))
    else:
        peaks, _ = find_peaks(np.concatenate([[0.0], h, [0.0]]))
        peaks = peaks - 1
        big = peaks[h[peaks] >= peak_fraction * h.max()]
        k = int(big[-1]) if len(big) else int(np.argmax(h))
    edges = np.linspace(lo, hi, nb + 1)
    return float((edges[k] + edges[k + 1]) / 2), k


def _fit_whitestripe(
    vol: Volume,
    grouping: Grouping,
    mask: Any,
    contrast: str,
    tau: float,
    bandwidth: float | None,
    peak_fraction: float,
) -> Normalization:
    masked = _masked(vol, mask)
    lo, hi = _range(masked, grouping)
    fine, nb = _fine(masked, grouping, lo, hi)
    coarse_nb = min(WHITESTRIPE_BINS, nb)
    shape = grouping.group_shape
    mode, mode_q, bw = np.empty(shape), np.empty(shape), np.empty(shape)
    qs = np.empty((*shape, 2))
    for idx in np.ndindex(*shape):
        f = fine[idx]
        a, b = float(lo[idx]), float(hi[idx])
        if not b > a:
            raise VolbinDataError(f"the masked intensity of {grouping.describe(idx)} is constant ({a:g}).")
        # Equal bins over the same range, 2048 of them: the counts np.histogram would give.
        coarse = f.reshape(coarse_nb, -1).sum(axis=1)
        bw[idx] = (b - a) / 80 if bandwidth is None else float(bandwidth)
        mode[idx], k = _smoothed_peak(coarse, a, b, contrast, float(bw[idx]), peak_fraction)
        # The mode is the centre of coarse bin k, an edge of the fine bins: the fraction of
        # voxels below it is a sum of fine counts.
        ratio = nb // coarse_nb
        below = f[: k * ratio + ratio // 2].sum() if ratio > 1 else f[:k].sum() + f[k] / 2
        mode_q[idx] = below / f.sum()
        qs[idx] = [max(float(mode_q[idx]) - tau, 0.0), min(float(mode_q[idx]) + tau, 1.0)]
    bounds = np.empty((*shape, 2))
    for idx in np.ndindex(*shape):
        q100 = [100 * float(q) for q in qs[idx]]
        bounds[idx] = percentiles_from_hist(fine[idx][None], lo[idx][None], hi[idx][None], q100)[0]
    lower, upper = bounds[..., 0], bounds[..., 1]
    stripe_mask = _mask_data(vol, mask)
    lo_b = grouping.expand(lower)
    hi_b = grouping.expand(upper)
    data = vol.data
    stripe = da.where(stripe_mask & (data > lo_b) & (data < hi_b), data.astype(np.float64), np.nan)
    m = group_moments(stripe, grouping, lower, upper)
    if (m.count < 2).any():
        where = grouping.describe(int(np.flatnonzero((m.count < 2).ravel())[0]))
        raise VolbinDataError(f"the white stripe of {where} holds fewer than 2 voxels: widen `tau`.")
    _check_spread(grouping, m.std, "the white stripe")
    params = {
        "contrast": contrast,
        "tau": float(tau),
        "bandwidth": _as_list(bw),
        "peak_fraction": float(peak_fraction),
        "nbins": coarse_nb,
        "mode": _as_list(mode),
        "mode_quantile": _as_list(mode_q),
        "stripe_quantiles": _as_list(qs),
        "stripe": _as_list(bounds),
        "n_stripe": m.count.tolist(),
        "mean": _as_list(m.mean),
        "std": _as_list(m.std),
    }
    return Normalization("whitestripe", grouping, params, _affine_fn(grouping, m.mean, m.std))


# --- N4 ---------------------------------------------------------------------------------------


def _sitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise VolbinError(
            "method='n4' needs SimpleITK, which is not installed: pip install 'volbin[itk]' "
            "(or pip install SimpleITK)."
        ) from None
    return sitk


def _n4_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """The N4 settings of resolved options (`volbin.recipe.normalize_options`)."""
    out = {name: opts[name] for name in NORMALIZE_OPTIONS["n4"]}
    out["n_iterations"] = list(out["n_iterations"])
    return out


def n4_correct(
    volume: np.ndarray, mask: np.ndarray, zooms: Sequence[float], settings: dict[str, Any]
) -> np.ndarray:
    """N4 on one in-memory (X, Y, Z) volume: fit on a shrunk copy, correct at full resolution.

    ``corrected = volume / exp(log_field)`` with the log field of
    ``N4BiasFieldCorrectionImageFilter.GetLogBiasFieldAsImage`` on the full-resolution grid.
    """
    sitk = _sitk()
    # SimpleITK's arrays are indexed (z, y, x): pass the transpose.
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.T, dtype=np.float32))
    img.SetSpacing([float(z) for z in zooms])
    msk = sitk.GetImageFromArray(np.ascontiguousarray(mask.T, dtype=np.uint8))
    msk.CopyInformation(img)
    f = settings["shrink_factor"]
    small = sitk.Shrink(img, [f] * 3)
    small_mask = sitk.Shrink(msk, [f] * 3)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(settings["n_iterations"]))
    n4.SetConvergenceThreshold(settings["convergence_threshold"])
    n4.SetNumberOfControlPoints([settings["n_control_points"]] * 3)
    n4.SetSplineOrder(settings["spline_order"])
    n4.SetBiasFieldFullWidthAtHalfMaximum(settings["bias_field_fwhm"])
    n4.SetWienerFilterNoise(settings["wiener_noise"])
    n4.SetNumberOfHistogramBins(settings["n_histogram_bins"])
    n4.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img)).T
    return (volume.astype(np.float32) / np.exp(log_field)).astype(np.float32)


def _fit_n4(vol: Volume, grouping: Grouping, mask: Any, opts: dict[str, Any]) -> Normalization:
    _sitk()
    settings = _n4_settings(opts)
    small = [s // settings["shrink_factor"] for s in vol.spatial_shape]
    if min(small) < settings["spline_order"] + 1:
        raise ValueError(
            f"`shrink_factor` {settings['shrink_factor']} leaves a shrunk volume of {small} voxels, "
            f"too small for splines of order {settings['spline_order']}; use a smaller factor."
        )
    spatial = vol.spatial_axes
    zooms = vol.zooms
    explicit = mask is not None
    mdata = _mask_data(vol, mask) if explicit else None
    order = (*spatial, *[a for a in range(vol.ndim) if a not in spatial])
    inverse = tuple(int(i) for i in np.argsort(order))

    def graph(data: da.Array) -> da.Array:
        whole = tuple(data.shape[a] if a in spatial else 1 for a in range(data.ndim))

        def run(block: np.ndarray, *mblock: np.ndarray) -> np.ndarray:
            x = np.transpose(block, order)
            x3 = x.reshape(x.shape[:3])
            if mblock:
                m3 = np.transpose(mblock[0], order).reshape(x.shape[:3])
            else:
                m3 = (x3 != 0) & np.isfinite(x3)
            finite = np.isfinite(x3)
            m3 = m3 & finite
            if not m3.any():
                raise VolbinDataError("N4 needs a non-empty mask in every volume; one volume's is empty.")
            out3 = n4_correct(np.where(finite, x3, 0.0), m3, zooms, settings)
            out3[~finite] = np.nan
            return np.transpose(out3.reshape(x.shape), inverse)

        args = [data.rechunk(whole)]
        if mdata is not None:
            args.append(mdata.rechunk(whole))
        out = da.map_blocks(run, *args, dtype=np.float32, meta=np.empty((0,) * data.ndim, np.float32))
        return out.rechunk(data.chunks)

    sitk = _sitk()
    params = {
        "n4": settings,
        "mask": "given" if explicit else "non-zero voxels",
        "simpleitk": str(sitk.Version_VersionString()),
    }
    return Normalization("n4", grouping, params, graph_fn=graph)


# --- entry points -----------------------------------------------------------------------------


def fit_normalize(
    volume: Any,
    method: str,
    *,
    mask: Any = None,
    scope: str = "volume",
    volume_axis: int | None = None,
    **options: Any,
) -> Normalization:
    """Learn the parameters of an intensity normalisation (see `normalize`)."""
    if method not in NORMALIZE_METHODS:
        raise ValueError(f"`method` must be one of {', '.join(NORMALIZE_METHODS)}; got {method!r}.")
    opts = normalize_options(method, options)
    vol, _ = as_volume(volume, volume_axis=volume_axis)
    grouping = _grouping(vol, scope, method)
    if method == "zscore":
        return _fit_zscore(vol, grouping, mask)
    if method == "match":
        return _fit_match(vol, grouping, mask, opts["reference"], opts["reference_mask"])
    if method == "nyul":
        return _fit_nyul_apply(vol, grouping, mask, opts["landmarks"])
    if method == "whitestripe":
        return _fit_whitestripe(
            vol, grouping, mask, opts["contrast"], opts["tau"], opts["bandwidth"], opts["peak_fraction"]
        )
    return _fit_n4(vol, grouping, mask, opts)


def normalize(
    volume: Any,
    method: str,
    *,
    mask: Any = None,
    scope: str = "volume",
    volume_axis: int | None = None,
    **options: Any,
) -> Any:
    """Normalise MRI intensities, with statistics taken inside a mask.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    method : {'zscore', 'match', 'nyul', 'whitestripe', 'n4'}
        ``zscore``: ``(x - mean) / std`` of the masked voxels.  ``match``: histogram
        matching to `reference`.  ``nyul``: Nyul-Udupa piecewise-linear standardisation to
        `landmarks` (from `fit_nyul`).  ``whitestripe``: z-score by the mean and standard
        deviation of the white-matter stripe [3]_.  ``n4``: N4 bias field correction [4]_.
    mask : array, dask array or Volume, optional
        Where statistics are taken: of the volume's shape, or its spatial shape for a 4D
        stack (the same mask for every volume).  By default the non-zero voxels.  The map
        learnt is applied to every voxel.
    scope : {'volume', 'stack'}
        One set of parameters per 3D volume (default) or for the whole stack; N4 corrects
        each volume.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input.
    **options
        Of ``match``: ``reference`` (array, Volume or path; required), ``reference_mask``
        (default its non-zero voxels).  Of ``nyul``: ``landmarks`` (`NyulLandmarks`, its
        dict or JSON; required).  Of ``whitestripe``: ``contrast`` ('t1' or 't2'), ``tau``
        (half-width of the stripe in quantiles, 0.05), ``bandwidth`` (of the Gaussian that
        smooths the histogram, intensity units; default range / 80), ``peak_fraction``
        (0.2).  Of ``n4``: ``shrink_factor`` (4), ``n_iterations`` per fitting level
        ((50, 50, 50, 50)), ``convergence_threshold`` (0.001), ``n_control_points`` (4),
        ``spline_order`` (3), ``bias_field_fwhm`` (0.15), ``wiener_noise`` (0.01),
        ``n_histogram_bins`` (200).  An option of another method is refused.

    Returns
    -------
    normalized : same kind as `volume`, float32
        Lazy for dask and Volume input; a Volume's `steps` get the learnt parameters
        (`Normalization.record`).  NaN stays NaN.

    Raises
    ------
    ValueError
        An unknown method, an option of another method, or a bad option value.
    VolbinDataError
        No finite voxel inside a mask, constant masked intensities, an empty white stripe.
    VolbinError
        ``n4`` without SimpleITK installed.

    Notes
    -----
    Statistics are exact and chunk-invariant: means and standard deviations from fixed-point
    integer sums (`volbin._moments`), percentiles and histograms from fine streamed
    histograms (65536 bins for up to 128 groups; percentiles within a fine bin width of
    ``np.percentile``).  Any chunking gives the same bytes.

    ``match`` maps a value through the fraction of the masked source voxels in its fine bin
    or below, then through the reference's quantile function, with knots at the mean value
    of each non-empty fine bin of the reference: scikit-image's ``match_histograms`` with
    fine bins in place of unique values (equal to it where each bin holds one distinct
    value, as integer data; within about a fine bin of the reference otherwise).  Values
    outside the masked range map to the ends of the reference's range.

    ``nyul`` maps the volume's own landmarks (its masked percentiles) onto the standard
    scale, piecewise linearly, extended by the end segments beyond the first and last.

    ``whitestripe``: a 2048-bin histogram of the masked voxels is smoothed by a Gaussian of
    `bandwidth`; the white-matter mode is, for T1, the brightest peak at least
    `peak_fraction` as high as the highest (the tail of fat and vessels makes smaller
    bumps) and, for T2, the highest peak.  With q the fraction of masked voxels below the
    mode, the stripe is the masked voxels strictly between the quantiles q - `tau` and
    q + `tau`, and the volume is z-scored by the stripe's mean and standard deviation.

    ``n4`` runs SimpleITK's ``N4BiasFieldCorrectionImageFilter`` on a copy shrunk by
    `shrink_factor` and divides the full-resolution volume by the exponential of the log
    bias field evaluated on the full grid (``GetLogBiasFieldAsImage``).  Each 3D volume is
    one task that holds it, its mask and its field in memory (about 16 bytes per voxel).

    References
    ----------
    .. [1] L. G. Nyul, J. K. Udupa, X. Zhang, "New variants of a method of MRI scale
       standardization", IEEE Trans. Med. Imaging 19(2):143-150, 2000.
    .. [2] M. Shah et al., "Evaluating intensity normalization on MRIs of human brain with
       multiple sclerosis", Medical Image Analysis 15(2):267-282, 2011.
    .. [3] R. T. Shinohara et al., "Statistical normalization techniques for magnetic
       resonance imaging", NeuroImage: Clinical 6:9-19, 2014.
    .. [4] N. J. Tustison et al., "N4ITK: Improved N3 Bias Correction", IEEE Trans. Med.
       Imaging 29(6):1310-1320, 2010.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(100.0, 15.0, size=(10, 10, 10))
    >>> z = normalize(x, "zscore")
    >>> abs(round(float(z.mean()), 6)), round(float(z.std()), 6), z.dtype
    (0.0, 1.0, dtype('float32'))
    >>> norm = fit_normalize(x, "zscore")
    >>> round(norm.record()["mean"], 3) == round(float(x.mean()), 3)
    True
    """
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    norm = fit_normalize(vol, method, mask=mask, scope=scope, **options)
    return like_input(vol.derive(norm.apply_data(vol.data), norm.record()), kind)
