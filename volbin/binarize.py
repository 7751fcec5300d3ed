"""Applying decisions: thresholds per group, local and hysteresis thresholds, stochastic
(Bernoulli) binarization, and the clean-up of thresholded masks.

`binarize` is the entry point of every method: it measures what the recipe needs (rescale
range, thresholds; computed when it is called, one or two streamed passes) and returns a
lazy binary result.  Foreground is ``volume > threshold`` with the threshold in raw units
(local thresholds and hysteresis with given thresholds compare the rescaled volume); NaN
and ±Inf voxels are always 0.  The clean-up options run `volbin.clean.clean` on the mask.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from typing import Any, overload

import dask.array as da
import numpy as np

from . import _kernels as K
from .errors import VolbinDataError
from .histogram import blocks_now
from .intensity import prepare, relabel
from .masks import ARRAY, mask_fields
from .recipe import CLEAN_METHODS, DITHER_METHODS, HISTOGRAM_METHODS, THRESHOLD_METHODS, Method, Recipe, merge
from .rescale import Transform, apply_transform, fit_transform
from .threshold import Decision, decide, grouping_for, warn_trivial, with_bounds
from .volume import Grouping, Volume, as_volume, fill_eagerly, in_memory, like_input

__all__ = ["ForegroundTally", "apply_thresholds", "binarize", "foreground", "stochastic_graph"]


def foreground(
    block: np.ndarray, threshold: Any, *, upper: Any = None, inclusive: bool = False
) -> np.ndarray:
    """The one definition of foreground: ``block > threshold`` (``>=`` when `inclusive`), and
    ``block <= upper`` when an upper bound is given.  NaN is never foreground.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([1.0, 2.0, 3.0, np.nan])
    >>> foreground(x, 2.0).tolist(), foreground(x, 2.0, inclusive=True).tolist()
    ([False, False, True, False], [False, True, True, False])
    >>> foreground(x, 1.0, upper=2.0).tolist()
    [False, True, False, False]
    """
    fg = np.greater_equal(block, threshold) if inclusive else np.greater(block, threshold)
    if upper is not None:
        fg &= np.less_equal(block, upper)
    return fg


class ForegroundTally:
    """Foreground voxels counted block by block while a mask is computed (by its writer).

    Each block's count is stored under the block's location, so a block computed twice is
    counted once.  `to_dict` (what a sidecar stores) gives the voxel count, its fraction of
    the voxels considered (those inside the mask, or all) and its volume in mm^3, in total and
    per volume of 4D data; blocks not computed yet are counted then, in one more pass.
    """

    def __init__(self, volume_axis: int | None, voxel_mm3: float, masked: bool) -> None:
        self._data: da.Array | None = None
        self._masked = masked
        self._vaxis = volume_axis
        self._voxel_mm3 = float(voxel_mm3)
        self._parts: dict[tuple[int, ...], tuple[int, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def attach(self, data: da.Array) -> da.Array:
        """Count the blocks of `data`, the boolean output whose block function calls `add`."""
        self._data = data
        return data

    @property
    def volume_axis(self) -> int | None:
        return self._vaxis

    def add_counts(self, location: Any, n_fg: np.ndarray, n_in: np.ndarray | int) -> None:
        """Store the foreground counts `n_fg` of the block at array `location` (per volume of
        4D data) among `n_in` voxels considered (per volume, or one count for each)."""
        start = 0 if self._vaxis is None else int(location[self._vaxis][0])
        key = tuple(int(lo) for lo, _ in location)
        n_in = np.broadcast_to(np.asarray(n_in, dtype=np.int64), n_fg.shape)
        with self._lock:
            self._parts[key] = (start, n_fg.astype(np.int64), n_in.astype(np.int64))

    def add(self, location: Any, fg: np.ndarray, inside: np.ndarray | None) -> None:
        """Count block `fg` (and the mask's `inside` voxels) at array `location`."""
        n_fg = _count_per_volume(fg, self._vaxis)
        if inside is None:
            n_in: np.ndarray | int = fg.size // max(n_fg.size, 1)
        else:
            n_in = _count_per_volume(np.broadcast_to(inside, fg.shape), self._vaxis)
        self.add_counts(location, n_fg, n_in)

    @property
    def complete(self) -> bool:
        assert self._data is not None
        return len(self._parts) >= math.prod(len(c) for c in self._data.chunks)

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(foreground voxels, voxels considered) per volume (one entry for 3D data)."""
        assert self._data is not None
        if not self.complete:
            # Not written yet: one streamed pass computes (and so counts) every block.
            self._data.sum().compute()
        n_volumes = 1 if self._vaxis is None else int(self._data.shape[self._vaxis])
        fg = np.zeros(n_volumes, dtype=np.int64)
        n = np.zeros(n_volumes, dtype=np.int64)
        with self._lock:
            for start, f, i in self._parts.values():
                fg[start : start + f.size] += f
                n[start : start + i.size] += i
        return fg, n

    def to_dict(self) -> dict[str, Any]:
        fg, n = self.counts()

        def entry(f: int, total: int) -> dict[str, Any]:
            return {
                "voxels": int(f),
                "fraction": float(f / total) if total else 0.0,
                "mm3": float(f * self._voxel_mm3),
                "of_voxels": int(total),
            }

        rec = entry(int(fg.sum()), int(n.sum()))
        rec["within"] = "mask" if self._masked else "volume"
        if self._vaxis is not None:
            rec["per_volume"] = [entry(int(f), int(t)) for f, t in zip(fg, n, strict=True)]
        return rec

    def summary(self) -> str:
        """``foreground 12345 voxels (23.4% of the mask), 12345 mm^3``."""
        d = self.to_dict()
        text = (
            f"foreground {d['voxels']} voxels ({100 * d['fraction']:.3g}% of the {d['within']}), "
            f"{d['mm3']:.6g} mm^3"
        )
        if "per_volume" in d and len(d["per_volume"]) > 1:
            fr = [100 * v["fraction"] for v in d["per_volume"]]
            text += f"; per volume {min(fr):.3g}%..{max(fr):.3g}%"
        return text


def _count_per_volume(block: np.ndarray, volume_axis: int | None) -> np.ndarray:
    """True voxels of a boolean block, per index along `volume_axis` (one count without it);
    one compiled pass (``np.count_nonzero`` with an ``axis`` is several times slower)."""
    if volume_axis is None:
        return np.array([np.count_nonzero(block)], dtype=np.int64)
    g = np.zeros(block.ndim, dtype=np.int64)
    g[volume_axis] = 1
    x4, g4 = K.as_c4d(block, g)
    out = np.zeros(block.shape[volume_axis], dtype=np.int64)
    K.group_count(x4, g4, out)
    return out


def apply_thresholds(
    data: da.Array,
    grouping: Grouping,
    raw: np.ndarray,
    exclude_nonfinite: bool = True,
    *,
    upper: np.ndarray | None = None,
    inclusive: bool = False,
    invert: bool = False,
    mask: da.Array | None = None,
    tally: ForegroundTally | None = None,
) -> da.Array:
    """Lazy boolean mask of `foreground` with per-group raw thresholds (and upper bounds)
    broadcast per block; `invert` takes the complement of the foreground, and `mask` (boolean,
    the data's shape and chunks) sets everything outside it to 0.  `tally` counts the
    foreground of each block as it is computed."""
    raw = np.asarray(raw, dtype=np.float64)
    up = None if upper is None else np.asarray(upper, dtype=np.float64)

    def scalar(t: np.ndarray, block: np.ndarray) -> Any:
        if t.size == 1:
            t = t.reshape(())
            if np.issubdtype(block.dtype, np.floating) and np.can_cast(np.min_scalar_type(t), block.dtype):
                t = block.dtype.type(t) if float(block.dtype.type(t)) == float(t) else t
        return t

    def run(block: np.ndarray, *inside: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        t = scalar(grouping.block_values(raw, loc), block)
        u = None if up is None else scalar(grouping.block_values(up, loc), block)
        out = foreground(block, t, upper=u, inclusive=inclusive)
        if invert:
            np.logical_not(out, out=out)
        if exclude_nonfinite and np.issubdtype(block.dtype, np.floating):
            out &= np.isfinite(block)
        if inside:
            out &= inside[0]
        if tally is not None:
            tally.add(loc, out, inside[0] if inside else None)
        return out

    args = (data,) if mask is None else (data, mask)
    result = da.map_blocks(run, *args, dtype=bool, meta=np.empty((0,) * data.ndim, bool))
    if mask is None and in_memory(data) is not None:
        flags = (
            (K.ABOVE_INCLUSIVE if inclusive else 0)
            | (0 if up is None else K.ABOVE_UPPER)
            | (K.ABOVE_INVERT if invert else 0)
            | (K.ABOVE_FINITE if exclude_nonfinite and np.issubdtype(data.dtype, np.floating) else 0)
        )
        fill_eagerly(result, lambda: _fill_thresholds(data, grouping, raw, up, flags, tally))
    return result


def _fill_thresholds(
    data: da.Array,
    grouping: Grouping,
    raw: np.ndarray,
    up: np.ndarray | None,
    flags: int,
    tally: ForegroundTally | None,
) -> np.ndarray:
    """`apply_thresholds` of data wrapped from a numpy array, computed block by block straight
    into the output (one compiled pass that also counts the foreground), in the input's
    memory order, as ``x > t`` keeps it."""
    arr = in_memory(data)
    assert arr is not None
    order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    out = np.empty(data.shape, dtype=bool, order=order)
    vaxis = tally.volume_axis if tally is not None else None

    def one(block: np.ndarray, loc: list[tuple[int, int]]) -> None:
        o = out[tuple(slice(lo, hi) for lo, hi in loc)]
        t = _per_block(grouping.block_values(raw, loc), block.shape)
        u = None if up is None else _per_block(grouping.block_values(up, loc), block.shape)
        tstrides = _elem_strides(t)
        cstrides = np.zeros(block.ndim, dtype=np.int64)
        n_counts = 1
        if vaxis is not None:
            cstrides[vaxis], n_counts = 1, block.shape[vaxis]
        counts = np.zeros(n_counts, dtype=np.int64)
        x, target, copy_back = K.native(block), o, False
        if not (x.flags.c_contiguous and o.flags.c_contiguous):
            if x.flags.f_contiguous and o.flags.f_contiguous:
                x, target, tstrides, cstrides = x.T, o.T, tstrides[::-1], cstrides[::-1]
            else:
                x, target, copy_back = np.ascontiguousarray(x), np.empty(x.shape, dtype=bool), True
        x, (tstrides, cstrides) = K.merge_rows(x, tstrides, cstrides)
        target = target.reshape(x.shape)
        K.group_above(
            x, tstrides, t.ravel(), None if u is None else u.ravel(), flags, target, cstrides, counts
        )
        if copy_back:
            o[...] = target.reshape(o.shape)
        if tally is not None:
            tally.add_counts(loc, counts, block.size // max(n_counts, 1))

    blocks_now(data, one)
    return out


def _per_block(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-group `values` cut to a block (1 on axes without groups), as contiguous float64."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    return v.reshape((1,) * (len(shape) - v.ndim) + v.shape)


def _elem_strides(values: np.ndarray) -> np.ndarray:
    """Element strides of contiguous `values`, 0 on its axes of length 1 (broadcast)."""
    strides = np.array(values.strides, dtype=np.int64) // values.itemsize
    strides[np.array(values.shape) == 1] = 0
    return strides


def _masked(data: da.Array, mask: da.Array | None, tally: ForegroundTally | None) -> da.Array:
    """`data` (boolean) set to 0 outside `mask`, counted by `tally`."""
    if mask is None and tally is None:
        return data

    def run(block: np.ndarray, *inside: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        out = block & inside[0] if inside else block
        if tally is not None:
            tally.add(block_info[0]["array-location"], out, inside[0] if inside else None)  # type: ignore[index]
        return out

    args = (data,) if mask is None else (data, mask)
    return da.map_blocks(run, *args, dtype=bool, meta=np.empty((0,) * data.ndim, bool))


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


@overload
def binarize(
    volume: np.ndarray,
    method: Method | None = ...,
    *,
    recipe: Recipe | None = ...,
    volume_axis: int | None = ...,
    mask: Any = ...,
    stats_mask: Any = ...,
    **options: Any,
) -> np.ndarray: ...
@overload
def binarize(
    volume: da.Array,
    method: Method | None = ...,
    *,
    recipe: Recipe | None = ...,
    volume_axis: int | None = ...,
    mask: Any = ...,
    stats_mask: Any = ...,
    **options: Any,
) -> da.Array: ...
@overload
def binarize(
    volume: Volume,
    method: Method | None = ...,
    *,
    recipe: Recipe | None = ...,
    volume_axis: int | None = ...,
    mask: Any = ...,
    stats_mask: Any = ...,
    **options: Any,
) -> Volume: ...


def binarize(
    volume: Any,
    method: Method | None = None,
    *,
    recipe: Recipe | None = None,
    volume_axis: int | None = None,
    mask: Any = None,
    stats_mask: Any = None,
    **options: Any,
) -> Any:
    """Binarize a 3D/4D volume by a threshold method, stochastically, or by dithering;
    optionally clean the mask of a threshold method.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
        numpy in gives numpy out, dask gives dask, Volume gives a Volume whose `steps`
        record the recipe and the thresholds used per group.
    method : str, optional
        ``otsu`` (default), ``yen``, ``isodata``, ``li``, ``minimum``, ``triangle``, ``mean``
        (and the other histogram methods of `volbin.Recipe`), ``value`` (with `threshold`),
        ``local`` (scikit-image's local thresholds on the rescaled volume, `local_method`),
        ``hysteresis`` (`low` and `high`, or `low_method` and `high_method`),
        ``stochastic``, ``dither`` or ``ordered``.
    recipe : Recipe, optional
        A whole recipe; `method` and `options` given too override its fields (see
        `volbin.recipe.merge`: fields of the recipe the final method does not use are reset,
        options it does not use are refused).
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3, NIfTI order).
    mask : str, path, ndarray, dask array or Volume, optional
        Compute the statistics (rescale range or percentiles, thresholds) inside this mask
        and write 0 outside it.  A NIfTI/.npy/zarr file or an array on the input's grid
        (same shape; a file's affine within 1e-3 mm), non-zero inside; a 3D mask serves
        every volume of 4D input.  ``"nonzero"``: the input's own non-zero voxels
        (fslmaths ``-thrP`` style).  Threshold methods and ``stochastic`` only.
    stats_mask : same as `mask`, optional
        Compute the statistics inside this mask and apply the thresholds everywhere.
    **options
        `Recipe` fields: ``normalize`` (``zscore``, ``match``, ``nyul``, ``whitestripe``,
        ``n4``: MRI normalisation first, statistics inside `mask` or `stats_mask`, by
        default the non-zero voxels) and its options (``reference``, ``reference_mask``,
        arrays too; ``landmarks``; ``contrast``, ``tau``, ...; the N4 settings), ``scope``,
        ``axis``, ``rescale``, ``percentiles``, ``value_range``, ``curve`` (``clahe``
        equalises each whole 3D volume, in memory, with ``clip_limit``, ``kernel_size``
        or ``kernel_mm``; its thresholds are in rescaled units), ``gamma``,
        ``threshold``, ``units`` (``normalized``: in the units of the normalisation),
        ``upper``
        (foreground ``threshold < x <= upper``), ``inclusive`` (``x >= threshold``),
        ``invert`` (the complement, inside the mask), ``threshold_from`` (a sidecar whose
        raw thresholds to apply; its method unless `method` is given), ``nbins``,
        ``seed``, the dithering options, the local options (``local_method``,
        ``block_size``, ``offset``, ``k``, ``r``; 2D windows with ``scope="slice"``), the
        hysteresis options (``low``, ``high`` in `units`, ``low_method``, ``high_method``,
        ``connectivity``) and the clean-up options of every thresholding method
        (``keep_largest``, ``min_size``, ``fill_holes``, ``opening``, ``closing``,
        ``radius_units``, ``connectivity``; see `volbin.clean.clean`).

    Returns
    -------
    mask : same kind as `volume`, bool
        Lazy for dask and Volume input.  Per-group statistics are computed on the call.
        A numpy result of a threshold method keeps the input's memory order (C or Fortran),
        as ``volume > t`` does.

    Raises
    ------
    VolbinDataError
        No finite voxel in a volume (or the stack, inside the mask), a threshold method
        that fails, an empty mask, an all-zero input with ``mask="nonzero"``, a mask on
        another grid, or thresholds of `threshold_from` for another scope or group count.
    ValueError
        A bad option value (the message names it).

    Warns
    -----
    VolbinWarning
        The mask is empty or full in a volume (or in every slice), e.g. a `threshold`
        outside the data's range; the message names that range in the threshold's units.

    Notes
    -----
    The recipe runs in the order normalize -> rescale -> curve -> decide.  After a
    normalisation the thresholds compare the normalised volume: a decision records them as
    ``threshold_normalized`` (``units='raw'`` is refused).  CLAHE and N4 hold one whole 3D
    volume in memory; their output is computed once into a temporary file that the
    following passes read (`volbin.io.spill`).

    Examples
    --------
    >>> import numpy as np, volbin
    >>> from skimage.filters import threshold_otsu
    >>> x = np.random.default_rng(0).gamma(2.0, size=(16, 16, 16))
    >>> mask = volbin.binarize(x, "otsu")
    >>> bool((mask == (x > threshold_otsu(x))).all())
    True

    Statistics inside a mask, zero outside it:

    >>> inside = x > 1.0
    >>> masked = volbin.binarize(x, "otsu", mask=inside)
    >>> bool((masked == (inside & (x > threshold_otsu(x[inside])))).all())
    True

    Local (Sauvola) thresholds of the rescaled volume, and hysteresis:

    >>> from skimage.filters import apply_hysteresis_threshold, threshold_sauvola
    >>> r = volbin.rescale(x)
    >>> local = volbin.binarize(x, "local", local_method="sauvola", block_size=5)
    >>> bool((local == (r > threshold_sauvola(r, 5))).all())
    True
    >>> hyst = volbin.binarize(x, "hysteresis", low=0.2, high=0.5)
    >>> bool((hyst == apply_hysteresis_threshold(r, 0.2, 0.5)).all())
    True

    A z-score inside a mask, then a threshold in z-score units:

    >>> z = ((x - x[inside].mean()) / x[inside].std()).astype(np.float32)
    >>> m = volbin.binarize(x, "value", threshold=1.0, units="normalized", normalize="zscore", mask=inside)
    >>> bool((m == (inside & (z > 1.0))).all())
    True
    """
    fields, array = mask_fields(mask, stats_mask)
    options = {**options, **fields}
    arrays: dict[str, Any] = {}
    for name in ("reference", "reference_mask"):  # in-memory volumes of normalize="match"
        value = options.get(name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            options[name], arrays[name] = ARRAY, value
    if method is None and recipe is None and options.get("threshold_from") is not None:
        method = sidecar_method(options["threshold_from"])
    recipe = merge(recipe, options, method)
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    result = binarize_volume(vol, recipe, mask=array, arrays=arrays)
    return like_input(result, kind)


def sidecar_method(path: Any) -> str:
    """The threshold method recorded in the sidecar `path` (what `threshold_from` applies)."""
    from .io import read_sidecar

    record = read_sidecar(path)
    for step in reversed(record.get("steps") or []):
        if isinstance(step, dict) and isinstance(step.get("decision"), dict):
            method = step["decision"].get("method")
            if method in THRESHOLD_METHODS:
                return str(method)
    raise VolbinDataError(f"threshold_from {path}: the sidecar records no thresholds (no threshold method).")


def binarize_volume(
    vol: Volume,
    recipe: Recipe,
    *,
    mask: Any = None,
    cohort: dict[str, Any] | None = None,
    arrays: dict[str, Any] | None = None,
) -> Volume:
    """`binarize` on a Volume, returning a Volume (lazy data, decisions in `steps`).

    `mask` is the in-memory mask a recipe records as ``"<array>"`` (`arrays`: the
    in-memory ``reference`` and ``reference_mask`` of ``normalize="match"``); `cohort` the
    pooled decision of a cohort (``threshold_raw``, ``threshold_rescaled`` and what to
    record), from `volbin.batch`.  The recipe runs in the order normalize -> rescale ->
    curve -> decide (`volbin.intensity.prepare` does the first stage, and CLAHE).
    """
    tally = ForegroundTally(vol.volume_axis, math.prod(vol.zooms), recipe.mask is not None)
    if recipe.method in DITHER_METHODS:
        from .dither import dither_volume

        stage = prepare(vol, recipe, arrays=arrays)
        vol, rec = stage.volume, stage.recipe
        tr = fit_transform(vol, vol.grouping("stack" if rec.scope == "stack" else "volume"), rec)
        warn_trivial(tr, rec)
        out = dither_volume(vol, rec, transform=tr)
        step = dict(
            out.steps[-1], recipe=recipe.to_dict(), rescale=stage.rescale_record(tr), foreground=tally
        )
        data = tally.attach(_masked(out.data, None, tally))
        return dataclasses.replace(out, data=data, steps=(*out.steps[:-1], step))
    if recipe.scope == "cohort" and recipe.threshold_from is None and cohort is None:
        # Refused before any pass over the data.
        decide(vol, vol.grouping("stack"), None, recipe)  # type: ignore[arg-type]
    stage = prepare(vol, recipe, mask, arrays)
    vol, m, given = stage.volume, stage.mask, recipe
    recipe = stage.recipe  # what follows the intensity stage
    grouping = grouping_for(vol, recipe)
    tr = fit_transform(vol, grouping, recipe, m)
    step: dict[str, Any] = {
        "step": "binarize",
        "recipe": given.to_dict(),
        "rescale": stage.rescale_record(tr),
        "nonfinite_voxels": int(tr.n_nonfinite.sum()),
    }
    if m is not None:
        step["mask"] = _mask_record(m, recipe)
    zero_outside = m.data if m is not None and recipe.mask is not None else None
    cleaning = _clean_options(recipe, vol)
    count = None if cleaning else tally  # the tally counts the final, cleaned, mask
    if recipe.method == "stochastic":
        warn_trivial(tr, given)
        data = stochastic_graph(vol.data, tr, recipe.seed, vol.volume_axis)
        data = _masked(data, zero_outside, tally)
        step["decision"] = {"method": "stochastic", "seed": recipe.seed}
    elif recipe.method in ("local", "hysteresis"):
        if recipe.method == "local":
            data, step["decision"] = _local(vol, tr, recipe)
        else:
            data, decision = _hysteresis(vol, grouping, tr, recipe, m)
            step["decision"] = relabel(decision, stage.thresholded)
        if tr.n_nonfinite.any():
            data = _finite_only(data, vol.data)
        data = _masked(data, zero_outside, count)
    else:
        assert recipe.method in THRESHOLD_METHODS
        if cohort is not None and recipe.threshold_from is None:
            dec = _cohort_decision(grouping, tr, recipe, cohort)
        else:
            dec = decide(vol, grouping, tr, recipe, m, thresholded=stage.thresholded)
        if dec.upper_raw is None and not dec.invert and recipe.method in ("value", *HISTOGRAM_METHODS):
            warn_trivial(tr, given, dec.raw)
        data = apply_thresholds(
            vol.data,
            grouping,
            dec.raw,
            bool(tr.n_nonfinite.any()),
            upper=dec.upper_raw,
            inclusive=dec.inclusive,
            invert=dec.invert,
            mask=zero_outside,
            tally=count,
        )
        step["decision"] = relabel(dec.record(), stage.thresholded)
    if cleaning:
        from .clean import clean

        cleaned = clean(data, **cleaning, volume_axis=vol.volume_axis)
        step["clean"] = cleaned.record()["steps"]
        # Closing and hole filling may add voxels outside `mask`: they stay 0 there.
        data = _masked(cleaned.mask, zero_outside, tally)
    step["foreground"] = tally
    return vol.derive(tally.attach(data), step)


def _clean_options(recipe: Recipe, vol: Volume) -> dict[str, Any] | None:
    """The keywords of `volbin.clean.clean` the recipe asks for, or None (no clean-up)."""
    if recipe.method not in CLEAN_METHODS:
        return None
    steps = {
        "keep_largest": recipe.keep_largest,
        "min_size": recipe.min_size,
        "fill_holes": recipe.fill_holes or False,
        "opening": recipe.opening,
        "closing": recipe.closing,
    }
    if not any(steps.values()):
        return None
    spacing = vol.zooms if recipe.radius_units == "mm" else None
    return {**steps, "connectivity": recipe.connectivity, "spacing": spacing, "axis": recipe.axis}


def _finite_only(data: da.Array, raw: da.Array) -> da.Array:
    """`data` set to 0 where `raw` is not finite."""
    if not np.issubdtype(raw.dtype, np.floating):
        return data
    return da.map_blocks(
        lambda b, x: b & np.isfinite(x), data, raw, dtype=bool, meta=np.empty((0,) * data.ndim, bool)
    )


def _local(vol: Volume, tr: Transform, recipe: Recipe) -> tuple[da.Array, dict[str, Any]]:
    """``rescaled > threshold`` with scikit-image's local threshold of each voxel."""
    from .local import threshold_local

    method = recipe.local_method
    if method in ("niblack", "sauvola"):
        kw: dict[str, Any] = {"k": recipe.k}
        if method == "sauvola" and recipe.r is not None:
            kw["r"] = recipe.r
    else:
        kw = {"offset": recipe.offset}
    dims = 2 if recipe.scope == "slice" else 3
    x = apply_transform(vol.data, tr)
    out = threshold_local(
        vol.derive(x), method, block_size=recipe.block_size, dims=dims, axis=recipe.axis, rescale=None, **kw
    )
    rec = {k: v for k, v in out.steps[-1].items() if k not in ("step", "method", "rescale", "scope")}
    decision = {
        "method": "local",
        "local_method": method,
        **rec,
        "scope": recipe.scope,
        "comparison": ">",
        "compared": "rescaled",
    }
    # The threshold's chunks may differ from x's (map_overlap enlarges small edge chunks):
    # an element-wise comparison aligns them.
    return (x > out.data).rechunk(vol.data.chunks), decision


def _hysteresis(
    vol: Volume, grouping: Grouping, tr: Transform, recipe: Recipe, m: Any
) -> tuple[da.Array, dict[str, Any]]:
    """Hysteresis with thresholds given (in `recipe.units`) or decided by histogram methods.

    Given thresholds in rescaled units compare the rescaled volume (`volbin.local`'s
    hysteresis on it equals scikit-image's); otherwise raw voxels are compared with raw
    thresholds, per group, as every histogram method is applied.
    """
    from .local import apply_hysteresis_threshold

    shape = grouping.group_shape
    decisions: dict[str, Decision] = {}
    for side in ("low", "high"):
        value, by = getattr(recipe, side), getattr(recipe, f"{side}_method")
        if by is not None:
            decisions[side] = decide(vol, grouping, tr, recipe.with_method(by), m)
            continue
        t = np.full(shape, float(value))
        if recipe.units == "raw":
            decisions[side] = Decision(grouping, "value", t, tr.from_raw(t))
        else:
            raw = tr.to_raw(t) if tr.monotone else np.full(shape, np.nan)
            decisions[side] = Decision(grouping, "value", raw, t)
    lo, hi = decisions["low"], decisions["high"]
    given = recipe.low_method is None and recipe.high_method is None
    rescaled = (given and recipe.units == "rescaled") or not tr.monotone
    if rescaled:
        x = apply_transform(vol.data, tr)
        pair = [d.rescaled for d in (lo, hi)]
    else:
        x = vol.data
        pair = [d.raw for d in (lo, hi)]
    if tr.n_nonfinite.any():
        # Non-finite voxels are never foreground, so they connect nothing either.
        x = da.map_blocks(
            lambda b, r: np.where(np.isfinite(r), b, np.nan),
            x,
            vol.data,
            dtype=np.result_type(x.dtype, np.float32),
        )
    thresholds = [_group_values(x, grouping, t) for t in pair]
    out = apply_hysteresis_threshold(
        vol.derive(x), thresholds[0], thresholds[1], connectivity=recipe.connectivity
    )
    lo_rec, hi_rec = lo.record(), hi.record()
    nbins = [d.nbins for d in (lo, hi) if d.nbins is not None]
    decision = {
        "method": "hysteresis",
        "nbins": nbins[0] if nbins else None,
        "scope": recipe.scope,
        "group_axes": lo_rec["group_axes"],
        "group_shape": lo_rec["group_shape"],
        "low_from": recipe.low_method or "value",
        "low_raw": lo_rec["threshold_raw"],
        "low_rescaled": lo_rec["threshold_rescaled"],
        "high_from": recipe.high_method or "value",
        "high_raw": hi_rec["threshold_raw"],
        "high_rescaled": hi_rec["threshold_rescaled"],
        "compared": "rescaled" if rescaled else "raw",
        "comparison": ">",
        "connectivity": recipe.connectivity,
        "components": out.steps[-1]["components"],
        "kept": out.steps[-1]["kept"],
    }
    return out.data, decision


def _group_values(x: da.Array, grouping: Grouping, values: np.ndarray) -> Any:
    """Per-group `values` as a scalar (one group) or a lazy array of `x`'s shape and chunks."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:
        return float(values.reshape(()))

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        return np.broadcast_to(grouping.block_values(values, loc), block.shape).astype(np.float64)

    return da.map_blocks(run, x, dtype=np.float64, meta=np.empty((0,) * x.ndim, np.float64))


def _mask_record(m: Any, recipe: Recipe) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "role": "mask" if recipe.mask is not None else "stats_mask",
        "source": m.source,
        "outside": "0" if recipe.mask is not None else "thresholded",
    }
    if m.source not in ("nonzero", "array"):
        from .io import input_identity

        try:
            rec["size"], rec["mtime_ns"] = input_identity(m.source)
        except OSError:
            pass
    return rec


def _cohort_decision(grouping: Grouping, tr: Transform, recipe: Recipe, cohort: dict[str, Any]) -> Decision:
    """The pooled threshold of a cohort, for one of its inputs."""
    shape = grouping.group_shape
    raw = np.full(shape, np.inf if cohort["threshold_raw"] is None else float(cohort["threshold_raw"]))
    t = cohort.get("threshold_rescaled")
    rescaled = np.full(shape, np.nan if t is None else float(t))
    source = {"cohort": cohort.get("record", {})}
    dec = Decision(grouping, recipe.method, raw, rescaled, cohort.get("nbins"), source=source)
    if cohort.get("upper_raw") is not None:
        dec = dataclasses.replace(
            dec,
            upper_raw=np.full(shape, float(cohort["upper_raw"])),
            upper_rescaled=np.full(shape, float(cohort.get("upper_rescaled", np.nan))),
        )
    return (
        with_bounds(dec, tr, recipe.replace(upper=None))
        if recipe.upper is not None
        else with_bounds(dec, tr, recipe)
    )
