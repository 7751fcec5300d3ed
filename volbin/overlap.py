"""Binary volumes at a glance: foreground counts and volumes, and the overlap of two masks.

`binary_summary` tells whether a volume is binary (every finite value 0 or 1) and, if so,
its foreground voxels, fraction and volume in mm^3 per 3D volume, in one streamed pass.
`compare_masks` gives the Dice and Jaccard overlaps of two binary volumes on one grid and
their volume difference, in one streamed pass over both.
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

from .errors import VolbinDataError
from .volume import Volume, as_volume

__all__ = ["binary_summary", "compare_masks", "format_binary", "format_overlap"]


def _per_volume(vol: Volume, fn: Any, width: int) -> tuple[Any, int]:
    """Sum over blocks of ``fn(*blocks) -> (n_volumes_in_block, width)`` partials, placed by
    each block's volume range: ``(n_volumes, width)`` int64."""
    vaxis = vol.volume_axis
    data = vol.data
    n_vol = vol.n_volumes

    def run(*blocks: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        out = np.zeros((1,) * data.ndim + (n_vol, width), dtype=np.int64)
        start = 0 if vaxis is None else loc[vaxis][0]
        part = fn(*blocks)
        out[(0,) * data.ndim + (slice(start, start + part.shape[0]),)] = part
        return out

    return run, n_vol


def _reduce(arrays: list[da.Array], vol: Volume, fn: Any, width: int) -> np.ndarray:
    run, n_vol = _per_volume(vol, fn, width)
    data = arrays[0]
    chunks = (*tuple((1,) * len(c) for c in data.chunks), (n_vol,), (width,))
    parts = da.map_blocks(
        run,
        *arrays,
        chunks=chunks,
        new_axis=[data.ndim, data.ndim + 1],
        dtype=np.int64,
        meta=np.empty((0,) * (data.ndim + 2), np.int64),
    )
    return np.asarray(parts.sum(axis=tuple(range(data.ndim))).compute())


def _spatial_axes(block: np.ndarray, vaxis: int | None) -> tuple[int, ...]:
    return tuple(a for a in range(block.ndim) if a != vaxis)


def binary_summary(volume: Any, *, volume_axis: int | None = None) -> dict[str, Any] | None:
    """Foreground voxels, fraction and mm^3 of a binary volume, or None if it is not binary.

    A volume is binary when its dtype is boolean or every value is 0 or 1.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    volume_axis : int, optional

    Returns
    -------
    summary : dict or None
        ``voxels``, ``fraction``, ``mm3``, ``of_voxels`` in total and, for 4D data,
        ``per_volume`` (the same per 3D volume); ``voxel_mm3`` the volume of one voxel.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((4, 4, 4), np.uint8); m[:2] = 1
    >>> binary_summary(m)["voxels"], binary_summary(m)["fraction"]
    (32, 0.5)
    >>> binary_summary(m * 2.5) is None
    True
    """
    vol, _ = as_volume(volume, volume_axis=volume_axis)
    vaxis = vol.volume_axis
    logical = vol.dtype == np.bool_

    def fn(block: np.ndarray) -> np.ndarray:
        axes = _spatial_axes(block, vaxis)
        ones = np.count_nonzero(block, axis=axes).reshape(-1)
        other = (
            np.zeros_like(ones)
            if logical
            else np.count_nonzero((block != 0) & (block != 1), axis=axes).reshape(-1)
        )
        return np.stack([ones, other], axis=-1)

    counts = _reduce([vol.data], vol, fn, 2)
    if counts[:, 1].any():
        return None
    voxel = float(math.prod(vol.zooms))
    per = vol.data.size // vol.n_volumes

    def entry(n: int, total: int) -> dict[str, Any]:
        return {
            "voxels": int(n),
            "fraction": n / total if total else 0.0,
            "mm3": n * voxel,
            "of_voxels": total,
        }

    rec = {**entry(int(counts[:, 0].sum()), int(vol.data.size)), "voxel_mm3": voxel}
    if vaxis is not None:
        rec["per_volume"] = [entry(int(n), per) for n in counts[:, 0]]
    return rec


def format_binary(summary: dict[str, Any]) -> str:
    """The lines `volbin info` prints for a binary volume."""
    lines = [f"  binary      foreground voxels, fraction and volume (voxel {summary['voxel_mm3']:.6g} mm^3)"]

    def row(label: str, e: dict[str, Any]) -> str:
        return f"  {label:>6} {e['voxels']:>12} {100 * e['fraction']:>9.4g}% {e['mm3']:>14.6g} mm^3"

    for i, e in enumerate(summary.get("per_volume", [])):
        lines.append(row(f"vol {i}", e))
    lines.append(row("all", summary))
    return "\n".join(lines)


def compare_masks(a: Any, b: Any, *, volume_axis: int | None = None) -> dict[str, Any]:
    """Dice, Jaccard and volume difference of two binary volumes on one grid.

    Parameters
    ----------
    a, b : (X, Y, Z[, T]) ndarray, dask array or Volume
        Binary volumes (non-zero is foreground) of the same shape; Volumes read from files
        must also share their affine (to within 1e-3 mm).
    volume_axis : int, optional

    Returns
    -------
    overlap : dict
        ``dice`` (``2|A∩B| / (|A| + |B|)``, 1 when both are empty), ``jaccard``
        (``|A∩B| / |A∪B|``), ``voxels_a``, ``voxels_b``, ``voxels_both``, ``mm3_a``,
        ``mm3_b``, ``difference_mm3`` (A - B) and ``difference_percent`` (of B), in total
        and, for 4D data, ``per_volume``.

    Raises
    ------
    VolbinDataError
        The volumes are on different grids.

    References
    ----------
    .. [1] L. R. Dice, "Measures of the amount of ecologic association between species",
       Ecology 26(3):297-302, 1945.
    .. [2] P. Jaccard, "The distribution of the flora in the alpine zone", New Phytologist
       11(2):37-50, 1912.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4, 4), bool); b[1:3] = True
    >>> r = compare_masks(a, b)
    >>> r["dice"], r["jaccard"], r["difference_mm3"]
    (0.5, 0.3333333333333333, 0.0)
    """
    from .masks import AFFINE_TOLERANCE

    va, _ = as_volume(a, volume_axis=volume_axis)
    vb, _ = as_volume(b, volume_axis=volume_axis)
    same = va.shape == vb.shape
    if same and (va.source is not None and vb.source is not None):
        same = bool(np.allclose(va.affine, vb.affine, rtol=0, atol=AFFINE_TOLERANCE))
    if not same:
        raise VolbinDataError(
            f"the two masks are on different grids: shape {va.shape} and {vb.shape}"
            + (
                f", affines {np.round(va.affine[:3], 4).tolist()} and {np.round(vb.affine[:3], 4).tolist()}"
                if va.shape == vb.shape
                else ""
            )
            + "; resample one onto the other first."
        )
    vaxis = va.volume_axis
    db = vb.data if vb.data.chunks == va.data.chunks else vb.data.rechunk(va.data.chunks)

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        axes = _spatial_axes(x, vaxis)
        fx, fy = x != 0, y != 0
        return np.stack(
            [
                np.count_nonzero(fx, axis=axes).reshape(-1),
                np.count_nonzero(fy, axis=axes).reshape(-1),
                np.count_nonzero(fx & fy, axis=axes).reshape(-1),
            ],
            axis=-1,
        )

    counts = _reduce([va.data, db], va, fn, 3)
    voxel = float(math.prod(va.zooms))

    def entry(na: int, nb: int, both: int) -> dict[str, Any]:
        union = na + nb - both
        diff = (na - nb) * voxel
        return {
            "dice": 1.0 if na + nb == 0 else 2.0 * both / (na + nb),
            "jaccard": 1.0 if union == 0 else both / union,
            "voxels_a": na,
            "voxels_b": nb,
            "voxels_both": both,
            "mm3_a": na * voxel,
            "mm3_b": nb * voxel,
            "difference_mm3": diff,
            "difference_percent": (100.0 * (na - nb) / nb) if nb else None,
        }

    tot = counts.sum(axis=0)
    rec = entry(int(tot[0]), int(tot[1]), int(tot[2]))
    if vaxis is not None:
        rec["per_volume"] = [entry(int(r[0]), int(r[1]), int(r[2])) for r in counts]
    return rec


def format_overlap(r: dict[str, Any], a: str = "A", b: str = "B") -> str:
    """The lines `volbin info A --compare B` prints for two masks."""
    pct = "n/a" if r["difference_percent"] is None else f"{r['difference_percent']:+.3g}%"
    lines = [
        f"overlap of {a} with {b}:",
        f"  Dice {r['dice']:.4f}   Jaccard {r['jaccard']:.4f}",
        f"  volume {r['mm3_a']:.6g} mm^3 vs {r['mm3_b']:.6g} mm^3 "
        f"({r['voxels_a']} vs {r['voxels_b']} voxels, {r['voxels_both']} in both): "
        f"difference {r['difference_mm3']:+.6g} mm^3 ({pct} of {b})",
    ]
    for i, e in enumerate(r.get("per_volume", [])):
        lines.append(
            f"  vol {i}: Dice {e['dice']:.4f}  Jaccard {e['jaccard']:.4f}  "
            f"difference {e['difference_mm3']:+.6g} mm^3"
        )
    return "\n".join(lines)
