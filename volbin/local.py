"""Local thresholds (a threshold per voxel from its neighbourhood) and hysteresis.

`threshold_local` computes scikit-image's local thresholds (``threshold_local`` with the
gaussian, mean and median methods, ``threshold_niblack``, ``threshold_sauvola``) on the
rescaled volume, in 3D or in each 2D slice, block by block with overlaps of the window's
reach (``dask.array.map_overlap``, as dask-image wraps scipy filters).  Results do not
depend on the chunking.  `apply_hysteresis_threshold` keeps the components of ``volume >
low`` that hold a voxel above ``high``, with components merged across chunk borders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
from scipy import ndimage
from skimage import filters
from skimage.util import dtype_limits

from .components import label_components, structure
from .recipe import Recipe
from .rescale import apply_transform, fit_transform
from .volume import Volume, as_volume, like_input

__all__ = ["LOCAL_METHODS", "apply_hysteresis_threshold", "binarize_local", "threshold_local"]

LOCAL_METHODS = ("gaussian", "mean", "median", "niblack", "sauvola")
_MODES = ("reflect", "constant", "nearest", "mirror", "wrap")
#: scikit-image's Gaussian truncation (in standard deviations).
_TRUNCATE = 4.0


def _float_type(dtype: np.dtype) -> type:
    """The float type scikit-image computes in for `dtype` (float32 stays float32)."""
    return np.float32 if dtype in (np.float16, np.float32) else np.float64


def _odd_sizes(name: str, value: Any, n: int) -> tuple[int, ...]:
    sizes: tuple[Any, ...] = (value,) * n if np.isscalar(value) else tuple(value)
    ok = len(sizes) == n and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 and s % 2 == 1 for s in sizes
    )
    if not ok:
        raise ValueError(f"`{name}` must be an odd positive int or {n} of them; got {value!r}.")
    return tuple(int(s) for s in sizes)


def _filtered_axes(vol: Volume, dims: int, axis: Any) -> tuple[int, ...]:
    if dims not in (2, 3):
        raise ValueError(f"`dims` must be 2 (each slice) or 3; got {dims!r}.")
    spatial = vol.spatial_axes
    if dims == 3:
        return spatial
    plane = vol.axis_index(axis)
    return tuple(a for a in spatial if a != plane)


def _per_axis(values: Sequence[Any], axes: tuple[int, ...], ndim: int, fill: Any) -> tuple[Any, ...]:
    out = [fill] * ndim
    for a, v in zip(axes, values, strict=True):
        out[a] = v
    return tuple(out)


def _window_mean(x: np.ndarray, sizes: tuple[int, ...], mode: str, cval: float, ft: type) -> np.ndarray:
    """scipy's uniform filter with each window summed directly (not by a running sum).

    ``uniform_filter1d`` updates a running sum along each line, so a value depends on where
    the line starts: direct sums make every voxel's arithmetic the same in any block.
    """
    out = x
    for a, b in enumerate(sizes):
        if b > 1:
            out = ndimage.correlate1d(out, np.full(b, 1.0 / b), axis=a, output=ft, mode=mode, cval=cval)
    return out if out is not x else x.copy()


def _mean_std(x: np.ndarray, sizes: tuple[int, ...], ft: type) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's `_mean_std` (window mean and standard deviation, mirrored edges), with
    windows summed directly in float64 rather than from integral images of the whole array."""
    s1 = x.astype(np.float64)
    s2 = (x * x).astype(np.float64)
    for a, b in enumerate(sizes):
        if b > 1:
            w = np.ones(b)
            s1 = ndimage.correlate1d(s1, w, axis=a, mode="mirror")
            s2 = ndimage.correlate1d(s2, w, axis=a, mode="mirror")
    n = int(np.prod(sizes))
    m: np.ndarray = s1.astype(ft)
    m /= n
    g2 = s2.astype(ft)
    g2 /= n
    s = np.sqrt(np.clip(g2 - m * m, 0, None))
    return m, s


