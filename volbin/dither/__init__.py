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
and optionally upsampled; a linear rescale is applied by the loops as they read the raw
data, which they read in place through transposed views (numpy input without a dask graph).
Slices are scanned row by row along the lower of the two in-plane array axes (x for axial
slices), rows stepping along the higher one (y).  Threshold jitter
draws from the counter-based generator keyed by (seed, global voxel index), so every method
gives the same bytes for any chunking or number of workers, and for a 4D stack whatever its
axis order (the index runs over (volume, x, y, z)).  Non-finite input voxels are 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, overload

import dask
import dask.array as da
import dask.local
import numpy as np

from .. import _dither_kernels as DK
from .._kernels import seed_key
from ..intensity import prepare
from ..recipe import Recipe, Scope
from ..rescale import Transform, apply_transform, fit_transform
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
    return data.rechunk(tuple(chunks), method=_rechunk_method())


def _rechunk_method() -> str | None:
    """dask's choice of rechunk method, made without importing distributed when it is not
    loaded (dask imports it to look for a client, 0.3 s; without it there is none, and dask
    picks "tasks")."""
    if dask.config.get("array.rechunk.method", None) or "distributed" in sys.modules:
        return None
    return "tasks"


def _axes3(ax: tuple[int, int, int], vaxis: int | None) -> tuple[int, int, int]:
    """Array axes (slice, row, col) renumbered for a 3D view without the volume axis."""
    if vaxis is None:
        return ax
    return tuple(a - (a > vaxis) for a in ax)  # type: ignore[return-value]


def _threads() -> int:
    """Threads an in-memory diffusion may use: dask's ``num_workers`` if set, else the cores."""
    n = dask.config.get("num_workers", None)
    return max(1, int(n) if n else dask.system.CPU_COUNT)


#: Voxels below which a diffusion or range pass runs on one thread (threads cost ~0.1 ms).
_THREAD_VOXELS = 2**18


def _run_all(jobs: Sequence[Callable[[], Any]], threads: int) -> None:
    """Run `jobs` on up to `threads` threads (the loops release the GIL)."""
    threads = min(threads, len(jobs))
    if threads <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(job) for job in jobs]:
            f.result()


