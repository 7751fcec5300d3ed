"""Dithering drivers: error diffusion (2D per slice, or truly 3D) and ordered dithering.

Dithering keeps grey levels as the local density of 1s.  The compiled loops live in
`_dither_kernels` (error diffusion) and `ordered` (threshold arrays); this module maps them
over dask blocks:

* ``scope="slice"``: every 2D slice along `axis` is diffused on its own.  Chunks are
  re-shaped to hold whole slices, and slices run in parallel on the workers.
* ``scope="volume"`` (and ``"stack"``): true 3D error diffusion, the error also pushed into
  the next slice along `axis`; by default Sierra Lite with 1/16 of the error straight into
  the next slice, on one continuous boustrophedon path through the volume.  It is
  sequential, so each 3D volume streams slab by slab, every slab task taking the error
  buffer carried by the previous one: memory follows the slab size, and the result is
  identical to diffusing the volume in one piece.
* ordered dithering tiles a 2D (slice scope) or 3D threshold array at each block's global
  position.

Intensities are first rescaled to [0, 1] (per volume, or per stack with ``scope="stack"``)
and optionally upsampled.  Slices are scanned row by row along the lower of the two in-plane
array axes (x for axial slices), rows stepping along the higher one (y).  Threshold jitter
draws from the counter-based generator keyed by (seed, global voxel index), so every method
gives the same bytes for any chunking or number of workers, and for a 4D stack whatever its
axis order (the index runs over (volume, x, y, z)).  Non-finite input voxels are 0.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, overload

import dask
import dask.array as da
import dask.local
import numpy as np

from .. import _dither_kernels as DK
from .._kernels import seed_key
from ..intensity import prepare
from ..recipe import Recipe, Scope
from ..rescale import apply_transform, fit_transform
from ..volume import Volume, as_volume, like_input

__all__ = ["dither", "dither_volume", "kernel_record"]


def kernel_record(kernel: Any) -> dict[str, Any]:
    """The sidecar's description of an error-diffusion kernel (name and taps)."""
    k = DK.diffusion_kernel(kernel)
    rec: dict[str, Any] = {"dy": list(k.dy), "dx": list(k.dx), "weights": list(k.weights)}
    if isinstance(kernel, str):
        rec["name"] = kernel
    return rec


def _c_strides(shape: tuple[int, ...]) -> np.ndarray:
    strides = np.ones(len(shape), dtype=np.int64)
    for a in range(len(shape) - 2, -1, -1):
        strides[a] = strides[a + 1] * shape[a + 1]
    return strides


def _canonical_strides(shape: tuple[int, ...], vaxis: int | None) -> np.ndarray:
    """Per array axis, its stride in the C-order index over (volume, x, y, z).

    The index of the jitter's random numbers: with it an (X, Y, Z, T) stack and the same data
    stored (T, X, Y, Z) draw the same number for the same voxel (as `stochastic_graph` does).
    """
    perm = list(range(len(shape)))
    if vaxis is not None:
        perm = [vaxis] + [a for a in perm if a != vaxis]
    canon = _c_strides(tuple(shape[a] for a in perm))
    strides = np.empty(len(shape), dtype=np.int64)
    strides[perm] = canon
    return strides


def _plane_order(vol: Volume, axis: int) -> tuple[int, int, int]:
    """(slice axis, row axis, column axis): rows along the higher in-plane axis."""
    lo, hi = sorted(a for a in vol.spatial_axes if a != axis)
    return axis, hi, lo


