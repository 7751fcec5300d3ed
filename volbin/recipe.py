"""`Recipe`: the whole pipeline a user asks for, as a frozen dataclass with a JSON form.

The CLI builds a Recipe from its flags, the API builds one from keyword arguments, and every
output's sidecar stores it; `Recipe.from_dict(sidecar["recipe"])` reproduces the output.
Validation lives here, once, so every entry point reports bad values the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

__all__ = [
    "CLEAN_METHODS",
    "CURVES",
    "DITHER_METHODS",
    "HISTOGRAM_METHODS",
    "HYSTERESIS_METHODS",
    "LOCAL_METHODS",
    "METHODS",
    "MONOTONE_CURVES",
    "RESCALE_METHODS",
    "SCOPES",
    "THRESHOLD_METHODS",
    "Curve",
    "DitherMethod",
    "HistogramMethod",
    "LocalMethod",
    "Method",
    "Recipe",
    "RescaleMethod",
    "Scope",
    "Units",
    "merge",
    "unused_options",
]

#: The names each option takes, as `Literal` types for the API's signatures and as tuples
#: (``get_args``) for validation and the command line's choices.
RescaleMethod = Literal["minmax", "percentile", "fixed", "dtype", "none"]
Curve = Literal["linear", "gamma", "log", "equalize", "auto-gamma", "sigmoid", "clahe"]
#: Threshold methods computed from per-group histograms (plus `mean`, from exact sums):
#: scikit-image's, the ImageJ/ITK family (`volbin.autothreshold`) and `percentile`.
HistogramMethod = Literal[
    "otsu",
    "yen",
    "isodata",
    "li",
    "minimum",
    "triangle",
    "mean",
    "huang",
    "intermodes",
    "kittler-illingworth",
    "max-entropy",
    "moments",
    "renyi-entropy",
    "shanbhag",
    "percentile",
]
DitherMethod = Literal["dither", "ordered"]
#: scikit-image's local thresholds (`volbin.local`) of ``method="local"``.
LocalMethod = Literal["gaussian", "mean", "median", "niblack", "sauvola"]
Method = Literal[HistogramMethod, "value", "local", "hysteresis", "stochastic", DitherMethod]
Scope = Literal["stack", "volume", "slice", "cohort"]
Units = Literal["rescaled", "raw"]

RESCALE_METHODS: tuple[str, ...] = get_args(RescaleMethod)
CURVES: tuple[str, ...] = get_args(Curve)
#: Curves with ``f(x) > t  <=>  x > f⁻¹(t)``: thresholds of these map back to raw units.
MONOTONE_CURVES: tuple[str, ...] = tuple(c for c in CURVES if c != "clahe")
HISTOGRAM_METHODS: tuple[str, ...] = get_args(HistogramMethod)
DITHER_METHODS: tuple[str, ...] = get_args(DitherMethod)
METHODS: tuple[str, ...] = (*HISTOGRAM_METHODS, "value", "local", "hysteresis", "stochastic", *DITHER_METHODS)
#: Methods that decide a threshold per group and apply it (``volume > threshold``).
THRESHOLD_METHODS: tuple[str, ...] = (*HISTOGRAM_METHODS, "value")
LOCAL_METHODS: tuple[str, ...] = get_args(LocalMethod)
#: Histogram methods that give the `low` or `high` threshold of ``method="hysteresis"``.
HYSTERESIS_METHODS: tuple[str, ...] = tuple(m for m in HISTOGRAM_METHODS if m != "percentile")
#: Methods whose mask the clean-up options (`volbin.clean`) apply to: every thresholding one.
CLEAN_METHODS: tuple[str, ...] = (*THRESHOLD_METHODS, "local", "hysteresis")
#: Methods whose output renders grey levels (measured by their rendering error, previewed blurred).
RENDERING_METHODS: tuple[str, ...] = ("stochastic", *DITHER_METHODS)
FILL_HOLES: tuple[str, ...] = ("2d", "3d")
RADIUS_UNITS: tuple[str, ...] = ("voxels", "mm")
SCOPES: tuple[str, ...] = get_args(Scope)
UNITS: tuple[str, ...] = get_args(Units)


def unused_options(fields: Mapping[str, Any], names: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """The options among `names` that the recipe `fields` would not use, with the reason.

    `fields` maps Recipe fields to values (missing ones take their defaults); `names` are the
    fields to check (default: every field whose value differs from its default).  Returns
    ``[(name, "method='otsu'"), ...]``.  This is the one rule of which option each method
    and stage uses, applied by `Recipe` to the API and by the CLI to the flags given.
    """
    d = {**_DEFAULTS, **fields}
    method, jitter = d["method"], d["jitter"]
    m = f"method={method!r}"
    thresholding = method in THRESHOLD_METHODS
    given = d["threshold_from"] is None  # thresholds decided here, not read from a sidecar
    from_file = f"threshold_from={d['threshold_from']!r}"
    local, hysteresis = method == "local", method == "hysteresis"
    lm = f"local_method={d['local_method']!r}" if local else m
    values = hysteresis and (d["low"] is not None or d["high"] is not None)
    by_method = hysteresis and (d["low_method"] is not None or d["high_method"] is not None)
    cleaning = method in CLEAN_METHODS
    components = cleaning and bool(d["keep_largest"] or d["min_size"] or d["fill_holes"])
    if hysteresis:
        units_why = f"{m} without `low` or `high`"
    else:
        units_why = f"{m} without upper" if given else f"{from_file} without upper"
    uses: dict[str, tuple[bool, str]] = {
        "axis": (
            d["scope"] == "slice" or method in DITHER_METHODS or (cleaning and d["fill_holes"] == "2d"),
            f"scope={d['scope']!r} with {m}" + (" without `fill_holes` '2d'" if cleaning else ""),
        ),
        "percentiles": (d["rescale"] == "percentile", f"rescale={d['rescale']!r}"),
        "value_range": (d["rescale"] == "fixed", f"rescale={d['rescale']!r}"),
        "gamma": (d["curve"] == "gamma", f"curve={d['curve']!r}"),
        "log_gain": (d["curve"] == "log", f"curve={d['curve']!r}"),
        "gain": (d["curve"] == "sigmoid", f"curve={d['curve']!r}"),
        "cutoff": (d["curve"] == "sigmoid", f"curve={d['curve']!r}"),
        "clip_limit": (d["curve"] == "clahe", f"curve={d['curve']!r}"),
        "kernel_size": (d["curve"] == "clahe", f"curve={d['curve']!r}"),
        "kernel_mm": (d["curve"] == "clahe", f"curve={d['curve']!r}"),
        "threshold": (method == "value" and given, m if given else from_file),
        "percentile": (method == "percentile" and given, m if given else from_file),
        "units": (
            (method == "value" and given) or (thresholding and d["upper"] is not None) or values,
            units_why,
        ),
        "nbins": (
            (method in HISTOGRAM_METHODS and given) or by_method,
            f"{m} without `low_method` or `high_method`" if hysteresis else m if given else from_file,
        ),
        "upper": (thresholding, m),
        "inclusive": (thresholding, m),
        "invert": (thresholding, m),
        "threshold_from": (thresholding, m),
        "mask": (thresholding or local or hysteresis or method == "stochastic", m),
        "stats_mask": (thresholding or local or hysteresis or method == "stochastic", m),
        "seed": (
            method == "stochastic"
            or (method == "dither" and isinstance(jitter, (int, float)) and jitter > 0)
            or (method == "ordered" and d["pattern"] == "blue-noise"),
            f"{m} without jitter or a blue-noise pattern",
        ),
        "kernel": (method == "dither", m),
        "serpentine": (method == "dither", m),
        "jitter": (method == "dither", m),
        "upsample": (method in DITHER_METHODS, m),
        "matrix": (method == "ordered", m),
        "pattern": (method == "ordered", m),
        "local_method": (local, m),
        "block_size": (local, m),
        "offset": (local and d["local_method"] in ("gaussian", "mean", "median"), lm),
        "k": (local and d["local_method"] in ("niblack", "sauvola"), lm),
        "r": (local and d["local_method"] == "sauvola", lm),
        "low": (hysteresis, m),
        "high": (hysteresis, m),
        "low_method": (hysteresis, m),
        "high_method": (hysteresis, m),
        "connectivity": (
            hysteresis or components,
            f"{m} without `keep_largest`, `min_size` or `fill_holes`" if cleaning else m,
        ),
        "keep_largest": (cleaning, m),
        "min_size": (cleaning, m),
        "fill_holes": (cleaning, m),
        "opening": (cleaning, m),
        "closing": (cleaning, m),
        "radius_units": (
            cleaning and bool(d["opening"] or d["closing"]),
            f"{m} without `opening` or `closing`" if cleaning else m,
        ),
    }
    if names is None:
        names = [k for k in fields if k in _DEFAULTS and not _same(fields[k], _DEFAULTS[k])]
    return [(n, uses[n][1]) for n in names if n in uses and not uses[n][0]]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not isinstance(a, (list, tuple)) else list(a) == list(b or ())
    except (TypeError, ValueError):  # arrays compare element-wise
        return False


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(choices)}; got {value!r}.")


def _check_pair(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair of numbers (lo, hi); got {value!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        # An infinite end would map every finite value to 0 (or NaN) without a word.
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    if not lo < hi:
        raise ValueError(f"`{name}` must have lo < hi; got {value!r}.")
    return lo, hi


def _triple(value: Any) -> tuple[Any, ...] | None:
    """One value or three as a 3-tuple (None if it is neither)."""
    if isinstance(value, (str, bytes)):
        return None
    if not isinstance(value, (list, tuple, np.ndarray)):
        return (value, value, value)
    if len(value) == 1:
        return (value[0],) * 3
    return tuple(value) if len(value) == 3 else None


def _check_float(name: str, value: Any, condition: str = "a finite number") -> float:
    """`value` as a float; a ValueError naming `name` if it is not a finite number."""
    try:
        if isinstance(value, (bool, str)):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be {condition}; got {value!r}.") from None
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be {condition}; got {value!r}.")
    return v


@dataclass(frozen=True)
class Recipe:
    """What to do to a volume: rescale, decide, binarize.

    Parameters
    ----------
    method : str
        ``otsu``, ``yen``, ``isodata``, ``li``, ``minimum``, ``triangle``, ``mean``,
        ``huang``, ``intermodes``, ``kittler-illingworth``, ``max-entropy``, ``moments``,
        ``renyi-entropy``, ``shanbhag`` (histogram methods), ``percentile`` (the
        `percentile`-th percentile of each group), ``value`` (a given `threshold`),
        ``stochastic`` (Bernoulli with probability equal to the rescaled intensity),
        ``dither`` (error diffusion) or ``ordered``.
    scope : str
        ``stack`` (one decision for a whole 4D stack), ``volume`` (one per 3D volume),
        ``slice`` (one per 2D slice along `axis`) or ``cohort`` (one decision from the pooled
        histogram of every input of a `volbin.batch`, or read with `threshold_from`).
        Rescaling uses the same groups.
    axis : str or int
        Slice axis for ``scope="slice"``: ``x``, ``y``, ``z`` (default) or 0, 1, 2.
    rescale : str
        ``minmax`` (default; linear, so thresholds match peers on raw data), ``percentile``
        (clip at `percentiles`), ``fixed`` (clip at `value_range`), ``dtype`` (the range of
        the stored dtype) or ``none`` (values used as they are).
    percentiles : (float, float)
        Lower and upper percentiles for ``rescale="percentile"``.
    value_range : (float, float) or None
        Raw intensities mapped to 0 and 1 for ``rescale="fixed"``.
    curve : str
        Tone curve after rescaling: ``linear``, ``gamma`` (``r**gamma``), ``log``
        (``log1p(log_gain * r) / log1p(log_gain)``), ``equalize`` (histogram equalisation),
        ``auto-gamma`` (``r**g`` with ``g = log(0.5) / log(mean r)`` per group), ``sigmoid``
        (``1 / (1 + exp(gain * (cutoff - r)))``) or ``clahe`` (contrast-limited adaptive
        equalisation of each 3D volume; not monotone, so thresholds are in rescaled units
        only and ``units='raw'`` is refused).  See `volbin.rescale.rescale`.
    gamma, log_gain : float
        Parameters of the ``gamma`` and ``log`` curves.
    gain, cutoff : float or None
        Parameters of the ``sigmoid`` curve (default 10 and 0.5, as scikit-image).
    clip_limit : float or None
        Clip limit of ``clahe``, in (0, 1] (default 0.01, as scikit-image).
    kernel_size : int, (int, int, int) or None
        Contextual region of ``clahe`` in voxels along x, y, z (default 1/8 of each size).
    kernel_mm : float, (float, float, float) or None
        Contextual region of ``clahe`` in millimetres, converted with the voxel sizes
        (so anisotropic voxels get regions of the same physical size); not with `kernel_size`.
    threshold : float or None
        The threshold of ``method="value"``, in `units`.
    percentile : float or None
        The percentile (0 to 100) of ``method="percentile"``: the threshold is that
        percentile of each group's finite raw voxels.
    units : str
        ``rescaled`` (default: the threshold is in [0, 1] after rescaling) or ``raw``; the
        units of `threshold` and `upper`.
    upper : float or None
        Upper bound of the foreground: ``threshold < x <= upper`` (in `units`, for every
        threshold method; it must not lie below a ``value`` threshold).
    inclusive : bool
        Foreground is ``x >= threshold`` (as fslmaths ``-thr`` and nilearn keep) instead of
        volbin's default ``x > threshold``.
    invert : bool
        The complement of the foreground (inside the mask, with `mask`).
    mask, stats_mask : str or None
        A mask file, or ``nonzero`` (the input's own non-zero voxels): statistics are
        computed inside it; `mask` also writes 0 outside it, `stats_mask` applies the
        thresholds everywhere.  The API also takes arrays (`volbin.binarize`), recorded here
        as ``"<array>"``.
    threshold_from : str or None
        A sidecar of an earlier output whose raw thresholds are applied instead of deciding
        (same scope and number of groups).
    nbins : int
        Histogram bins of the histogram methods (256, as scikit-image).
    seed : int
        Seed of stochastic choices (``stochastic``, dither jitter, blue noise).
    kernel, serpentine, jitter, upsample, matrix, pattern
        Dithering options (see `volbin.dither`).  `kernel` and `serpentine` default (None) to
        ``"floyd-steinberg"`` and False, except for ``method="dither"`` with scope
        ``"volume"`` or ``"stack"``: ``"sierra-lite-3d"`` on the boustrophedon path (True).
    local_method : str
        The local threshold of ``method="local"``, computed on the rescaled volume as
        scikit-image does (`volbin.local.threshold_local`): ``gaussian`` (default), ``mean``,
        ``median`` (``threshold_local``), ``niblack`` or ``sauvola``.  Windows are 2D in each
        slice along `axis` with ``scope="slice"`` (which also rescales per slice), else 3D.
    block_size : int
        Odd window size in voxels along each filtered axis (default 15).
    offset : float
        Subtracted from the ``gaussian``, ``mean`` and ``median`` thresholds (rescaled units).
    k : float
        Weight of the window's standard deviation of ``niblack`` and ``sauvola`` (0.2).
    r : float or None
        Dynamic range of the standard deviation of ``sauvola`` (default 1, the rescaled range).
    low, high : float or None
        Thresholds of ``method="hysteresis"``, in `units`.
    low_method, high_method : str or None
        Histogram methods (``otsu``, ``li``, ...) deciding `low` or `high` per group instead.
    connectivity : int
        Neighbourhood (1, 2 or 3, as ``scipy.ndimage.generate_binary_structure``) of the
        hysteresis components and of the clean-up's components and holes.
    keep_largest, min_size, fill_holes, opening, closing
        Clean-up of the mask of any thresholding method (`volbin.clean.clean`, in its order:
        opening, `min_size`, `keep_largest`, closing, hole filling): keep the largest
        component of each 3D volume, remove components of fewer than `min_size` voxels,
        fill holes (``"3d"``, or ``"2d"`` in each slice along `axis`), binary opening and
        closing by balls of these radii (0: none).
    radius_units : str
        ``voxels`` (default) or ``mm`` (with the voxel sizes): the units of `opening` and
        `closing`.
    """

    method: str = "otsu"
    scope: str = "volume"
    axis: str | int = "z"
    rescale: str = "minmax"
    percentiles: tuple[float, float] = (1.0, 99.0)
    value_range: tuple[float, float] | None = None
    curve: str = "linear"
    gamma: float = 1.0
    log_gain: float = 9.0
    gain: float | None = None
    cutoff: float | None = None
    clip_limit: float | None = None
    kernel_size: int | tuple[int, int, int] | None = None
    kernel_mm: float | tuple[float, float, float] | None = None
    threshold: float | None = None
    percentile: float | None = None
    units: str = "rescaled"
    upper: float | None = None
    inclusive: bool = False
    invert: bool = False
    mask: str | None = None
    stats_mask: str | None = None
    threshold_from: str | None = None
    nbins: int = 256
    seed: int = 0
    kernel: Any = None
    serpentine: bool | None = None
    jitter: float = 0.0
    upsample: tuple[float, float, float] | None = None
    matrix: int = 8
    pattern: str = "bayer"
    local_method: str = "gaussian"
    block_size: int = 15
    offset: float = 0.0
    k: float = 0.2
    r: float | None = None
    low: float | None = None
    high: float | None = None
    low_method: str | None = None
    high_method: str | None = None
    connectivity: int = 1
    keep_largest: bool = False
    min_size: int = 0
    fill_holes: str | None = None
    opening: float = 0.0
    closing: float = 0.0
    radius_units: str = "voxels"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Error diffusion defaults by scope: Floyd-Steinberg raster per slice; through volumes
        # Sierra Lite extended to 3D on the boustrophedon path (docs/methods.md).
        volumetric = self.method == "dither" and self.scope != "slice"
        if self.kernel is None:
            object.__setattr__(self, "kernel", "sierra-lite-3d" if volumetric else "floyd-steinberg")
        if self.serpentine is None:
            object.__setattr__(self, "serpentine", volumetric)
        _check_choice("method", self.method, METHODS)
        _check_choice("scope", self.scope, SCOPES)
        _check_choice("rescale", self.rescale, RESCALE_METHODS)
        _check_choice("curve", self.curve, CURVES)
        _check_choice("units", self.units, UNITS)
        named = isinstance(self.axis, str) and self.axis.lower() in ("x", "y", "z")
        numbered = not isinstance(self.axis, (bool, str)) and self.axis in (0, 1, 2)
        if not (named or numbered):
            raise ValueError(f"`axis` must be one of 'x', 'y', 'z' or 0, 1, 2; got {self.axis!r}.")
        p = _check_pair("percentiles", self.percentiles)
        if not (0.0 <= p[0] and p[1] <= 100.0):
            raise ValueError(f"`percentiles` must lie in [0, 100]; got {self.percentiles!r}.")
        object.__setattr__(self, "percentiles", p)
        if self.value_range is not None:
            object.__setattr__(self, "value_range", _check_pair("value_range", self.value_range))
        if self.rescale == "fixed" and self.value_range is None:
            raise ValueError("`rescale='fixed'` needs `value_range=(lo, hi)` (CLI: --range LO HI).")
        if not (
            isinstance(self.nbins, (int, np.integer)) and not isinstance(self.nbins, bool) and self.nbins >= 2
        ):
            raise ValueError(f"`nbins` must be an int >= 2; got {self.nbins!r}.")
        if not (
            isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool) and self.seed >= 0
        ):
            raise ValueError(f"`seed` must be a non-negative int; got {self.seed!r}.")
        # numpy integers are welcome, but the JSON form needs plain ints.
        object.__setattr__(self, "nbins", int(self.nbins))
        object.__setattr__(self, "seed", int(self.seed))
        for name in ("gamma", "log_gain"):
            value = getattr(self, name)
            if not _check_float(name, value, "a finite number > 0") > 0:
                raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}.")
            object.__setattr__(self, name, float(value))
        self._check_curve_options()
        for name in ("mask", "stats_mask", "threshold_from"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, os.PathLike):
                    value = os.fspath(value)
                if not isinstance(value, str) or not value:
                    raise ValueError(f"`{name}` must be a path or 'nonzero' in a Recipe; got {value!r}.")
                if value not in ("nonzero", "<array>"):
                    # Recorded absolute, so that a sidecar's recipe re-runs from any folder.
                    value = os.path.abspath(os.path.expanduser(value))
                object.__setattr__(self, name, value)
        if self.mask is not None and self.stats_mask is not None:
            raise ValueError(
                f"give `mask` (zero outside it) or `stats_mask` (thresholds applied everywhere), "
                f"not both; got mask={self.mask!r}, stats_mask={self.stats_mask!r}."
            )
        if self.threshold_from == "nonzero":
            raise ValueError("`threshold_from` must be the path of a sidecar .json; got 'nonzero'.")
        for name in ("inclusive", "invert"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"`{name}` must be True or False; got {getattr(self, name)!r}.")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.upper is not None:
            u = _check_float("upper", self.upper, "a number")
            object.__setattr__(self, "upper", u)
        if self.scope == "cohort" and self.method not in HISTOGRAM_METHODS and self.threshold_from is None:
            raise ValueError(
                f"`scope='cohort'` pools the histograms of several inputs for a histogram method; "
                f"got method={self.method!r}."
            )
        if self.scope == "cohort" and self.curve != "linear":
            raise ValueError(
                f"`scope='cohort'` takes the linear curve (the pooled threshold is applied in raw "
                f"units to every input); got curve={self.curve!r}."
            )
        if self.method == "value" and self.threshold_from is None:
            if self.threshold is None:
                raise ValueError("`method='value'` needs `threshold` (CLI: --threshold T).")
            # A NaN threshold would silently select nothing; ±inf are allowed (all or none).
            try:
                t = float(self.threshold) if not isinstance(self.threshold, (bool, str)) else None
            except (TypeError, ValueError):
                t = None
            if t is None or math.isnan(t):
                raise ValueError(f"`threshold` must be a number; got {self.threshold!r}.")
            object.__setattr__(self, "threshold", t)
            if self.upper is not None and self.upper < t:
                raise ValueError(
                    f"`upper` must not lie below `threshold`; got threshold={t!r}, upper={self.upper!r}."
                )
        if self.method == "percentile" and self.threshold_from is None:
            if self.percentile is None:
                raise ValueError("`method='percentile'` needs `percentile` (CLI: --percentile P).")
            q = _check_float("percentile", self.percentile, "a number in [0, 100]")
            if not 0.0 <= q <= 100.0:
                raise ValueError(f"`percentile` must be a number in [0, 100]; got {self.percentile!r}.")
            object.__setattr__(self, "percentile", q)
        jitter = _check_float("jitter", self.jitter, "a number in [0, 1]")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"`jitter` must be a number in [0, 1]; got {self.jitter!r}.")
        if self.upsample is not None:
            up: Any = self.upsample
            if isinstance(up, (int, float)):
                up = (up, up, up)
            try:
                factors = tuple(float(u) for u in up)
            except (TypeError, ValueError):
                factors = ()
            if len(factors) != 3 or not all(1 <= u < math.inf for u in factors):
                raise ValueError(f"`upsample` must be a factor >= 1 or three of them; got {self.upsample!r}.")
            object.__setattr__(self, "upsample", factors)
        if not (isinstance(self.matrix, int) and self.matrix >= 2 and self.matrix & (self.matrix - 1) == 0):
            raise ValueError(f"`matrix` must be a power of two >= 2; got {self.matrix!r}.")
        _check_choice("pattern", self.pattern, ("bayer", "blue-noise"))
        if self.seed >= 2**64:
            raise ValueError(f"`seed` must be below 2**64; got {self.seed!r}.")
        self._check_local_options()
        self._check_hysteresis_options()
        self._check_clean_options()
        unused = unused_options({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if unused:
            name, why = unused[0]
            raise ValueError(f"`{name}` is not used by {why}; got {name}={getattr(self, name)!r}.")

    def _check_curve_options(self) -> None:
        """Validate the options of the chosen curve (`unused_options` refuses the others)."""
        if self.gain is not None and self.curve == "sigmoid":
            if not _check_float("gain", self.gain, "a finite number > 0") > 0:
                raise ValueError(f"`gain` must be a finite number > 0; got {self.gain!r}.")
            object.__setattr__(self, "gain", float(self.gain))
        if self.cutoff is not None and self.curve == "sigmoid":
            object.__setattr__(self, "cutoff", _check_float("cutoff", self.cutoff))
        if self.curve != "clahe":
            return
        if self.clip_limit is not None:
            c = _check_float("clip_limit", self.clip_limit, "a number in (0, 1]")
            if not 0.0 < c <= 1.0:
                raise ValueError(f"`clip_limit` must be a number in (0, 1]; got {self.clip_limit!r}.")
            object.__setattr__(self, "clip_limit", c)
        if self.kernel_size is not None and self.kernel_mm is not None:
            raise ValueError(
                f"`kernel_size` and `kernel_mm` are two ways to give the CLAHE region; give one; "
                f"got kernel_size={self.kernel_size!r}, kernel_mm={self.kernel_mm!r}."
            )
        if self.kernel_size is not None:
            ks = _triple(self.kernel_size)
            if ks is None or not all(
                isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in ks
            ):
                raise ValueError(
                    f"`kernel_size` must be an int >= 1 or three of them (voxels); got {self.kernel_size!r}."
                )
            object.__setattr__(self, "kernel_size", tuple(int(k) for k in ks))
        if self.kernel_mm is not None:
            km = _triple(self.kernel_mm)
            try:
                kmf = tuple(float(k) for k in km) if km is not None else None
            except (TypeError, ValueError):
                kmf = None
            if kmf is None or not all(0 < k < math.inf for k in kmf):
                raise ValueError(
                    f"`kernel_mm` must be a positive size in mm or three of them; got {self.kernel_mm!r}."
                )
            object.__setattr__(self, "kernel_mm", kmf)
        if self.units == "raw" and self.method == "value":
            raise ValueError(
                "`units='raw'` cannot be used with curve='clahe': CLAHE is not monotone, so a "
                "threshold has no raw-intensity equivalent; give it in rescaled units."
            )
        if self.scope == "slice":
            raise ValueError(
                "`scope='slice'` cannot be used with curve='clahe', which equalises whole 3D "
                "volumes; use scope='volume' or 'stack'."
            )

    def _check_local_options(self) -> None:
        _check_choice("local_method", self.local_method, LOCAL_METHODS)
        b = self.block_size
        if not (isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 1 and b % 2 == 1):
            raise ValueError(f"`block_size` must be an odd int >= 1; got {b!r}.")
        object.__setattr__(self, "block_size", int(b))
        object.__setattr__(self, "offset", _check_float("offset", self.offset))
        object.__setattr__(self, "k", _check_float("k", self.k))
        if self.r is not None:
            if not _check_float("r", self.r, "a finite number > 0") > 0:
                raise ValueError(f"`r` must be a finite number > 0; got {self.r!r}.")
            object.__setattr__(self, "r", float(self.r))

    def _check_hysteresis_options(self) -> None:
        for name in ("low", "high"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _check_float(name, getattr(self, name)))
        for name in ("low_method", "high_method"):
            if getattr(self, name) is not None:
                _check_choice(name, getattr(self, name), HYSTERESIS_METHODS)
        c = self.connectivity
        if not (isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c in (1, 2, 3)):
            raise ValueError(f"`connectivity` must be 1, 2 or 3; got {c!r}.")
        object.__setattr__(self, "connectivity", int(c))
        if self.method != "hysteresis":
            return
        for name in ("low", "high"):
            value, by = getattr(self, name), getattr(self, f"{name}_method")
            if value is None and by is None:
                raise ValueError(f"`method='hysteresis'` needs `{name}` or `{name}_method`; got neither.")
            if value is not None and by is not None:
                raise ValueError(
                    f"give `{name}` or `{name}_method`, not both; got {name}={value!r}, {name}_method={by!r}."
                )
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"`low` must not exceed `high`; got low={self.low!r}, high={self.high!r}.")

    def _check_clean_options(self) -> None:
        if self.fill_holes is True:
            object.__setattr__(self, "fill_holes", "3d")
        elif self.fill_holes is False:
            object.__setattr__(self, "fill_holes", None)
        if self.fill_holes is not None:
            _check_choice("fill_holes", self.fill_holes, FILL_HOLES)
        if not isinstance(self.keep_largest, (bool, np.bool_)):
            raise ValueError(f"`keep_largest` must be True or False; got {self.keep_largest!r}.")
        object.__setattr__(self, "keep_largest", bool(self.keep_largest))
        n = self.min_size
        if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0):
            raise ValueError(f"`min_size` must be a non-negative int; got {n!r}.")
        object.__setattr__(self, "min_size", int(n))
        for name in ("opening", "closing"):
            v = _check_float(name, getattr(self, name), "a finite number >= 0")
            if v < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0; got {getattr(self, name)!r}.")
            object.__setattr__(self, name, v)
        _check_choice("radius_units", self.radius_units, RADIUS_UNITS)
        if self.fill_holes == "2d" and self.connectivity == 3:
            raise ValueError(
                "`connectivity` must be 1 or 2 with fill_holes='2d' (a slice has no third neighbour "
                "direction); got connectivity=3."
            )

    # --- JSON form -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        if hasattr(self.kernel, "tolist"):
            d["kernel"] = self.kernel.tolist()
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe fields: {', '.join(sorted(unknown))}.")
        kw = dict(d)
        for k in ("percentiles", "value_range", "upsample", "kernel_size", "kernel_mm"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> Recipe:
        """A copy with `changes`; the result is validated like any Recipe."""
        return dataclasses.replace(self, **changes)

    def with_method(self, method: str, **changes: Any) -> Recipe:
        """A copy for `method` with `changes`, other fields `method` does not use reset to defaults.

        How a recipe taken from another output (a sidecar) is reused for another method.
        """
        d = {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "method": method, **changes}
        for name, _ in unused_options(d, [n for n in d if n not in changes]):
            d[name] = _DEFAULTS[name]
        return Recipe(**d)


def merge(recipe: Recipe | None, options: Mapping[str, Any], method: str | None = None) -> Recipe:
    """`recipe` with `options` (and `method`) over it: how every entry point combines the two.

    Options given override the recipe's fields; the recipe's fields that the final method
    does not use are reset to their defaults (they belong to another method); an option
    given that the final method does not use is refused.  Without `recipe`, the options
    build one (method default ``otsu``).
    """
    if recipe is None:
        fields: dict[str, Any] = {"method": method} if method else {}
        return Recipe(**fields, **options)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"`recipe` must be a volbin.Recipe; got {type(recipe).__name__}.")
    if method is None and not options:
        return recipe
    refused = unused_options(
        {**recipe.to_dict(), "method": method or recipe.method, **options}, list(options)
    )
    if refused:
        name, why = refused[0]
        raise ValueError(f"`{name}` is not used by {why}; got {name}={options[name]!r}.")
    return recipe.with_method(method or recipe.method, **options)


_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Recipe) if f.default is not dataclasses.MISSING
}
# What a recipe records for the dithering defaults when it does not dither.
_DEFAULTS["kernel"] = "floyd-steinberg"
_DEFAULTS["serpentine"] = False
