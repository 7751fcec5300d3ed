"""Applying decisions: thresholds per group, and stochastic (Bernoulli) binarization.

`binarize` is the entry point of every method: it measures what the recipe needs (rescale
range, thresholds; computed when it is called, one or two streamed passes) and returns a
lazy binary result.  Foreground is ``volume > threshold`` with the threshold in raw units;
NaN and ±Inf voxels are always 0.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from . import _kernels as K
from .recipe import DITHER_METHODS, HISTOGRAM_METHODS, Recipe, merge
from .rescale import Transform, fit_transform
from .threshold import decide, warn_trivial
from .volume import Grouping, Volume, as_volume, like_input

__all__ = ["apply_thresholds", "binarize", "foreground", "stochastic_graph"]


def foreground(block: np.ndarray, threshold: Any) -> np.ndarray:
    """The one definition of foreground: ``block > threshold`` (NaN is never foreground)."""
    return np.greater(block, threshold)


def apply_thresholds(
    data: da.Array, grouping: Grouping, raw: np.ndarray, exclude_nonfinite: bool = True
) -> da.Array:
    """Lazy boolean mask ``data > raw`` with per-group raw thresholds broadcast per block."""
    raw = np.asarray(raw, dtype=np.float64)

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        t = grouping.block_values(raw, block_info[0]["array-location"])  # type: ignore[index]
        if t.size == 1:
            t = t.reshape(())
            if np.issubdtype(block.dtype, np.floating) and np.can_cast(np.min_scalar_type(t), block.dtype):
                t = block.dtype.type(t) if float(block.dtype.type(t)) == float(t) else t
        mask = foreground(block, t)
        if exclude_nonfinite and np.issubdtype(block.dtype, np.floating):
            mask &= np.isfinite(block)
        return mask

    return da.map_blocks(run, data, dtype=bool, meta=np.empty((0,) * data.ndim, bool))


def stochastic_graph(data: da.Array, tr: Transform, seed: int, volume_axis: int | None = None) -> da.Array:
    """Lazy Bernoulli mask: 1 with probability equal to the rescaled intensity.

    Uniforms come from a counter-based generator keyed by (`seed`, voxel index), the index
    running over (volume, x, y, z) in C order whatever the array's axis order, so the result
    is the same for any chunking, any number of workers, and for a (T, X, Y, Z) stack as
    for the same data stored (X, Y, Z, T).
    """
    key = K.seed_key(seed, stream=1)
    # Canonical axis order: the volume axis first, then x, y, z.
    perm = list(range(data.ndim))
    if volume_axis is not None:
        perm = [volume_axis] + [a for a in range(data.ndim) if a != volume_axis]
    inverse = np.argsort(perm)
    shape4 = np.array([1] * (4 - data.ndim) + [data.shape[a] for a in perm], dtype=np.int64)

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        p = tr.apply(block, loc)
        if np.issubdtype(block.dtype, np.floating):
            # The rescale maps +Inf to 1 (always drawn); NaN probabilities give 0, and
            # non-finite voxels are 0 in every output.
            p[~np.isfinite(block)] = np.nan
        pc = np.ascontiguousarray(np.transpose(p, perm))
        p4 = pc.reshape((1,) * (4 - pc.ndim) + pc.shape)
        offset4 = np.array([0] * (4 - len(loc)) + [loc[a][0] for a in perm], dtype=np.int64)
        out = np.empty(p4.shape, dtype=bool)
        K.bernoulli_block(p4, key, shape4, offset4, out)
        return np.transpose(out.reshape(pc.shape), inverse)

    return da.map_blocks(run, data, dtype=bool, meta=np.empty((0,) * data.ndim, bool))


def binarize(
    volume: Any,
    method: str | None = None,
    *,
    recipe: Recipe | None = None,
    volume_axis: int | None = None,
    **options: Any,
) -> Any:
    """Binarize a 3D/4D volume by a threshold method, stochastically, or by dithering.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
        numpy in gives numpy out, dask gives dask, Volume gives a Volume whose `steps`
        record the recipe and the thresholds used per group.
    method : str, optional
        ``otsu`` (default), ``yen``, ``isodata``, ``li``, ``minimum``, ``triangle``, ``mean``,
        ``value`` (with `threshold`), ``stochastic``, ``dither`` or ``ordered``.
    recipe : Recipe, optional
        A whole recipe; `method` and `options` given too override its fields (see
        `volbin.recipe.merge`: fields of the recipe the final method does not use are reset,
        options it does not use are refused).
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3, NIfTI order).
    **options
        `Recipe` fields: ``scope``, ``axis``, ``rescale``, ``percentiles``,
        ``value_range``, ``curve``, ``gamma``, ``threshold``, ``units``, ``nbins``,
        ``seed``, and the dithering options.

    Returns
    -------
    mask : same kind as `volume`, bool
        Lazy for dask and Volume input.  Per-group statistics are computed on the call.

    Raises
    ------
    VolbinDataError
        No finite voxel in a volume (or the stack), or a threshold method that fails.
    ValueError
        A bad option value (the message names it).

    Warns
    -----
    VolbinWarning
        The mask is empty or full in a volume (or in every slice), e.g. a `threshold`
        outside the data's range; the message names that range in the threshold's units.

    Examples
    --------
    >>> import numpy as np, volbin
    >>> from skimage.filters import threshold_otsu
    >>> x = np.random.default_rng(0).gamma(2.0, size=(16, 16, 16))
    >>> mask = volbin.binarize(x, "otsu")
    >>> bool((mask == (x > threshold_otsu(x))).all())
    True
    """
    recipe = merge(recipe, options, method)
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    result = binarize_volume(vol, recipe)
    return like_input(result, kind)


def binarize_volume(vol: Volume, recipe: Recipe) -> Volume:
    """`binarize` on a Volume, returning a Volume (lazy data, decisions in `steps`)."""
    if recipe.method in DITHER_METHODS:
        from .dither import dither_volume

        tr = fit_transform(vol, vol.grouping("stack" if recipe.scope == "stack" else "volume"), recipe)
        warn_trivial(tr, recipe)
        return dither_volume(vol, recipe, transform=tr)
    grouping = vol.grouping(recipe.scope, recipe.axis)
    tr = fit_transform(vol, grouping, recipe)
    step: dict[str, Any] = {
        "step": "binarize",
        "recipe": recipe.to_dict(),
        "rescale": tr.record(),
        "nonfinite_voxels": int(tr.n_nonfinite.sum()),
    }
    if recipe.method == "stochastic":
        warn_trivial(tr, recipe)
        data = stochastic_graph(vol.data, tr, recipe.seed, vol.volume_axis)
        step["decision"] = {"method": "stochastic", "seed": recipe.seed}
    else:
        assert recipe.method in (*HISTOGRAM_METHODS, "value")
        dec = decide(vol, grouping, tr, recipe)
        warn_trivial(tr, recipe, dec.raw)
        data = apply_thresholds(vol.data, grouping, dec.raw, bool(tr.n_nonfinite.any()))
        step["decision"] = dec.record()
    return vol.derive(data, step)
