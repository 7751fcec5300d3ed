"""Every histogram threshold method side by side, from one shared histogram pass.

`survey` is what ``volbin threshold`` prints: per method and group, the threshold in raw and
rescaled units and the foreground it selects (voxels and fraction).  The passes over the
data are the same whatever the number of methods: the range (`fit_transform`), one
histogram with bin means (every method reads it; Li and mean use the means), one fine
histogram for ``percentile`` only when a percentile is given, and one pass counting the
foreground of every threshold at once (sorted thresholds, one `np.searchsorted` per block).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .errors import VolbinDataError
from .histogram import fine_nbins, group_histograms, group_histograms_with_offsets
from .intensity import prepare, relabel
from .masks import mask_fields
from .recipe import HISTOGRAM_METHODS, Recipe
from .rescale import fit_transform
from .threshold import (
    BIN_MEAN_METHODS,
    decision_histogram_range,
    grouping_for,
    histogram_thresholds,
    percentile_decision,
    to_units,
)
from .volume import Grouping, as_volume

__all__ = ["SURVEY_METHODS", "format_survey", "survey"]

#: The methods `survey` compares, in the order of its table.
SURVEY_METHODS: tuple[str, ...] = HISTOGRAM_METHODS

#: Above this many groups the table summarises each method over groups (min, median, max).
MAX_GROUP_ROWS = 8


def survey(
    volume: Any,
    methods: tuple[str, ...] | list[str] | None = None,
    *,
    scope: str = "volume",
    axis: str | int = "z",
    nbins: int = 256,
    rescale: str = "minmax",
    percentile: float | None = None,
    inclusive: bool = False,
    mask: Any = None,
    stats_mask: Any = None,
    volume_axis: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Thresholds of every histogram method, and the foreground each selects, per group.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    methods : sequence of str, optional
        Histogram methods to compare (default: all of `SURVEY_METHODS`).
    scope, axis, nbins, rescale
        As for `volbin.threshold` (``scope`` ``stack``, ``volume`` or ``slice``).
    percentile : float, optional
        The percentile of method ``percentile``; without it that method says it needs one.
    inclusive : bool
        Count ``x >= threshold`` instead of ``x > threshold``.
    mask, stats_mask : str, path, ndarray, dask array or Volume, optional
        Statistics inside the mask; with `mask` the foreground is also counted inside it
        only (as `volbin.binarize` would write it), with `stats_mask` everywhere.
    volume_axis : int, optional
    **options
        Other `Recipe` fields (``percentiles``, ``value_range``, ``curve``, ``normalize``
        and its options, ...).  After a normalisation the thresholds are given as
        ``threshold_normalized`` (and the result's ``thresholded`` is ``"normalized"``);
        after CLAHE, ``threshold_raw`` is None and ``threshold_rescaled`` is compared.

    Returns
    -------
    result : dict
        ``scope``, ``group_shape``, ``groups`` (labels), ``within`` (``mask`` or
        ``volume``), ``voxels`` (voxels counted per group) and ``methods``: one dict per
        method with ``method``, ``threshold_raw``, ``threshold_rescaled``, ``foreground``
        (voxels per group) and ``fraction`` (lists over groups, None where undecided), or
        ``reason`` when the method cannot decide.

    Examples
    --------
    >>> import numpy as np
    >>> from skimage.filters import threshold_otsu
    >>> x = np.random.default_rng(0).gamma(2.0, size=(16, 16, 16))
    >>> r = survey(x, ["otsu", "percentile"])
    >>> bool(r["methods"][0]["threshold_raw"][0] == threshold_otsu(x))
    True
    >>> int(r["methods"][0]["foreground"][0]) == int((x > threshold_otsu(x)).sum())
    True
    >>> r["methods"][1]["reason"]
    'needs a percentile (CLI: --percentile P)'
    """
    chosen = tuple(SURVEY_METHODS if methods is None else methods)
    for mth in chosen:
        if mth not in SURVEY_METHODS:
            raise ValueError(
                f"`methods` must name histogram methods ({', '.join(SURVEY_METHODS)}); got {mth!r}."
            )
    if scope == "cohort":
        raise ValueError("`scope` must be one of stack, volume, slice for one input; got 'cohort'.")
    fields, array = mask_fields(mask, stats_mask)
    recipe = Recipe(
        method="otsu",
        scope=scope,
        axis=axis,
        nbins=nbins,
        rescale=rescale,
        inclusive=inclusive,
        **fields,
        **options,
    )
    vol, _ = as_volume(volume, volume_axis=volume_axis)
    stage = prepare(vol, recipe, array)
    vol, m, recipe = stage.volume, stage.mask, stage.recipe
    grouping = grouping_for(vol, recipe)
    tr = fit_transform(vol, grouping, recipe, m)
    md = None if m is None else m.data
    lo, hi, pre = decision_histogram_range(tr)
    hist_methods = [x for x in chosen if x != "percentile"]
    means = None
    if any(x in BIN_MEAN_METHODS for x in hist_methods):
        counts, means = group_histograms_with_offsets(vol, grouping, lo, hi, nbins, pre=pre, mask=md)
    elif hist_methods:
        counts = group_histograms(vol, grouping, lo, hi, nbins, pre=pre, mask=md)
    rows: list[dict[str, Any]] = []
    decided: list[tuple[int, np.ndarray]] = []
    for mth in chosen:
        row: dict[str, Any] = {"method": mth}
        try:
            if mth == "percentile":
                if percentile is None:
                    raise _Undecided("needs a percentile (CLI: --percentile P)")
                fine = group_histograms(
                    vol, grouping, tr.data_min, tr.data_max, fine_nbins(grouping.n_groups, nbins), mask=md
                )
                dec = percentile_decision(fine, grouping, tr, float(percentile))
                raw, rescaled = dec.raw, dec.rescaled
            else:
                with np.errstate(all="ignore"):
                    out = histogram_thresholds(mth, counts, lo, hi, tr.constant, grouping, means)
                raw, rescaled = to_units(out, tr)
        except (_Undecided, VolbinDataError) as exc:
            row["reason"] = str(exc)
            rows.append(row)
            continue
        row["threshold_raw"] = _listed(raw)
        row["threshold_rescaled"] = _listed(rescaled)
        if np.isinf(raw).all() and np.isnan(rescaled).all():
            row["reason"] = "no decision: every group is constant" + (" inside the mask" if m else "")
        decided.append((len(rows), raw))
        rows.append(row)
    zero_outside = md if recipe.mask is not None else None
    finite = not tr.n_nonfinite.any()
    fg, n = _count(vol.data, grouping, [t for _, t in decided], inclusive, zero_outside, finite)
    for k, (i, _) in enumerate(decided):
        rows[i]["foreground"] = fg[k].ravel().tolist()
        with np.errstate(invalid="ignore", divide="ignore"):
            rows[i]["fraction"] = np.where(n > 0, fg[k] / np.maximum(n, 1), 0.0).ravel().tolist()
    rows = [relabel(row, stage.thresholded) if "threshold_raw" in row else row for row in rows]
    units = {"thresholded": stage.thresholded} if stage.thresholded else {}
    return {
        **units,
        "scope": scope,
        "group_shape": list(grouping.group_shape),
        "groups": [grouping.describe(i) for i in range(grouping.n_groups)],
        "within": "mask" if recipe.mask is not None else "volume",
        "comparison": ">=" if inclusive else ">",
        "nbins": nbins,
        "voxels": n.ravel().tolist(),
        "methods": rows,
    }