@dataclass(frozen=True)
class _Diffusion:
    """Everything a block of whole planes needs to be diffused, shared by every block.

    `lo` and `span` are the linear rescale of each volume (shape ``()`` for one group, else
    one per index along the volume axis), applied inside the loops as they read the raw
    values; None when the data are already rescaled.  `zero_nonfinite`: the output is 0
    where the (raw) input is not finite.
    """

    ax: tuple[int, int, int]  # array axes of (slice, rows, columns)
    vaxis: int | None
    kernel: Any
    serpentine: bool
    jitter: float
    key: Any
    full_strides: np.ndarray  # stride of each array axis in the (volume, x, y, z) C-order index
    lo: np.ndarray | None = None
    span: np.ndarray | None = None
    zero_nonfinite: bool = False

    @property
    def ax3(self) -> tuple[int, int, int]:
        return _axes3(self.ax, self.vaxis)

    @property
    def index_strides(self) -> tuple[int, int, int]:
        return tuple(int(self.full_strides[a]) for a in self.ax)  # type: ignore[return-value]

    def rescale(self, v: int) -> tuple[float, float] | None:
        """(lo, span) of the volume of global index `v` along the volume axis."""
        if self.lo is None or self.span is None:
            return None
        if self.lo.ndim == 0:
            return float(self.lo), float(self.span)
        return float(self.lo[v]), float(self.span[v])

    def views(self, block: np.ndarray, out: np.ndarray, start: Sequence[int]):
        """(global volume index, index base, input view, output view) of each 3D volume of
        `block` lying at array position `start`; views ordered (slice, rows, columns)."""
        ax3 = self.ax3
        if self.vaxis is None:
            yield 0, int(np.dot(start, self.full_strides)), block.transpose(ax3), out.transpose(ax3)
            return
        for v in range(block.shape[self.vaxis]):
            idx = (slice(None),) * self.vaxis + (v,)
            pos = list(start)
            pos[self.vaxis] += v
            base = int(np.dot(pos, self.full_strides))
            yield pos[self.vaxis], base, block[idx].transpose(ax3), out[idx].transpose(ax3)

    def finish(self, block: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.zero_nonfinite and block.dtype.kind == "f":
            np.logical_and(out, np.isfinite(block), out=out)
        return out


def _readable(block: np.ndarray) -> np.ndarray:
    """`block` in a type the loops read (`DK.VIEW_TYPES`): float16 as float32, other byte
    orders as native; both conversions are exact."""
    if block.dtype in DK.VIEW_TYPES:
        return block
    if block.dtype.kind == "f" and block.dtype.itemsize < 4:
        return block.astype(np.float32)
    return block.astype(block.dtype.newbyteorder("="))


def _diffusion(
    vol: Volume, recipe: Recipe, axis: int, kernel: Any, tr: Transform | None = None, nonfinite: bool = False
) -> _Diffusion:
    """The `_Diffusion` of `recipe` on `vol`; with `tr`, the loops apply its linear rescale."""
    lo = span = None
    if tr is not None:
        lo, span = _linear_rescale(tr)
    return _Diffusion(
        ax=_plane_order(vol, axis),
        vaxis=vol.volume_axis,
        kernel=kernel,
        serpentine=bool(recipe.serpentine),
        jitter=float(recipe.jitter),
        key=seed_key(recipe.seed, stream=2),
        full_strides=_canonical_strides(vol.shape, vol.volume_axis),
        lo=lo,
        span=span,
        zero_nonfinite=nonfinite,
    )


def _fusable(recipe: Recipe) -> bool:
    """Whether the rescale of `recipe` is linear, so the loops can apply it themselves."""
    linear = recipe.curve == "linear" or (recipe.curve == "gamma" and recipe.gamma == 1.0)
    upsampled = recipe.upsample is not None and any(f != 1 for f in recipe.upsample)
    return recipe.method == "dither" and linear and not upsampled and recipe.normalize is None


def _linear_rescale(tr: Transform) -> tuple[np.ndarray, np.ndarray]:
    """Per-group (lo, span) of `tr`, as `Transform.apply` computes them (``method='none'``
    uses the values as they are: lo 0, span 1, which gives the same float64 values)."""
    shape = tr.grouping.group_shape
    if tr.method == "none":
        return np.zeros(shape), np.ones(shape)
    lo = np.broadcast_to(np.asarray(tr.lo, np.float64), shape)
    hi = np.broadcast_to(np.asarray(tr.hi, np.float64), shape)
    return np.array(lo), np.where(hi > lo, hi - lo, 1.0)


def _diffuse_slices(
    plan: _Diffusion, block: np.ndarray, out: np.ndarray, start: Sequence[int], threads: int = 1
) -> np.ndarray:
    """2D diffusion of every slice of `block` (whole planes) into the bool array `out`.

    With several threads each 3D volume is cut into runs of slices (multiples of the
    `LOCKSTEP` slices the loop diffuses at once), about two per thread.
    """
    block = _readable(block)
    n = block.shape[plan.ax[0]]
    n_vol = 1 if plan.vaxis is None else block.shape[plan.vaxis]
    units = -(-n // DK.LOCKSTEP)
    per = 1
    if threads > 1 and block.size >= _THREAD_VOXELS:
        per = max(1, min(units, -(-2 * threads // n_vol)))
    else:
        threads = 1
    cuts = [min(n, DK.LOCKSTEP * (units * i // per)) for i in range(per + 1)]
    s_slice = plan.index_strides[0]
    jobs = []
    for v, base, src, dst in plan.views(block, out, start):
        for a, b in itertools.pairwise(cuts):
            jobs.append(
                lambda a=a, b=b, v=v, base=base, src=src, dst=dst: DK.diffuse_2d_view(
                    src[a:b],
                    dst[a:b],
                    plan.kernel,
                    rescale=plan.rescale(v),
                    serpentine=plan.serpentine,
                    jitter=plan.jitter,
                    key=plan.key,
                    index_base=base + a * s_slice,
                    index_strides=plan.index_strides,
                )
            )
    _run_all(jobs, threads)
    return plan.finish(block, out)


def _slices_graph(
    data: da.Array, vol: Volume, recipe: Recipe, axis: int, plan: _Diffusion | None = None
) -> da.Array:
    """2D error diffusion of every slice along `axis` (parallel over blocks of whole planes).

    `data` are the rescaled values, or the raw ones when `plan` applies the rescale.
    """
    if plan is None:
        plan = _diffusion(vol, recipe, axis, DK.diffusion_kernel(recipe.kernel))

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[0]["array-location"]  # type: ignore[index]
        return _diffuse_slices(plan, block, np.empty(block.shape, bool), [lo for lo, _ in loc])

    return da.map_blocks(run, data, dtype=bool, meta=np.empty((0,) * data.ndim, bool))


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


def _diffuse_volume(plan: _Diffusion, v: int, block: np.ndarray, out: np.ndarray, carry: Any, z0: int,
                    n_slices: int, base: int, threads: int = 1) -> np.ndarray:  # fmt: skip
    """3D diffusion of the slab `block` of one 3D volume into `out`; the carry sent on.

    With ``threads=2`` a spare thread stages the slab's sub-slabs (`DK.diffuse_3d_view`)."""
    block = _readable(block)
    _, carry_out = DK.diffuse_3d_view(
        block.transpose(plan.ax3),
        out.transpose(plan.ax3),
        plan.kernel,
        rescale=plan.rescale(v),
        carry_in=carry,
        z0=z0,
        n_slices=n_slices,
        serpentine=plan.serpentine,
        jitter=plan.jitter,
        key=plan.key,
        index_base=base,
        index_strides=plan.index_strides,
        threads=threads,
    )
    plan.finish(block, out)
    return carry_out


def _slab_task(slab: _Slab, carry: Any, *, plan, v, z0, n_slices, base, threads):
    block = slab.compute()
    out = np.empty(block.shape, bool)
    return out, _diffuse_volume(plan, v, block, out, carry, z0, n_slices, base, threads)


def _volume_graph(
    data: da.Array, vol: Volume, recipe: Recipe, axis: int, plan: _Diffusion | None = None
) -> da.Array:
    """3D error diffusion, streamed slab by slab along `axis` with a carried error buffer.

    Each 3D volume is a chain of tasks, one per slab; a task reads (and, with `plan`,
    rescales) its own slab (see `_Slab`), diffuses it with the error carried from the
    previous slab, and passes the error on.  Chains of different volumes run in parallel.
    """
    if plan is None:
        plan = _diffusion(vol, recipe, axis, DK.diffusion_kernel_3d(recipe.kernel))
    vaxis = plan.vaxis
    ax3 = plan.ax3
    n_slices = data.shape[axis]
    bounds = np.concatenate([[0], np.cumsum(data.chunks[axis])])
    n_vol = data.shape[vaxis] if vaxis is not None else 1
    out_volumes = []
    task = dask.delayed(_slab_task, nout=2, pure=True)
    # Fewer chains than threads: each chain's tasks have a spare thread to stage slabs.
    helpers = 2 if n_vol < _threads() else 1
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
            base = int(np.dot(start, plan.full_strides))
            res, carry = task(
                _Slab(data[tuple(index)]),
                carry,
                plan=plan,
                v=v,
                z0=z0,
                n_slices=n_slices,
                base=base,
                threads=helpers,
            )
            shape3 = [data.shape[a] for a in range(data.ndim) if a != vaxis]
            shape3[ax3[0]] = z1 - z0
            meta = np.empty((0, 0, 0), bool)
            slabs.append(da.from_delayed(res, shape=tuple(shape3), dtype=bool, meta=meta))
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
    With a linear rescale and no upsampling, the diffusion loops read the (prepared) data and
    rescale each value themselves (no rescaled copy, no transpose).
    """
    tr, given, stage = transform, recipe, None
    if tr is None:
        stage = prepare(vol, recipe)
        vol, recipe = stage.volume, stage.recipe
        tr = fit_transform(vol, vol.grouping("stack" if recipe.scope == "stack" else "volume"), recipe)
    fused = _fusable(recipe) and tr.linear
    if fused:
        rescaled = vol
    else:
        rescaled = vol.derive(apply_transform(vol.data, tr))
    if recipe.upsample is not None and any(f != 1 for f in recipe.upsample):
        from ..resample import upsample

        rescaled = upsample(rescaled, recipe.upsample)
    axis = rescaled.axis_index(recipe.axis)
    step = _step(recipe, tr, axis, given, stage)
    nonfinite = bool(tr.n_nonfinite.any())
    if recipe.method == "ordered":
        out = _ordered_graph(rescaled.data, rescaled, recipe, axis)
    elif recipe.scope == "slice":
        kernel = DK.diffusion_kernel(recipe.kernel)
        plan = _diffusion(rescaled, recipe, axis, kernel, tr if fused else None, fused and nonfinite)
        out = _slices_graph(_whole_plane_chunks(rescaled, axis, parallel=True), rescaled, recipe, axis, plan)
    else:
        kernel = DK.diffusion_kernel_3d(recipe.kernel)
        plan = _diffusion(rescaled, recipe, axis, kernel, tr if fused else None, fused and nonfinite)
        out = _volume_graph(_whole_plane_chunks(rescaled, axis), rescaled, recipe, axis, plan)
    if not fused and nonfinite and rescaled.shape == vol.shape:
        finite = da.isfinite(vol.data)
        out = da.where(finite, out, np.uint8(0))
    if out.dtype != bool:
        out = da.map_blocks(lambda b: b.view(bool), out, dtype=bool, meta=np.empty((0,) * out.ndim, bool))
    return dataclasses.replace(rescaled.derive(out, step), steps=(*vol.steps, step))


def _step(recipe: Recipe, tr: Transform, axis: int, given: Recipe, stage: Any = None) -> dict[str, Any]:
    """The sidecar's record of a dithering by `recipe` (`given`, as the caller gave it, before
    the intensity `stage` ran, if it did)."""
    step: dict[str, Any] = {
        "step": "binarize",
        "recipe": given.to_dict(),
        "rescale": tr.record() if stage is None else stage.rescale_record(tr),
        "nonfinite_voxels": int(tr.n_nonfinite.sum()),
    }
    if recipe.method == "ordered":
        step["decision"] = {
            "method": "ordered",
            "pattern": recipe.pattern,
            "matrix": recipe.matrix,
            "ndim": 2 if recipe.scope == "slice" else 3,
        }
    elif recipe.scope == "slice":
        step["decision"] = {
            "method": "dither",
            "mode": "2d",
            "axis": axis,
            "kernel": kernel_record(recipe.kernel),
            "serpentine": recipe.serpentine,
            "jitter": recipe.jitter,
        }
    else:
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
    return step


def _dither_in_memory(arr: np.ndarray, vol: Volume, recipe: Recipe) -> np.ndarray | None:
    """`dither_volume` of a numpy array, computed at once without a dask graph; None when
    the recipe or the array's type needs the graph (curves, upsampling, exotic types).

    The diffusion runs on `_threads` threads: runs of slices (2D), or volumes (3D) with a
    spare thread staging the slabs of a volume.
    """
    if not _fusable(recipe) or arr.dtype not in DK.VIEW_TYPES:
        return None
    threads = _threads() if arr.size >= _THREAD_VOXELS else 1
    # Its passes run on the array's blocks, without a dask graph (`volume.in_memory`).
    tr = fit_transform(vol, vol.grouping("stack" if recipe.scope == "stack" else "volume"), recipe)
    axis = vol.axis_index(recipe.axis)
    out = np.empty(arr.shape, bool)
    start = [0] * arr.ndim
    nonfinite = bool(tr.n_nonfinite.any())
    if recipe.scope == "slice":
        plan = _diffusion(vol, recipe, axis, DK.diffusion_kernel(recipe.kernel), tr, nonfinite)
        return _diffuse_slices(plan, arr, out, start, threads)
    plan = _diffusion(vol, recipe, axis, DK.diffusion_kernel_3d(recipe.kernel), tr, nonfinite)
    n_slices = arr.shape[axis]
    views = list(plan.views(arr, out, start))
    # Volumes in parallel; each one's diffusion is sequential, but a spare thread stages its
    # slabs meanwhile.
    helpers = 2 if threads > len(views) else 1
    jobs = [
        lambda v=v, base=base, src=src, dst=dst: DK.diffuse_3d_view(
            src,
            dst,
            plan.kernel,
            rescale=plan.rescale(v),
            n_slices=n_slices,
            serpentine=plan.serpentine,
            jitter=plan.jitter,
            key=plan.key,
            index_base=base,
            index_strides=plan.index_strides,
            threads=helpers,
        )
        for v, base, src, dst in views
    ]
    _run_all(jobs, threads)
    return plan.finish(arr, out)


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
    if kind == "numpy":
        out = _dither_in_memory(np.asarray(volume), vol, recipe)
        if out is not None:
            return out
    return like_input(dither_volume(vol, recipe), kind)
