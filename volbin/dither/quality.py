"""How well a binary volume reproduces grey levels: blurred-difference metrics.

Seen from a distance (or through a translucent print), a binary volume is blurred by the eye;
`dither_error` blurs it with a Gaussian and compares it with the grey volume it renders.
Everything is lazy and chunked: the Gaussian runs per chunk with an overlap of its radius
(``dask.array.map_overlap``), which gives the same values as filtering the whole array.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from typing import Any, Literal

import dask.array as da
import dask.local
import numpy as np
from scipy import ndimage

from ..errors import VolbinDataError, VolbinWarning
from ..volume import Volume, as_volume, like_input

__all__ = ["blur", "compare_with_input", "dither_error", "format_comparison"]

#: scipy's default truncation of the Gaussian, in standard deviations.
_TRUNCATE = 4.0

#: The input's support: where the reference blurred with sigma 1 voxel exceeds this level.
SUPPORT_LEVEL = 0.1


def _sigmas(vol: Volume, sigma: float, scope: str, axis: int | str | None) -> tuple[float, ...]:
    if not (isinstance(sigma, (int, float, np.floating)) and math.isfinite(sigma) and 0 <= sigma <= 50):
        raise ValueError(f"`sigma` must be a number in [0, 50] (voxels); got {sigma!r}.")
    if scope not in ("slice", "volume"):
        raise ValueError(f"`scope` must be 'slice' (blur within slices) or 'volume'; got {scope!r}.")
    sigmas = [0.0] * vol.ndim
    skip = vol.axis_index(axis) if scope == "slice" else None
    for a in vol.spatial_axes:
        if a != skip:
            sigmas[a] = float(sigma)
    return tuple(sigmas)


def _gaussian(data: da.Array, sigmas: tuple[float, ...]) -> da.Array:
    depth = {a: int(_TRUNCATE * s + 0.5) for a, s in enumerate(sigmas)}

    def run(block: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(block, sigmas, mode="reflect", truncate=_TRUNCATE)

    # boundary='none': the array's own edges are handled by scipy's mode, as for the whole.
    return da.map_overlap(
        run, data, depth=depth, boundary="none", dtype=data.dtype, meta=np.empty((0,) * data.ndim, data.dtype)
    )


def _as_float(data: da.Array) -> da.Array:
    dtype = np.result_type(data.dtype, np.float32)
    data = data.astype(dtype)
    if np.issubdtype(data.dtype, np.floating):
        data = da.where(da.isfinite(data), data, dtype.type(0))
    return data


def blur(
    volume: Any,
    sigma: float = 1.0,
    *,
    scope: Literal["slice", "volume"] = "volume",
    axis: int | str | None = "z",
    volume_axis: int | None = None,
) -> Any:
    """Gaussian blur of a volume, chunk by chunk, as ``scipy.ndimage.gaussian_filter``.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    sigma : float
        Standard deviation in voxels.
    scope : {'volume', 'slice'}
        3 blurs along the three spatial axes; 2 blurs within each slice along `axis`.
    axis : {'x', 'y', 'z'} or int
        Slice axis for ``scope='slice'``.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input; never blurred along.

    Returns
    -------
    blurred : same kind as `volume`
        float32 (float64 for float64 input); non-finite values count as 0.

    Notes
    -----
    Equal to ``gaussian_filter(volume, sigmas, mode='reflect', truncate=4)`` on the whole
    array, bit for bit: each chunk is filtered with ``int(4 * sigma + 0.5)`` voxels of its
    neighbours, the filter's whole support, and the array's edges are left to scipy's mode.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> x = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    >>> bool((blur(x, 1.5) == ndimage.gaussian_filter(x, 1.5)).all())
    True
    """
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    data = _gaussian(_as_float(vol.data), _sigmas(vol, sigma, scope, axis))
    step = {"step": "blur", "sigma": float(sigma), "scope": scope}
    return like_input(vol.derive(data, step), kind)


class _NotBinary(VolbinDataError):
    """`binary` holds a value other than 0 and 1 (`value`)."""

    def __init__(self, value: float) -> None:
        self.value = value
        super().__init__(
            f"`binary` must hold only 0 and 1 (a binarized volume); it holds {value:g}: pass the "
            "binary volume first and the grey volume it renders second."
        )


def _check_binary(block: np.ndarray) -> None:
    bad = (block != 0) & (block != 1)
    if bad.any():
        raise _NotBinary(float(block[bad].ravel()[0]))


def _streamed_sums(
    b: da.Array,
    r: da.Array,
    sigmas: tuple[float, ...],
    support_sigmas: tuple[float, ...],
    check_binary: bool = False,
) -> tuple[float, ...]:
    """Sums of (G*b - r)^2, (G*b - G*r)^2, b, r, (G*b - G*r)^2 inside the support and the
    support's size, slab by slab along the reference's most chunked axis, each slab read
    with a margin of the blurs' radius.  The support is ``G1*r > SUPPORT_LEVEL`` with G1 the
    Gaussian of `support_sigmas`.  With `check_binary`, `b` must hold only 0 and 1.

    One slab (plus margins) is in memory at a time: a dask graph of these four reductions
    shares the blurred intermediates, and the scheduler then keeps them until every
    consumer is done, i.e. the whole volume.  With the margin, each slab's interior is
    exactly what blurring the whole array gives (``mode='reflect'`` at the array's edges).
    """
    axis = int(np.argmax([len(c) for c in r.chunks]))
    reach = max(sigmas[axis], support_sigmas[axis])
    depth = int(_TRUNCATE * reach + 0.5) if reach > 0 else 0
    bounds = np.concatenate([[0], np.cumsum(r.chunks[axis])])
    n = r.shape[axis]
    totals = np.zeros(6)
    for z0, z1 in itertools.pairwise(bounds):
        e0, e1 = max(0, int(z0) - depth), min(n, int(z1) + depth)
        index: list[Any] = [slice(None)] * r.ndim
        index[axis] = slice(e0, e1)
        bs = np.asarray(b[tuple(index)].compute(scheduler=dask.local.get_sync))
        if check_binary:
            _check_binary(bs)
        rs = np.asarray(r[tuple(index)].compute(scheduler=dask.local.get_sync))
        inner: list[Any] = [slice(None)] * r.ndim
        inner[axis] = slice(int(z0) - e0, int(z1) - e0)
        t = tuple(inner)
        f64 = np.float64
        gb = ndimage.gaussian_filter(bs, sigmas, mode="reflect", truncate=_TRUNCATE)
        d = gb[t] - rs[t]
        s1 = np.sum(d * d, dtype=f64)
        gr = ndimage.gaussian_filter(rs, sigmas, mode="reflect", truncate=_TRUNCATE)
        np.subtract(gb[t], gr[t], out=d)
        if support_sigmas != sigmas:
            gr = ndimage.gaussian_filter(rs, support_sigmas, mode="reflect", truncate=_TRUNCATE)
        support = gr[t] > SUPPORT_LEVEL
        del gr
        np.multiply(d, d, out=d)
        totals += [
            s1,
            np.sum(d, dtype=f64),
            np.sum(bs[t], dtype=f64),
            np.sum(rs[t], dtype=f64),
            np.sum(d[support], dtype=f64),
            np.count_nonzero(support),
        ]
        del gb, d, bs, rs, support
    return tuple(float(t) for t in totals)


def dither_error(
    binary: Any,
    reference: Any,
    *,
    sigma: float = 1.0,
    scope: Literal["slice", "volume"] = "volume",
    axis: int | str | None = "z",
    volume_axis: int | None = None,
) -> dict[str, Any]:
    """How far a binary volume, blurred, is from the grey volume it should render.

    Parameters
    ----------
    binary : (X, Y, Z[, T]) ndarray, dask array or Volume
        0/1 values (bool, integers or floats).
    reference : ndarray, dask array or Volume of the same shape
        Grey levels in [0, 1]: the rescaled input of the binarization.  Non-finite values
        count as 0 (as they are written in binary outputs).
    sigma : float
        Standard deviation of the Gaussian, in voxels.
    scope : {'volume', 'slice'}
        ``volume`` blurs volumetrically (a print or a volume rendering seen from afar);
        ``slice`` blurs within each slice along `axis` (a slice viewer).
    axis : {'x', 'y', 'z'} or int
        Slice axis for ``scope='slice'``.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask inputs.

    Returns
    -------
    metrics : dict
        The rendering error, both volumes blurred: ``support_rms``, ``sqrt(mean((G * binary
        - G * reference) ** 2))`` inside the input's support (voxels where the reference
        blurred with sigma 1 voxel, along the same axes, exceeds `SUPPORT_LEVEL` = 0.1: the
        head, not the empty background), and ``perceptual_rms``, the same over the whole
        volume.  ``blurred_rms``: ``sqrt(mean((G * binary - reference) ** 2))``, the blurred
        binary volume against the unblurred reference.  ``mean_density_error``:
        ``mean(binary) - mean(reference)``; also ``mean_density``, ``mean_reference``,
        ``support_fraction`` (share of voxels in the support), ``sigma``, ``scope``,
        ``n_voxels``.  ``support_rms`` is None when the support is empty.

    Raises
    ------
    ValueError
        The shapes differ, or a bad `sigma` or `scope`.

    Notes
    -----
    ``blurred_rms`` compares with the grey volume itself, so it also counts the detail of
    the reference finer than `sigma`, which no rendering seen through the blur can show: it
    is above 0 even for a perfect rendering of a detailed image.
    ``perceptual_rms`` and ``support_rms`` blur both, as the eye blurs both, the usual
    measure of halftone quality: 0 for a rendering indistinguishable from the grey levels at
    that viewing distance.  ``support_rms`` at sigma 1 is the figure to compare dithering
    methods with (the one the choice of volbin's loops used, docs/methods.md): over the whole
    volume, empty background dilutes the error of the head by its share of the volume.  Sums
    run in float64 over chunks (one pass over both volumes).

    Examples
    --------
    >>> import numpy as np
    >>> grey = np.full((16, 16, 16), 0.5, np.float32)
    >>> checker = (np.indices(grey.shape).sum(axis=0) % 2).astype(bool)
    >>> m = dither_error(checker, grey, sigma=2.0)
    >>> round(m["mean_density_error"], 6), m["perceptual_rms"] < 0.01
    (0.0, True)
    """
    bvol, _ = as_volume(binary, volume_axis=volume_axis)
    rvol, _ = as_volume(reference, volume_axis=volume_axis)
    return _error_metrics(bvol, rvol, sigma, scope, axis, check_binary=False)


def _error_metrics(
    bvol: Volume, rvol: Volume, sigma: float, scope: str, axis: Any, check_binary: bool
) -> dict[str, Any]:
    """`dither_error` on Volumes; with `check_binary`, `bvol` must hold only 0 and 1."""
    if bvol.shape != rvol.shape:
        raise ValueError(
            f"`binary` and `reference` must have the same shape; got {bvol.shape} and {rvol.shape}."
        )
    sigmas = _sigmas(bvol, sigma, scope, axis)
    b = _as_float(bvol.data)
    r = _as_float(rvol.data)
    if r.dtype != b.dtype:
        b = b.astype(r.dtype)
    n = int(np.prod(bvol.shape))
    if n == 0:
        raise VolbinDataError("cannot measure the dithering error of an empty volume.")
    sq1, sq2, sb, sr, sq_in, n_in = _streamed_sums(
        b, r, sigmas, _sigmas(bvol, 1.0, scope, axis), check_binary
    )
    return {
        "support_rms": math.sqrt(sq_in / n_in) if n_in else None,
        "perceptual_rms": math.sqrt(sq2 / n),
        "support_fraction": n_in / n,
        "blurred_rms": math.sqrt(sq1 / n),
        "mean_density_error": sb / n - sr / n,
        "mean_density": sb / n,
        "mean_reference": sr / n,
        "sigma": float(sigma),
        "scope": scope,
        "n_voxels": n,
    }


def _sidecar_step(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last step of `path`'s sidecar that records a recipe, or None."""
    from ..errors import InputFileError
    from ..io import read_sidecar

    try:
        record = read_sidecar(path)
    except InputFileError:
        return None
    steps = [s for s in record.get("steps", []) if isinstance(s, dict) and "recipe" in s]
    return steps[-1] if steps else None  # the step, with its rescale record, not just the recipe


def _same_range(recorded: Any, fitted: dict[str, Any]) -> bool:
    try:
        return all(
            np.allclose(np.asarray(recorded[k], float), np.asarray(fitted[k], float), rtol=1e-9)
            for k in ("lo", "hi")
        )
    except (KeyError, TypeError, ValueError):
        return True  # nothing comparable recorded


def compare_with_input(
    binary: str | os.PathLike[str],
    grey: str | os.PathLike[str],
    *,
    sigma: float = 1.0,
    scope: Literal["slice", "volume"] = "volume",
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """`dither_error` of a binary file against the grey file it was made from.

    The grey volume is rescaled as the binarization rescaled it: with the recipe in the
    binary file's JSON sidecar when there is one (and upsampled as that recipe says when the
    shapes differ), else min-max per volume.

    Parameters
    ----------
    binary, grey : path
        The binary output and the grey input.
    sigma, scope : float, str
        As in `dither_error`.
    chunk_bytes : int, optional
        Input chunk size.
    volume_axis : int, optional
        Volume axis of 4D ``.npy``/zarr inputs.
    allow_missing : bool, optional
        Read chunks missing from zarr stores as their fill value (see `volbin.io.load`).

    Returns
    -------
    metrics : dict
        `dither_error`'s result plus ``reference`` (the grey file and how it was rescaled).

    Raises
    ------
    VolbinDataError
        The volumes' shapes do not match, or `binary` holds values other than 0 and 1.
    InputFileError
        A file cannot be read.
    """
    from ..io import load
    from ..recipe import DITHER_METHODS, Recipe
    from ..rescale import apply_transform, fit_transform

    kw: dict[str, Any] = {
        "chunk_bytes": chunk_bytes,
        "volume_axis": volume_axis,
        "allow_missing": allow_missing,
    }
    bvol = load(binary, **kw)
    gvol = load(grey, **kw)
    step = _sidecar_step(binary)
    if step is not None:
        recipe = Recipe.from_dict(step["recipe"])
        how = "recipe from the binary volume's sidecar"
    else:
        recipe = Recipe(rescale="minmax", scope="volume")
        how = "minmax per volume"
    fit_scope = recipe.scope
    if recipe.method in DITHER_METHODS and fit_scope == "slice":
        fit_scope = "volume"  # dithering rescales per volume (or stack), never per slice
    tr = fit_transform(gvol, gvol.grouping(fit_scope, recipe.axis), recipe)
    if step is not None and not _same_range(step.get("rescale"), tr.record()):
        warnings.warn(
            f"{grey}: its intensity range differs from the one recorded in {binary}'s sidecar; "
            "is it the volume the binary volume was made from?",
            VolbinWarning,
            stacklevel=2,
        )
    ref = gvol.derive(apply_transform(gvol.data, tr), {"step": "rescale", **tr.record()})
    if ref.shape != bvol.shape and recipe.upsample is not None:
        from ..resample import upsample

        ref = upsample(ref, recipe.upsample)
        how += f", upsampled by {list(recipe.upsample)}"
    if ref.shape != bvol.shape:
        raise VolbinDataError(
            f"{binary} has shape {bvol.shape} but {grey} has shape {ref.shape}; compare a "
            "binary volume with the grey volume it was made from."
        )
    try:
        out = _error_metrics(bvol, ref, sigma, scope, recipe.axis, check_binary=True)
    except _NotBinary as exc:
        raise VolbinDataError(
            f"{binary}: not a binary volume (it holds {exc.value:g}); the comparison measures how "
            f"a binary volume renders a grey one: give the binary volume first and the grey "
            f"volume ({grey}) second (CLI: volbin info BINARY --compare GREY)."
        ) from None
    out["reference"] = {"path": os.fspath(grey), "rescale": how, "transform": tr.record()}
    return out


def _fmt(value: float | None, digits: int = 5) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_comparison(metrics: dict[str, Any]) -> str:
    """Human-readable form of `compare_with_input`'s result."""
    ref = metrics.get("reference", {})
    blur_kind = f"Gaussian sigma {metrics['sigma']:g} voxel, per {metrics['scope']}"
    lines = [
        f"  compared with {ref.get('path', 'the reference')} (rescale: {ref.get('rescale', '-')})",
        f"  rendering error  {_fmt(metrics['support_rms'])} inside the input's support "
        f"({100 * metrics['support_fraction']:.1f} % of the voxels), {metrics['perceptual_rms']:.5f} "
        f"overall  (RMS, both blurred: {blur_kind})",
        f"  blurred RMS      {metrics['blurred_rms']:.5f}  (binary blurred, input not)",
        f"  mean density     {metrics['mean_density']:.5f}  vs input {metrics['mean_reference']:.5f}"
        f"  (error {metrics['mean_density_error']:+.5f})",
    ]
    return "\n".join(lines)