def _whole_plane_chunks(vol: Volume, axis: int, slab: int | None = None, parallel: bool = False) -> da.Array:
    """Rechunk so every chunk holds whole planes across `axis` (slabs along `axis`)."""
    data = vol.data
    chunks: list[Any] = []
    plane_bytes = 4 * int(np.prod([data.shape[a] for a in vol.spatial_axes if a != axis]))
    # Slabs about as large (in float32) as the input's chunks, which follow the memory limit.
    target = min(32 * 2**20, 4 * int(np.prod([max(c) for c in data.chunks])))
    depth = slab or max(1, min(data.shape[axis], target // max(plane_bytes, 1)))
    if slab is None and parallel:
        # Independent slices: at least two blocks per core, so every core has work.
        cores = os.cpu_count() or 1
        depth = max(1, min(depth, -(-data.shape[axis] // (2 * cores))))
    for a in range(data.ndim):
        if a == axis:
            chunks.append(depth)
        elif a == vol.volume_axis:
            chunks.append(1)
        else:
            chunks.append(-1)
    return data.rechunk(tuple(chunks))


def _iter_volumes(block: np.ndarray, vaxis: int | None):
    """(index along the volume axis, 3D view) pairs of a block."""
    if vaxis is None:
        yield 0, block
        return
    for v in range(block.shape[vaxis]):
        yield v, np.take(block, v, axis=vaxis)


def _axes3(ax: tuple[int, int, int], vaxis: int | None) -> tuple[int, int, int]:
    """Array axes (slice, row, col) renumbered for a 3D view without the volume axis."""
    if vaxis is None:
        return ax
    return tuple(a - (a > vaxis) for a in ax)  # type: ignore[return-value]


def _slices_graph(data: da.Array, vol: Volume, recipe: Recipe, axis: int) -> da.Array:
    """2D error diffusion of every slice along `axis` (parallel over blocks)."""
    ax = _plane_order(vol, axis)
    vaxis = vol.volume_axis
    kernel = DK.diffusion_kernel(recipe.kernel)
    key = seed_key(recipe.seed, stream=2)
    full_strides = _canonical_strides(data.shape, vaxis)

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        out = np.empty(block.shape, dtype=np.uint8)
        ax3 = _axes3(ax, vaxis)
        for v, sub in _iter_volumes(block, vaxis):
            # The loops count non-finite values as 0: no NaN pass needed here.
            img = np.ascontiguousarray(np.transpose(sub, ax3), dtype=np.float32)
            start = [lo for lo, _ in loc]
            if vaxis is not None:
                start[vaxis] += v
            base = int(np.dot(start, full_strides))
            res = DK.diffuse_2d(
                img,
                kernel=kernel,
                serpentine=recipe.serpentine,
                jitter=float(recipe.jitter),
                key=key,
                index_base=base,
                index_strides=(int(full_strides[ax[0]]), int(full_strides[ax[1]]), int(full_strides[ax[2]])),
            )
            back = np.transpose(res, np.argsort(ax3))
            if vaxis is None:
                out[...] = back
            else:
                idx = [slice(None)] * block.ndim
                idx[vaxis] = v
                out[tuple(idx)] = back
        return out

    return da.map_blocks(run, data, dtype=np.uint8, meta=np.empty((0,) * data.ndim, np.uint8))


class _Slab:
    """A lazy slab, computed inside the task that diffuses it.

    Were the slabs ordinary dependencies, the scheduler would read and rescale slabs far
    ahead of the (sequential) diffusion and hold them all: memory would grow to the whole
    volume.  Computed inside the chain, only one slab per chain is alive at a time.
    """

    def __init__(self, array: da.Array) -> None:
        self.array = array

    def compute(self) -> np.ndarray:
        return np.asarray(self.array.compute(scheduler=dask.local.get_sync))


def _slab_task(slab: _Slab, carry: Any, *, ax3, kernel, recipe, key, z0, n_slices, base, strides):
    block = slab.compute()
    img = np.ascontiguousarray(np.transpose(block, ax3), dtype=np.float32)
    del block
    res, carry_out = DK.diffuse_3d(
        img,
        kernel=kernel,
        carry_in=carry,
        z0=z0,
        n_slices=n_slices,
        serpentine=recipe.serpentine,
        jitter=float(recipe.jitter),
        key=key,
        index_base=base,
        index_strides=strides,
    )
    return np.transpose(res, np.argsort(ax3)), carry_out


def _volume_graph(data: da.Array, vol: Volume, recipe: Recipe, axis: int) -> da.Array:
    """3D error diffusion, streamed slab by slab along `axis` with a carried error buffer.

    Each 3D volume is a chain of tasks, one per slab; a task reads and rescales its own slab
    (see `_Slab`), diffuses it with the error carried from the previous slab, and passes the
    error on.  Chains of different volumes run in parallel.
    """
    ax = _plane_order(vol, axis)
    vaxis = vol.volume_axis
    kernel = DK.diffusion_kernel_3d(recipe.kernel)
    key = seed_key(recipe.seed, stream=2)
    full_strides = _canonical_strides(data.shape, vaxis)
    strides = tuple(int(full_strides[a]) for a in ax)
    ax3 = _axes3(ax, vaxis)
    n_slices = data.shape[axis]
    bounds = np.concatenate([[0], np.cumsum(data.chunks[axis])])
    n_vol = data.shape[vaxis] if vaxis is not None else 1
    out_volumes = []
    task = dask.delayed(_slab_task, nout=2, pure=True)
    for v in range(n_vol):
        carry = None
        slabs = []
        for k in range(len(bounds) - 1):
            z0, z1 = int(bounds[k]), int(bounds[k + 1])
            index: list[Any] = [slice(None)] * data.ndim
            index[axis] = slice(z0, z1)
            if vaxis is not None:
                index[vaxis] = v
            start = [0] * data.ndim
            start[axis] = z0
            if vaxis is not None:
                start[vaxis] = v
            base = int(np.dot(start, full_strides))
            res, carry = task(
                _Slab(data[tuple(index)]),
                carry,
                ax3=ax3,
                kernel=kernel,
                recipe=recipe,
                key=key,
                z0=z0,
                n_slices=n_slices,
                base=base,
                strides=strides,
            )
            shape3 = [data.shape[a] for a in range(data.ndim) if a != vaxis]
            shape3[ax3[0]] = z1 - z0
            slabs.append(
                da.from_delayed(res, shape=tuple(shape3), dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
            )
        out_volumes.append(da.concatenate(slabs, axis=ax3[0]))
    if vaxis is None:
        return out_volumes[0]
    return da.stack(out_volumes, axis=vaxis)


def _ordered_graph(data: da.Array, vol: Volume, recipe: Recipe, axis: int) -> da.Array:
    from .ordered import bayer_matrix, blue_noise, ordered_dither_block

    ax = _plane_order(vol, axis)
    ndim = 2 if recipe.scope == "slice" else 3
    order = int(recipe.matrix).bit_length() - 1
    if recipe.pattern == "bayer":
        matrix = bayer_matrix(order, ndim)
    else:
        matrix = blue_noise(recipe.matrix, ndim, seed=recipe.seed)
    # Matrix axes follow (slice), row, column; ordered_dither_block wants increasing axes.
    mat_axes = ax[1:] if ndim == 2 else ax
    perm = np.argsort(mat_axes)
    matrix = np.transpose(matrix, perm)
    axes = tuple(sorted(mat_axes))

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        return ordered_dither_block(block, matrix, offset=[lo for lo, _ in loc], axes=axes)

    return da.map_blocks(run, data, dtype=np.uint8, meta=np.empty((0,) * data.ndim, np.uint8))


def dither_volume(vol: Volume, recipe: Recipe, transform: Any = None) -> Volume:
    """Dither a Volume by `recipe` (method ``dither`` or ``ordered``); lazy result.

    `transform` is the rescale fitted per volume (or per stack with ``scope='stack'``), if
    the caller has it already (and has run the recipe's intensity stage,
    `volbin.intensity.prepare`: normalisation, CLAHE); without it this runs both.
    """
    tr, given, stage = transform, recipe, None
    if tr is None:
        stage = prepare(vol, recipe)
        vol, recipe = stage.volume, stage.recipe
        tr = fit_transform(vol, vol.grouping("stack" if recipe.scope == "stack" else "volume"), recipe)
    rescaled = vol.derive(apply_transform(vol.data, tr))
    if recipe.upsample is not None and any(f != 1 for f in recipe.upsample):
        from ..resample import upsample

        rescaled = upsample(rescaled, recipe.upsample)
    axis = rescaled.axis_index(recipe.axis)
    step: dict[str, Any] = {
        "step": "binarize",
        "recipe": given.to_dict(),
        "rescale": tr.record() if stage is None else stage.rescale_record(tr),
        "nonfinite_voxels": int(tr.n_nonfinite.sum()),
    }
    if recipe.method == "ordered":
        out = _ordered_graph(rescaled.data, rescaled, recipe, axis)
        step["decision"] = {
            "method": "ordered",
            "pattern": recipe.pattern,
            "matrix": recipe.matrix,
            "ndim": 2 if recipe.scope == "slice" else 3,
        }
    elif recipe.scope == "slice":
        data = _whole_plane_chunks(rescaled, axis, parallel=True)
        out = _slices_graph(data, rescaled, recipe, axis)
        step["decision"] = {
            "method": "dither",
            "mode": "2d",
            "axis": axis,
            "kernel": kernel_record(recipe.kernel),
            "serpentine": recipe.serpentine,
            "jitter": recipe.jitter,
        }
    else:
        data = _whole_plane_chunks(rescaled, axis)
        out = _volume_graph(data, rescaled, recipe, axis)
        k3 = DK.diffusion_kernel_3d(recipe.kernel)
        step["decision"] = {
            "method": "dither",
            "mode": "3d",
            "axis": axis,
            "serpentine": recipe.serpentine,
            "jitter": recipe.jitter,
            "kernel": {
                "name": recipe.kernel if isinstance(recipe.kernel, str) else None,
                "dz": list(k3.dz),
                "dy": list(k3.dy),
                "dx": list(k3.dx),
                "weights": list(k3.weights),
            },
        }
    if tr.n_nonfinite.any() and rescaled.shape == vol.shape:
        finite = da.isfinite(vol.data)
        out = da.where(finite, out, np.uint8(0))
    out = da.map_blocks(lambda b: b.view(bool), out, dtype=bool, meta=np.empty((0,) * out.ndim, bool))
    return dataclasses.replace(rescaled.derive(out, step), steps=(*vol.steps, step))


@overload
def dither(
    volume: np.ndarray,
    kernel: Any = ...,
    *,
    scope: Scope = ...,
    axis: str | int = ...,
    serpentine: bool | None = ...,
    jitter: float = ...,
    seed: int = ...,
    upsample: Any = ...,
    volume_axis: int | None = ...,
    **options: Any,
) -> np.ndarray: ...
@overload
def dither(
    volume: da.Array,
    kernel: Any = ...,
    *,
    scope: Scope = ...,
    axis: str | int = ...,
    serpentine: bool | None = ...,
    jitter: float = ...,
    seed: int = ...,
    upsample: Any = ...,
    volume_axis: int | None = ...,
    **options: Any,
) -> da.Array: ...
@overload
def dither(
    volume: Volume,
    kernel: Any = ...,
    *,
    scope: Scope = ...,
    axis: str | int = ...,
    serpentine: bool | None = ...,
    jitter: float = ...,
    seed: int = ...,
    upsample: Any = ...,
    volume_axis: int | None = ...,
    **options: Any,
) -> Volume: ...


def dither(
    volume: Any,
    kernel: Any = None,
    *,
    scope: Scope = "slice",
    axis: str | int = "z",
    serpentine: bool | None = None,
    jitter: float = 0.0,
    seed: int = 0,
    upsample: Any = None,
    volume_axis: int | None = None,
    **options: Any,
) -> Any:
    """Error-diffusion dithering of a 3D/4D volume: grey levels become densities of 1s.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume
    kernel : str or (rows, cols) array_like, optional
        ``floyd-steinberg``, ``jarvis-judice-ninke``, ``stucki``, ``burkes``, ``sierra``,
        ``sierra-2row``, ``sierra-lite``, ``atkinson``, or a weight matrix whose first row
        holds the current pixel at its centre column (see
        `volbin._dither_kernels.diffusion_kernel`).  With ``scope="volume"`` 2D kernels are
        extended with 1/16 of their weight straight into the next slice (see
        `volbin._dither_kernels.extend_to_3d`); ``sierra-lite-3d`` and ``floyd-steinberg-3d``
        name volumetric kernels.  Default: ``floyd-steinberg`` per slice, ``sierra-lite-3d``
        (Sierra Lite so extended) through volumes, which renders real scans best
        (docs/methods.md).
    scope : {'slice', 'volume', 'stack'}
        ``slice``: 2D diffusion in each slice along `axis`; ``volume``: 3D diffusion through
        each volume along `axis`; ``stack``: as ``volume``, rescaled once for the stack.
    axis : {'x', 'y', 'z'} or int
    serpentine : bool, optional
        Per slice: scan odd rows right to left (fewer directional artefacts).  Through
        volumes: scan one continuous boustrophedon path (odd slices backwards, rows
        alternating across slice boundaries).  Default: False per slice, True through volumes.
    jitter : float
        Amplitude in [0, 1] of seeded threshold noise (breaks up worm artefacts).
    seed : int
    upsample : float or (float, float, float), optional
        Upsample by these factors before dithering (the output grid is finer; its affine
        is updated so that it overlays the input).
    volume_axis : int, optional
    **options
        Other `Recipe` fields (``rescale``, ``percentiles``, ``curve``, ...).

    Returns
    -------
    binary : same kind as `volume`, bool

    References
    ----------
    .. [1] R. W. Floyd and L. Steinberg, "An adaptive algorithm for spatial grey scale",
       Proc. Society for Information Display 17(2):75-77, 1976.
    .. [2] J. F. Jarvis, C. N. Judice and W. H. Ninke, "A survey of techniques for the
       display of continuous tone pictures on bilevel displays", Computer Graphics and
       Image Processing 5(1):13-40, 1976.
    .. [3] P. Stucki, "MECCA - a multiple-error correcting computation algorithm for bilevel
       image hardcopy reproduction", IBM Research Report RZ1060, 1981.
    .. [4] B. Atkinson's kernel, from the Apple Macintosh's HyperScan (1987), as documented
       by T. Helland, "Image dithering: eleven algorithms and source code", 2012; Burkes'
       and F. Sierra's kernels from the same source.
    .. [5] R. Ulichney, "Digital Halftoning", MIT Press, 1987 (serpentine scans, error
       diffusion's artefacts).

    Examples
    --------
    >>> import numpy as np, volbin
    >>> x = np.tile(np.linspace(0, 1, 64), (64, 4, 1)).transpose(0, 2, 1)
    >>> d = volbin.dither(x, "floyd-steinberg")
    >>> bool(abs(d.mean() - volbin.rescale(x).mean()) < 0.005)
    True
    """
    recipe = Recipe(
        method="dither",
        kernel=kernel,
        scope=scope,
        axis=axis,
        serpentine=serpentine,
        jitter=jitter,
        seed=seed,
        upsample=upsample,
        **options,
    )
    vol, kind = as_volume(volume, volume_axis=volume_axis)
    return like_input(dither_volume(vol, recipe), kind)