def _depths(method: str, sizes: tuple[int, ...], sigma: tuple[float, ...]) -> tuple[int, ...]:
    if method == "gaussian":
        return tuple(int(_TRUNCATE * s + 0.5) for s in sigma)
    return tuple(b // 2 for b in sizes)


def _rescaled(vol: Volume, rescale: str | None, scope: str, axis: Any, options: dict[str, Any]) -> da.Array:
    if rescale is None:
        ft = _float_type(vol.dtype)
        return vol.data.astype(ft)
    if scope == "slice":
        options = {"axis": axis, **options}
    recipe = Recipe(rescale=rescale, scope=scope, **options)
    grouping = vol.grouping(recipe.scope, recipe.axis)
    tr = fit_transform(vol, grouping, recipe)
    return apply_transform(vol.data, tr)


def _local_graph(
    x: da.Array,
    method: str,
    sizes: tuple[int, ...],
    sigma: tuple[float, ...],
    offset: float,
    mode: str,
    cval: float,
    k: float,
    r: float,
) -> da.Array:
    ft = _float_type(x.dtype)

    def run(block: np.ndarray) -> np.ndarray:
        if method in ("gaussian", "median"):
            param = sigma if method == "gaussian" else None
            return filters.threshold_local(block, sizes, method, offset, mode, param, cval)
        b: np.ndarray = block.astype(ft, copy=False)
        if method == "mean":
            return _window_mean(b, sizes, mode, cval, ft) - offset
        m, s = _mean_std(b, sizes, ft)
        if method == "niblack":
            return m - k * s
        return m * (1 + k * ((s / r) - 1))

    depth = list(_depths(method, sizes, sigma))
    chunks = list(x.chunks)
    for a, d in enumerate(depth):
        if d >= x.shape[a]:
            # A window wider than the axis: one block along it, as scipy sees the whole line.
            chunks[a] = (x.shape[a],)
            depth[a] = 0
    x = x.rechunk(tuple(chunks))
    # Edge blocks see the array's edge as scipy does, except that wrapping needs the far side.
    boundary = "periodic" if mode == "wrap" and method in ("gaussian", "mean", "median") else "none"
    meta = np.empty((0,) * x.ndim, ft)
    return da.map_overlap(run, x, depth=dict(enumerate(depth)), boundary=boundary, dtype=ft, meta=meta)


def _check_options(method: str, given: dict[str, Any]) -> None:
    uses = {
        "gaussian": ("offset", "mode", "cval", "param"),
        "mean": ("offset", "mode", "cval"),
        "median": ("offset", "mode", "cval"),
        "niblack": ("k",),
        "sauvola": ("k", "r"),
    }[method]
    unused = [name for name, v in given.items() if v is not None and name not in uses]
    if unused:
        raise ValueError(f"method {method!r} does not use {', '.join(f'`{u}`' for u in unused)}.")


def _threshold_graph(
    vol: Volume,
    method: str,
    block_size: Any,
    offset: float | None,
    mode: str | None,
    cval: float | None,
    param: Any,
    k: float | None,
    r: float | None,
    dims: int,
    axis: Any,
    rescale: str | None,
    scope: str,
    rescale_options: dict[str, Any],
) -> tuple[da.Array, da.Array, dict[str, Any]]:
    if method not in LOCAL_METHODS:
        raise ValueError(f"`method` must be one of {', '.join(LOCAL_METHODS)}; got {method!r}.")
    _check_options(method, {"offset": offset, "mode": mode, "cval": cval, "param": param, "k": k, "r": r})
    if mode is not None and mode not in _MODES:
        raise ValueError(f"`mode` must be one of {', '.join(_MODES)}; got {mode!r}.")
    axes = _filtered_axes(vol, dims, axis)
    sizes3 = _odd_sizes("block_size", block_size, len(axes))
    sizes = _per_axis(sizes3, axes, vol.ndim, 1)
    if param is None:
        sigma3: tuple[float, ...] = tuple((b - 1) / 6.0 for b in sizes3)
    else:
        values: Any = (param,) * len(axes) if np.isscalar(param) else param
        sigma3 = tuple(float(s) for s in values)
        if len(sigma3) != len(axes) or not all(np.isfinite(s) and s >= 0 for s in sigma3):
            raise ValueError(
                f"`param` (Gaussian sigma) must be non-negative, 1 or {len(axes)} values; got {param!r}."
            )
    sigma = _per_axis([float(s) for s in sigma3], axes, vol.ndim, 0.0)
    x = _rescaled(vol, rescale, scope, axis, rescale_options)
    if r is None and method == "sauvola":
        lo, hi = dtype_limits(np.empty(0, x.dtype if rescale is not None else vol.dtype), clip_negative=False)
        r = 0.5 * (float(hi) - float(lo))
    for name, v in (("offset", offset), ("cval", cval), ("k", k), ("r", r)):
        if v is not None and not np.isfinite(v):
            raise ValueError(f"`{name}` must be a finite number; got {v!r}.")
    if r is not None and not r > 0:
        raise ValueError(f"`r` must be positive; got {r!r}.")
    thresh = _local_graph(
        x,
        method,
        sizes,
        sigma,
        0.0 if offset is None else float(offset),
        "reflect" if mode is None else mode,
        0.0 if cval is None else float(cval),
        0.2 if k is None else float(k),
        1.0 if r is None else float(r),
    )
    record = {
        "method": method,
        "dims": dims,
        "block_size": list(sizes3),
        "rescale": rescale,
        "scope": scope,
        **({"sigma": list(sigma3)} if method == "gaussian" else {}),
        **{
            n: v
            for n, v in (("offset", offset), ("mode", mode), ("cval", cval), ("k", k), ("r", r))
            if v is not None
        },
    }
    return x, thresh, record


def threshold_local(
    volume: Any,
    method: str = "gaussian",
    *,
    block_size: int | Sequence[int] = 15,
    offset: float | None = None,
    mode: str | None = None,
    cval: float | None = None,
    param: float | Sequence[float] | None = None,
    k: float | None = None,
    r: float | None = None,
    dims: int = 3,
    axis: str | int = "z",
    rescale: str | None = "minmax",
    scope: str = "volume",
    volume_axis: int | None = None,
    **rescale_options: Any,
) -> Any:
    """Local threshold of every voxel, as scikit-image computes it, on the rescaled volume.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    method : {'gaussian', 'mean', 'median', 'niblack', 'sauvola'}
        ``gaussian``, ``mean`` and ``median`` are ``skimage.filters.threshold_local``'s
        methods (weighted mean, mean and median of the window, minus `offset`); ``niblack``
        is ``m - k * s`` and ``sauvola`` is ``m * (1 + k * (s / r - 1))`` with ``m`` and
        ``s`` the window's mean and standard deviation.
    block_size : odd int or sequence of odd ints
        Window size along each filtered axis (``window_size`` of Niblack and Sauvola).
    offset : float, optional
        Subtracted from the gaussian, mean and median thresholds (default 0).
    mode : {'reflect', 'constant', 'nearest', 'mirror', 'wrap'}, optional
        Edge handling of the gaussian, mean and median methods (scipy's names; default
        'reflect').  Niblack and Sauvola mirror the edges, as scikit-image does.
    cval : float, optional
        Value beyond the edges with ``mode='constant'`` (default 0).
    param : float or sequence of float, optional
        Gaussian sigma (default ``(block_size - 1) / 6`` per axis).
    k : float, optional
        Niblack and Sauvola weight of the standard deviation (default 0.2).
    r : float, optional
        Sauvola's dynamic range of the standard deviation (default, as scikit-image: half the
        range of the dtype, 1 for the rescaled volume).
    dims : {3, 2}
        3: windows in 3D; 2: windows in each 2D slice along `axis`.
    axis : {'x', 'y', 'z'} or int
        Slice axis for ``dims=2`` (and for ``scope='slice'``).
    rescale : str or None
        Rescale applied first (see `volbin.rescale`; default 'minmax', float32 in [0, 1]),
        or None to use the values as they are (as floats, scikit-image's float type).
    scope : {'stack', 'volume', 'slice'}
        Groups of the rescale.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3).  4D volumes are filtered one 3D
        volume at a time.
    **rescale_options
        Other rescale options (``percentiles``, ``value_range``, ``curve``, ...).

    Returns
    -------
    threshold : same kind as `volume`
        float32 for the rescaled volume (scikit-image's float type of the values filtered).
        Foreground is ``rescaled > threshold`` (`binarize_local`).

    Raises
    ------
    ValueError
        An unknown method or mode, an even or non-positive `block_size`, or an option the
        method does not use.
    VolbinDataError
        No finite voxel in a group of the rescale.

    Notes
    -----
    Each block is read with an overlap of the window's reach (``block_size // 2``, or
    ``int(4 * sigma + 0.5)`` for the Gaussian), so every voxel sees its whole window; blocks
    at the array's edge see that edge as scipy does.  gaussian and median call scikit-image
    on each block: the same values as on the whole volume.  scikit-image's mean uses a
    running sum along each line and Niblack and Sauvola use integral images of the whole
    array; here windows are summed directly (float64 for Niblack and Sauvola), so
    results agree with scikit-image to rounding (a few float32 ulps; in flat regions its
    integral images leave a standard deviation of rounding noise, here 0) and do not depend
    on the chunking.

    References
    ----------
    .. [1] W. Niblack, An Introduction to Digital Image Processing, Prentice-Hall, 1986.
    .. [2] J. Sauvola and M. Pietikainen, "Adaptive document image binarization," Pattern
       Recognition 33(2), pp. 225-236, 2000.

    Examples
    --------
    >>> import numpy as np, volbin
    >>> from skimage.filters import threshold_local as sk_local
    >>> x = np.random.default_rng(0).random((20, 20, 20))
    >>> t = threshold_local(x, "gaussian", block_size=7)
    >>> bool((t == sk_local(volbin.rescale(x), 7, "gaussian")).all())
    True
    """
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    _, thresh, record = _threshold_graph(
        vol, method, block_size, offset, mode, cval, param, k, r, dims, axis, rescale, scope, rescale_options
    )
    return like_input(vol.derive(thresh, {"step": "threshold_local", **record}), kind)


def binarize_local(
    volume: Any,
    method: str = "gaussian",
    *,
    block_size: int | Sequence[int] = 15,
    offset: float | None = None,
    mode: str | None = None,
    cval: float | None = None,
    param: float | Sequence[float] | None = None,
    k: float | None = None,
    r: float | None = None,
    dims: int = 3,
    axis: str | int = "z",
    rescale: str | None = "minmax",
    scope: str = "volume",
    volume_axis: int | None = None,
    **rescale_options: Any,
) -> Any:
    """Binarize by a local threshold: ``rescaled > threshold_local(...)``.

    Parameters are those of `threshold_local`.

    Returns
    -------
    mask : same kind as `volume`, bool
        Lazy for dask and Volume input; NaN voxels are 0.

    Examples
    --------
    >>> import numpy as np, volbin
    >>> from skimage.filters import threshold_sauvola
    >>> x = np.random.default_rng(1).random((16, 16, 16))
    >>> r = volbin.rescale(x)
    >>> m = binarize_local(x, "sauvola", block_size=5)
    >>> float(np.mean(m == (r > threshold_sauvola(r, 5))))
    1.0
    """
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    x, thresh, record = _threshold_graph(
        vol, method, block_size, offset, mode, cval, param, k, r, dims, axis, rescale, scope, rescale_options
    )
    # Elementwise, so that dask aligns the chunks of the threshold (map_overlap can merge
    # small edge chunks) with those of the rescaled volume.
    mask = x > thresh
    return like_input(vol.derive(mask, {"step": "binarize_local", **record}), kind)


def _threshold_array(value: Any, vol: Volume, name: str) -> tuple[np.float64 | None, da.Array | None]:
    if np.isscalar(value) or (isinstance(value, np.ndarray) and value.ndim == 0):
        v = float(value)  # type: ignore[arg-type]
        if np.isnan(v):
            raise ValueError(f"`{name}` must be a number or an array of the volume's shape; got {value!r}.")
        return np.float64(v), None
    arr, _ = as_volume(value, volume_axis=vol.volume_axis)
    if arr.shape != vol.shape:
        raise ValueError(f"`{name}` must have the volume's shape {vol.shape}; got shape {arr.shape}.")
    return None, arr.data


def apply_hysteresis_threshold(
    volume: Any,
    low: Any,
    high: Any,
    *,
    connectivity: int = 1,
    volume_axis: int | None = None,
) -> Any:
    """Hysteresis: the components of ``volume > low`` that hold a voxel of ``volume > high``.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
        Values compared as they are (no rescale).
    low, high : float or array of the volume's shape
        Thresholds; `low` is clipped to at most `high` (as scikit-image does).
    connectivity : {1, 2, 3}
        Neighbourhood of the components (1 is scikit-image's); 4D volumes are labelled one 3D
        volume at a time.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3).

    Returns
    -------
    mask : same kind as `volume`, bool
        Equal to ``skimage.filters.apply_hysteresis_threshold`` on the whole volume (on
        each 3D volume of a 4D one), whatever the chunking.  Lazy for dask and Volume input.

    Raises
    ------
    ValueError
        A NaN threshold, a threshold array of another shape, or a bad `connectivity`.

    Notes
    -----
    One labelling pass over the low mask (components merged across chunk borders, see
    `volbin.components`), then each block is labelled again when the output is computed.

    References
    ----------
    .. [1] J. Canny, "A Computational Approach To Edge Detection," IEEE Transactions on
       Pattern Analysis and Machine Intelligence 8(6), pp. 679-698, 1986.

    Examples
    --------
    >>> import numpy as np
    >>> from skimage.filters import apply_hysteresis_threshold as sk_hyst
    >>> x = np.random.default_rng(0).random((12, 12, 12))
    >>> bool((apply_hysteresis_threshold(x, 0.5, 0.9) == sk_hyst(x, 0.5, 0.9)).all())
    True
    """
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    struct = structure(vol.ndim, connectivity, volume_axis=vol.volume_axis)
    lo_s, lo_a = _threshold_array(low, vol, "low")
    hi_s, hi_a = _threshold_array(high, vol, "high")
    inputs = [vol.data] + [a for a in (lo_a, hi_a) if a is not None]

    def prepare(x: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        rest = list(arrays)
        lo: Any = rest.pop(0) if lo_a is not None else lo_s
        hi: Any = rest.pop(0) if hi_a is not None else hi_s
        lo = np.clip(lo, a_min=None, a_max=hi)
        return x > lo, [x > hi]

    comps = label_components(inputs, prepare, struct)
    keep = comps.flags[:, 0].copy()
    keep[0] = False
    step = {
        "step": "hysteresis",
        "low": None if lo_s is None else float(lo_s),
        "high": None if hi_s is None else float(hi_s),
        "connectivity": int(connectivity),
        "components": comps.n_components,
        "kept": int(keep.sum()),
    }
    return like_input(vol.derive(comps.select(keep), step), kind)
