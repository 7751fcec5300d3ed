"""Inspecting volumes: header facts, per-volume statistics and overlap scores.

`describe` gives what `volbin info` prints: geometry from the header and, per 3D volume,
min, max, mean, RMS, standard deviation, percentiles and NaN/Inf counts, all from two
streamed passes (moments, then fine histograms for the percentiles).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .histogram import fine_nbins, group_histograms, group_stats, percentiles_from_hist
from .volume import Volume, as_volume

__all__ = ["PERCENTILES", "describe", "dice", "format_description"]

PERCENTILES = (1.0, 5.0, 50.0, 95.0, 99.0)


def _orientation(volume: Volume) -> dict[str, Any]:
    import nibabel as nib

    out: dict[str, Any] = {"axcodes": "".join(nib.aff2axcodes(volume.affine))}
    hdr = volume.header
    if hdr is not None and "qform_code" in hdr:
        out["qform_code"] = int(hdr["qform_code"])
        out["sform_code"] = int(hdr["sform_code"])
        units = hdr.get_xyzt_units()
        out["units"] = {"space": units[0], "time": units[1]}
        out["stored_dtype"] = str(hdr.get_data_dtype())
        slope, inter = hdr.get_slope_inter()
        src = volume.source or {}
        if "scl_slope" in src:  # nibabel clears the scaling in the header it hands out
            slope, inter = src["scl_slope"], src["scl_inter"]
        out["scl_slope"] = None if slope is None else float(slope)
        out["scl_inter"] = None if inter is None else float(inter)
    return out


def describe(volume: Any, *, volume_axis: int | None = None) -> dict[str, Any]:
    """Geometry and per-volume statistics of a volume.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input.

    Returns
    -------
    info : dict
        ``shape``, ``dtype``, ``zooms``, ``volume_axis``, ``orientation`` (axis codes,
        qform/sform codes), ``stats`` (one dict per 3D volume: min, max, mean, rms, std,
        percentiles, finite, nan, posinf, neginf) and ``stack`` (the same over everything).
        Percentiles are exact to within (max - min) / 65536.

    Examples
    --------
    >>> import numpy as np
    >>> info = describe(np.arange(27.0).reshape(3, 3, 3))
    >>> info["stack"]["min"], info["stack"]["max"], info["stack"]["mean"]
    (0.0, 26.0, 13.0)
    """
    vol, _ = as_volume(volume, volume_axis=volume_axis)
    groupings = {"stack": vol.grouping("stack"), "volume": vol.grouping("volume")}
    result: dict[str, Any] = {
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "zooms": [round(z, 6) for z in vol.zooms],
        "volume_axis": vol.volume_axis,
        "n_volumes": vol.n_volumes,
        "orientation": _orientation(vol),
    }
    if vol.source:
        result["source"] = vol.source
    for key, g in groupings.items():
        st = group_stats(vol, g)
        lo = np.where(st.count > 0, st.min, 0.0)
        hi = np.where(st.count > 0, st.max, 0.0)
        counts = group_histograms(vol, g, lo, hi, fine_nbins(g.n_groups))
        pct = percentiles_from_hist(counts, lo, hi, PERCENTILES)
        rows = []
        for idx in np.ndindex(*g.group_shape):
            n = int(st.count[idx])
            rows.append(
                {
                    "min": float(st.min[idx]) if n else None,
                    "max": float(st.max[idx]) if n else None,
                    "mean": float(st.mean[idx]) if n else None,
                    "rms": float(st.rms[idx]) if n else None,
                    "std": float(st.std[idx]) if n else None,
                    "percentiles": {f"p{q:g}": float(v) for q, v in zip(PERCENTILES, pct[idx], strict=False)}
                    if n
                    else {},
                    "finite": n,
                    "nan": int(st.nan[idx]),
                    "posinf": int(st.posinf[idx]),
                    "neginf": int(st.neginf[idx]),
                }
            )
        if key == "stack":
            result["stack"] = rows[0]
        else:
            result["stats"] = rows
    return result


def format_description(info: dict[str, Any], name: str = "") -> str:
    """Human-readable form of `describe`'s result."""
    o = info["orientation"]
    lines = [
        f"{name}" if name else "volume",
        f"  shape       {tuple(info['shape'])}  "
        f"({info['n_volumes']} volume(s); volume axis {info['volume_axis']})",
        f"  dtype       {info['dtype']}"
        + (
            f"  (stored {o['stored_dtype']}, scl_slope {o['scl_slope']}, scl_inter {o['scl_inter']})"
            if "stored_dtype" in o
            else ""
        ),
        f"  voxel size  {' x '.join(f'{z:g}' for z in info['zooms'])}"
        + (f" {o['units']['space']}" if "units" in o else ""),
        f"  orientation {o['axcodes']}"
        + (f"  (qform_code {o['qform_code']}, sform_code {o['sform_code']})" if "qform_code" in o else ""),
    ]
    header = (
        f"  {'':>6} {'min':>11} {'max':>11} {'mean':>11} {'rms':>11} "
        f"{'p1':>10} {'p50':>10} {'p99':>10} {'NaN':>7} {'Inf':>7}"
    )
    lines.append(header)

    def row(label: str, s: dict[str, Any]) -> str:
        if not s["finite"]:
            return f"  {label:>6} {'(no finite voxel)':>35} {s['nan']:>7} {s['posinf'] + s['neginf']:>7}"
        p = s["percentiles"]
        return (
            f"  {label:>6} {s['min']:>11.5g} {s['max']:>11.5g} {s['mean']:>11.5g} {s['rms']:>11.5g} "
            f"{p['p1']:>10.5g} {p['p50']:>10.5g} {p['p99']:>10.5g} "
            f"{s['nan']:>7} {s['posinf'] + s['neginf']:>7}"
        )

    if info["n_volumes"] > 1:
        for i, s in enumerate(info["stats"]):
            lines.append(row(f"vol {i}", s))
    lines.append(row("all", info["stack"]))
    return "\n".join(lines)


def dice(a: Any, b: Any) -> float:
    """Dice overlap ``2|A∩B| / (|A| + |B|)`` of two binary volumes (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must have the same shape; got {a.shape} and {b.shape}.")
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom
