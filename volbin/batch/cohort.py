"""Cohort thresholds: one decision from the pooled exact histogram of every input of a batch.

Two passes over the inputs, each one task per file on the cluster: the per-file finite
ranges (summed to the cohort's range), then the per-file histograms over that common range
(summed bin by bin: integer counts, so the pooled histogram is exact and independent of the
order and of the chunking).  Percentile rescales and the ``percentile`` method add one pass
of fine histograms over the cohort's range.  The pooled Transform and histogram give one
threshold, applied in raw units to every file and recorded in every sidecar with the
cohort's identity (a digest of the inputs' identities), so that a changed input makes every
output stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..recipe import Recipe

#: One group: what a cohort's statistics are per input before they are summed.
_STACK = "stack"


def cohort_id(paths: Sequence[str], recipe: Recipe) -> str:
    """A digest of the inputs' identities (absolute path, size, mtime_ns) and the recipe."""
    from ..io import input_identity

    items = []
    for p in sorted(os.path.abspath(p) for p in paths):
        try:
            size, mtime = input_identity(p)
        except OSError:
            size, mtime = -1, -1
        items.append([p, size, mtime])
    doc = json.dumps({"inputs": items, "recipe": recipe.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _open(path: str, recipe: dict[str, Any], chunk_bytes: int | None, volume_axis: int | None) -> Any:
    """The recipe, the input as the decision sees it (normalised by the recipe), its group
    and its mask."""
    from ..intensity import prepare
    from ..io import load

    rec = Recipe.from_dict(recipe)
    stage = prepare(load(path, chunk_bytes=chunk_bytes, volume_axis=volume_axis), rec)
    return stage.recipe, stage.volume, stage.volume.grouping(_STACK), stage.mask


def file_range(
    path: str, recipe: dict[str, Any], chunk_bytes: int | None = None, volume_axis: int | None = None
) -> dict[str, Any]:
    """One input's finite range, non-finite count and voxel count (inside the mask)."""
    from ..histogram import group_range
    from ..rescale import _dtype_range

    rec, vol, grouping, m = _open(path, recipe, chunk_bytes, volume_axis)
    lo, hi, nf, n = group_range(vol, grouping, None if m is None else m.data, counts=True)
    out = {"min": float(lo), "max": float(hi), "nonfinite": int(nf), "voxels": int(n)}
    if rec.rescale == "dtype":
        out["dtype_range"] = list(_dtype_range(vol))
    return out


def file_histogram(
    path: str,
    recipe: dict[str, Any],
    lo: float,
    hi: float,
    nbins: int,
    offsets: bool,
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
) -> np.ndarray:
    """One input's histogram over the cohort's [lo, hi]: ``(nbins,)`` counts, or
    ``(2, nbins)`` counts and fixed-point in-bin offset sums with `offsets`."""
    from ..histogram import histogram_graph

    _, vol, grouping, m = _open(path, recipe, chunk_bytes, volume_axis)
    graph = histogram_graph(
        vol.data,
        grouping,
        np.asarray(lo),
        np.asarray(hi),
        int(nbins),
        offsets=offsets,
        mask=None if m is None else m.data,
    )
    return np.asarray(graph.compute()).reshape((2, nbins) if offsets else (nbins,))


def pooled_decision(
    paths: Sequence[str],
    recipe: Recipe,
    run: Callable[..., list[Any]],
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
) -> dict[str, Any]:
    """The cohort's threshold from the pooled histograms of `paths`.

    `run(fn, [args, ...])` runs ``fn(*args)`` for each argument tuple (as tasks on the
    cluster, or in turn) and returns the results in order.

    Returns
    -------
    cohort : dict
        ``threshold_raw``, ``threshold_rescaled`` (None where undecided) and ``record``
        (what every sidecar stores: the cohort's identity, inputs, range and voxels).

    Raises
    ------
    VolbinDataError
        No finite voxel in any input (inside the masks), or a method failing on the pooled
        histogram.
    """
    from ..errors import VolbinDataError
    from ..histogram import bin_means, fine_nbins
    from ..intensity import downstream
    from ..rescale import build_transform
    from ..threshold import (
        BIN_MEAN_METHODS,
        decision_histogram_range,
        histogram_thresholds,
        percentile_decision,
        to_units,
    )
    from ..volume import Grouping

    rd, given = recipe.to_dict(), recipe
    recipe = downstream(recipe)  # each input is normalised by the recipe first
    extra = (chunk_bytes, volume_axis)
    ranges = run(file_range, [(p, rd, *extra) for p in paths])
    if not any(r["max"] >= r["min"] for r in ranges):
        raise VolbinDataError(f"no finite voxel in any of the {len(paths)} inputs of the cohort.")
    dmin = np.asarray(min(r["min"] for r in ranges))
    dmax = np.asarray(max(r["max"] for r in ranges))
    nonfinite = np.asarray(sum(r["nonfinite"] for r in ranges))
    grouping = Grouping((1, 1, 1), _STACK, ())
    fine = None
    if recipe.rescale == "percentile" or recipe.method == "percentile":
        nf = fine_nbins(1, recipe.nbins)
        parts = run(file_histogram, [(p, rd, float(dmin), float(dmax), nf, False, *extra) for p in paths])
        fine = np.sum(parts, axis=0)
    dtype_range = None
    if recipe.rescale == "dtype":
        dtype_range = (min(r["dtype_range"][0] for r in ranges), max(r["dtype_range"][1] for r in ranges))
    tr = build_transform(
        grouping, recipe, dmin, dmax, nonfinite, fine, dtype_range, " in the cohort", warn=False
    )
    if recipe.method == "percentile":
        assert fine is not None and recipe.percentile is not None
        dec = percentile_decision(fine, grouping, tr, recipe.percentile)
        raw, rescaled = dec.raw, dec.rescaled
        nbins = dec.nbins
    else:
        lo, hi, _ = decision_histogram_range(tr)
        nbins = recipe.nbins
        with_means = recipe.method in BIN_MEAN_METHODS
        parts = run(file_histogram, [(p, rd, float(lo), float(hi), nbins, with_means, *extra) for p in paths])
        total = np.sum(parts, axis=0)
        counts, means = (total[0], bin_means(total[0], total[1], lo, hi, ())) if with_means else (total, None)
        out = histogram_thresholds(recipe.method, counts, lo, hi, tr.constant, grouping, means)
        raw, rescaled = to_units(out, tr)

    def num(v: np.ndarray) -> float | None:
        f = float(v)
        return f if np.isfinite(f) else None

    record = {
        "id": cohort_id(paths, given),
        "inputs": len(paths),
        "range": [float(dmin), float(dmax)],
        "voxels": int(sum(r["voxels"] for r in ranges)),
        "threshold_raw": num(raw),
        "threshold_rescaled": num(rescaled),
    }
    return {
        "threshold_raw": num(raw),
        "threshold_rescaled": num(rescaled),
        "nbins": nbins,
        "record": record,
    }
