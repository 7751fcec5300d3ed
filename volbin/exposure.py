"""Exposure statistics: what users judge brightness and contrast by, per group.

`exposure_stats` gives each group's (each 3D volume's, or the stack's) mean, RMS, standard
deviation, median and percentiles, exact from streamed passes (fixed-point moments, fine
histograms), with a coarse histogram; `histogram_bar` draws such a histogram as one line of
unicode blocks on a log scale, and `format_exposure` prints a table of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._moments import group_moments
from .histogram import fine_nbins, group_histograms, group_range, percentiles_from_hist
from .volume import as_volume

__all__ = ["BLOCKS", "EXPOSURE_PERCENTILES", "exposure_stats", "format_exposure", "histogram_bar"]

EXPOSURE_PERCENTILES = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
#: Bar heights 0 to 8 (a space for an empty bin).
BLOCKS = " ▁▂▃▄▅▆▇█"


def histogram_bar(counts: Sequence[int] | np.ndarray, *, log: bool = True) -> str:
    """One character per bin: a unicode block whose height follows the (log) count.

    Empty bins are spaces; any non-empty bin shows at least the lowest block, so a few
    stray voxels stay visible.  With `log` (default) heights follow ``log(1 + count)``.

    Examples
    --------
    >>> histogram_bar([0, 1, 10, 100, 1000])
    ' ▁▃▆█'
    >>> histogram_bar([0, 1, 10, 100, 1000], log=False)
    ' ▁▁▁█'
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"`counts` must be one-dimensional; got shape {c.shape}.")
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError("`counts` must be finite and non-negative.")
    top = c.max() if c.size else 0.0
    if top <= 0:
        return " " * c.size
    h = np.log1p(c) / np.log1p(top) if log else c / top
    levels = np.where(c > 0, np.clip(np.ceil(h * 8), 1, 8), 0).astype(int)
    return "".join(BLOCKS[k] for k in levels)


def exposure_stats(
    volume: Any,
    *,
    scope: str = "volume",
    percentiles: Sequence[float] = EXPOSURE_PERCENTILES,
    nbins: int = 64,
    volume_axis: int | None = None,
) -> list[dict[str, Any]]:
    """Per-group exposure statistics of the finite voxels (three streamed passes).

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    scope : {'volume', 'stack'}
        One row per 3D volume, or one for the whole stack.
    percentiles : sequence of float
        In [0, 100].
    nbins : int
        Bins of the returned histogram (and of its bar), equal over [min, max]; a divisor of
        65536 (a power of two) makes them exact sums of the fine bins.
    volume_axis : int, optional

    Returns
    -------
    rows : list of dict
        One per group, in C order: ``group`` (its indices), ``count``, ``min``, ``max``,
        ``mean``, ``rms``, ``std``, ``median``, ``percentiles`` (``{"p1": ...}``),
        ``histogram`` (``counts``, ``lo``, ``hi``) and ``bar`` (`histogram_bar`).  Mean,
        RMS and std are exact (fixed-point sums); percentiles are within (max - min) / 65536.

    Raises
    ------
    ValueError
        A bad `scope`, `percentiles` or `nbins`.

    Examples
    --------
    >>> import numpy as np
    >>> rows = exposure_stats(np.arange(1000.0).reshape(10, 10, 10), nbins=8)
    >>> rows[0]["mean"], rows[0]["median"], rows[0]["bar"]
    (499.5, 499.5, '████████')
    """
    if scope not in ("volume", "stack"):
        raise ValueError(f"`scope` must be one of volume, stack; got {scope!r}.")
    if not (isinstance(nbins, (int, np.integer)) and not isinstance(nbins, bool) and 1 <= nbins <= 65536):
        raise ValueError(f"`nbins` must be an int in [1, 65536]; got {nbins!r}.")
    qs = [float(q) for q in percentiles]
    if not all(0.0 <= q <= 100.0 for q in qs):
        raise ValueError(f"`percentiles` must lie in [0, 100]; got {percentiles!r}.")
    vol, _ = as_volume(volume, volume_axis=volume_axis)
    g = vol.grouping(scope)
    dmin, dmax, _ = group_range(vol, g)
    present = dmax >= dmin
    lo = np.where(present, dmin, 0.0)
    hi = np.where(present, dmax, 0.0)
    m = group_moments(vol.data, g, lo, hi)
    nb = max(fine_nbins(g.n_groups), int(nbins))
    fine = group_histograms(vol, g, lo, hi, nb)
    pct = percentiles_from_hist(fine, lo, hi, [*qs, 50.0])
    starts = (np.arange(nbins) * nb) // nbins
    rows = []
    for idx, label in zip(np.ndindex(*g.group_shape), g.labels(), strict=True):
        n = int(m.count[idx])
        counts = np.add.reduceat(fine[idx], starts) if n else np.zeros(nbins, np.int64)
        mean, std = float(m.mean[idx]), float(m.std[idx])
        rows.append(
            {
                "group": label,
                "count": n,
                "min": float(lo[idx]) if n else None,
                "max": float(hi[idx]) if n else None,
                "mean": mean if n else None,
                "rms": float(np.sqrt(mean * mean + std * std)) if n else None,
                "std": std if n else None,
                "median": float(pct[idx][-1]) if n else None,
                "percentiles": {f"p{q:g}": float(v) for q, v in zip(qs, pct[idx][:-1], strict=True)}
                if n
                else {},
                "histogram": {"counts": counts.tolist(), "lo": float(lo[idx]), "hi": float(hi[idx])},
                "bar": histogram_bar(counts),
            }
        )
    return rows


def format_exposure(rows: list[dict[str, Any]]) -> str:
    """A terminal table of `exposure_stats` rows: one line of numbers and one bar each.

    Examples
    --------
    >>> import numpy as np
    >>> print(format_exposure(exposure_stats(np.arange(64.0).reshape(4, 4, 4), nbins=4)))
    group            mean        rms     median         p1        p99  histogram (log counts)
    volume           31.5     36.517       31.5    0.63015      62.37  |████|  0 .. 63
    """
    lines = [
        f"{'group':<8} {'mean':>12} {'rms':>10} {'median':>10} {'p1':>10} {'p99':>10}  histogram (log counts)"
    ]
    for row in rows:
        label = " ".join(f"{k} {v}" for k, v in row["group"].items()) or "volume"
        if not row["count"]:
            lines.append(f"{label:<8} (no finite voxel)")
            continue
        p = row["percentiles"]
        lines.append(
            f"{label:<8} {row['mean']:>12.5g} {row['rms']:>10.5g} {row['median']:>10.5g} "
            f"{p.get('p1', float('nan')):>10.5g} {p.get('p99', float('nan')):>10.5g}  "
            f"|{row['bar']}|  {row['min']:g} .. {row['max']:g}"
        )
    return "\n".join(lines)