class _Undecided(Exception):
    pass


def _listed(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def _count(
    data: da.Array,
    grouping: Grouping,
    thresholds: list[np.ndarray],
    inclusive: bool,
    mask: da.Array | None,
    all_finite: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground voxels of every threshold (``(len(thresholds),) + group_shape``) and the
    finite voxels counted (``group_shape``), in one pass.

    Each group's thresholds are sorted; one `np.searchsorted` per group and block places
    every finite voxel among them, and cumulative counts give ``#(x > t)`` for each
    (``side="right"``: ``#(x >= t)``): the count of `volbin.binarize.foreground` for each
    threshold (tests check the two agree), without one comparison pass per threshold.
    """
    k = len(thresholds)
    shape = grouping.group_shape
    table = np.stack([np.broadcast_to(t, shape) for t in thresholds]) if k else np.zeros((0, *shape))
    side = "right" if inclusive else "left"
    nongroup = tuple(a for a in range(data.ndim) if a not in grouping.group_axes)

    def run(block: np.ndarray, *inside: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        local = tuple(block.shape[a] for a in grouping.group_axes)
        out = np.zeros((*local, k + 1), dtype=np.int64)
        for idx in np.ndindex(*local):
            sel: list[Any] = [slice(None)] * block.ndim
            for a, i in zip(grouping.group_axes, idx, strict=True):
                sel[a] = slice(i, i + 1)
            x = block[tuple(sel)]
            if all_finite and not inside:
                values = x.reshape(-1)  # nothing to leave out: no copy
            else:
                keep = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, bool)
                if inside:
                    keep &= inside[0][tuple(sel)]
                values = x[keep]
            gidx = tuple(r[0] + i for r, i in zip((loc[a] for a in grouping.group_axes), idx, strict=True))
            ts = table[(slice(None), *gidx)]
            order = np.argsort(ts, kind="stable")
            pos = np.searchsorted(ts[order], values, side=side)
            hist = np.bincount(pos, minlength=k + 1)
            # voxels above the j-th smallest threshold: those placed after it
            above = np.cumsum(hist[::-1])[::-1][1:]
            out[idx][order] = above
            out[idx][k] = values.size
        return out.reshape(
            (*tuple(block.shape[a] if a in grouping.group_axes else 1 for a in range(block.ndim)), k + 1)
        )

    chunks = (
        *(
            data.chunks[a] if a in grouping.group_axes else (1,) * len(data.chunks[a])
            for a in range(data.ndim)
        ),
        (k + 1,),
    )
    args = (data,) if mask is None else (data, mask)
    parts = da.map_blocks(
        run,
        *args,
        chunks=chunks,
        new_axis=[data.ndim],
        dtype=np.int64,
        meta=np.empty((0,) * (data.ndim + 1), np.int64),
    )
    res = np.asarray(parts.sum(axis=nongroup).compute()).reshape(*shape, k + 1)
    fg = np.moveaxis(res[..., :k], -1, 0)
    return fg, res[..., k]


def format_survey(result: dict[str, Any], name: str = "") -> str:
    """The table `volbin threshold` prints."""
    n_groups = len(result["groups"])
    within = "inside the mask" if result["within"] == "mask" else "of all voxels"
    lines = [
        (f"{name}: " if name else "")
        + f"thresholds of {len(result['methods'])} methods, scope {result['scope']} ({n_groups} group(s)), "
        f"foreground x {result['comparison']} threshold, fraction {within}"
    ]

    def num(v: Any, fmt: str = ".6g") -> str:
        return "-" if v is None else format(v, fmt)

    thresholded = result.get("thresholded")
    units = "normalized" if thresholded == "normalized" else "raw"
    key = f"threshold_{units}"
    summary = "threshold_rescaled" if thresholded == "clahe" else key  # CLAHE: no raw thresholds
    if n_groups <= MAX_GROUP_ROWS:
        head = f"  {'method':<20} {'group':<18} {units:>12} {'rescaled':>10} {'voxels':>12} {'fraction':>9}"
        lines.append(head)
        for row in result["methods"]:
            if "threshold_rescaled" not in row:
                lines.append(f"  {row['method']:<20} {'(' + row['reason'] + ')'}")
                continue
            for g in range(n_groups):
                label = result["groups"][g] if n_groups > 1 else "-"
                raw = row[key][g] if isinstance(row[key], list) else None
                lines.append(
                    f"  {row['method']:<20} {label:<18} {num(raw):>12} "
                    f"{num(row['threshold_rescaled'][g], '.4f'):>10} {row['foreground'][g]:>12} "
                    f"{100 * row['fraction'][g]:>8.3g}%"
                )
        return "\n".join(lines)
    what = "rescaled" if thresholded == "clahe" else units
    lines.append(
        f"  {'method':<20} {what + ' min/median/max':>38} {'fraction min/median/max':>26} {'undecided':>9}"
    )
    for row in result["methods"]:
        if "threshold_rescaled" not in row:
            lines.append(f"  {row['method']:<20} {'(' + row['reason'] + ')'}")
            continue
        t = np.array([np.nan if v is None else v for v in row[summary]])
        f = 100 * np.asarray(row["fraction"])
        ok = np.isfinite(t)
        if not ok.any():
            lines.append(f"  {row['method']:<20} (no group decided)")
            continue
        tr = "/".join(format(v, ".5g") for v in np.percentile(t[ok], [0, 50, 100]))
        fr = "/".join(format(v, ".3g") for v in np.percentile(f[ok], [0, 50, 100]))
        lines.append(f"  {row['method']:<20} {tr:>38} {fr + '%':>26} {int((~ok).sum()):>9}")
    return "\n".join(lines)
