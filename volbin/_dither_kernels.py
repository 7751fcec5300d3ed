"""Compiled core of dithering: error-diffusion kernels as data, and their loops.

Intensities are float32 arrays in [0, 1]; outputs are uint8 arrays of 0 and 1, with
``1 where value + carried error > threshold``.  Everything here works on plain C-contiguous
numpy arrays and knows nothing of dask, scopes or files; drivers call `diffuse_2d` on a
chunk of whole slices (or `diffuse_3d` on a slab, carrying the error from slab to slab) in
worker threads, since the loops release the GIL.

Conventions shared by every loop
--------------------------------
* Scan order: row by row, left to right; with ``serpentine=True`` odd rows (``y % 2 == 1``)
  run right to left with the kernel mirrored (``dx -> -dx``).  In `diffuse_3d`,
  ``serpentine=True`` is one continuous boustrophedon path through the volume: odd slices
  (global index ``z0 + z``) scan their rows from the last to the first (kernel ``dy``
  mirrored), and the r-th row scanned in slice z runs right to left when
  ``(z * rows + r) % 2 == 1``, so each row starts where the previous one ended and each slice
  where the previous one ended.
* Edges, the "scan-end" rule: error that would leave past the end of the scan is dropped --
  past the last slice (`diffuse_3d`), past the last row of every slice (in scan order), and,
  in raster scans, past the end of every row.  Error that would leave through a side the scan
  comes back along (before a raster row's start, either end of a serpentine row) is spread
  over the in-bounds taps: ``s = e * wkeep / insum`` in float64, with ``insum`` the weight of
  the in-bounds taps and ``wkeep`` that of the taps not dropped.  At low grey levels error
  diffusion carries error "in flight" that has not yet become dots; spreading it at the far
  edges instead (the classic renormalisation) piles it onto the last row of every slice and
  the last slice, dotting empty background.  The cost is a small loss of density, largest
  where a faint noisy background fills the field of view: on real scans with clean
  backgrounds the output mean is within about 0.5 % of the input mean (Floyd-Steinberg,
  Sierra Lite, 3D), a few percent on volumes filled with Rician background noise.
* Jitter: ``threshold + jitter * (u - 0.5)`` with ``u = uniform01(key, g)`` and ``g`` the
  voxel's global index, ``index_base + i0 * s0 + i1 * s1 + i2 * s2`` for block index
  ``(i0, i1, i2)`` and ``index_strides = (s0, s1, s2)``.  Drivers pass the C-order index of
  the block's first voxel in the whole array and the array's C-order strides (in elements,
  permuted to the block's axis order), so the noise does not depend on chunking.
* Non-finite input values count as 0 (drivers should have mapped them already).
* Error arithmetic is float32 (``_ERR``).  A float64 buffer measured no faster (same loop,
  7.0 vs 7.1 ns per pixel) and float32 already keeps output means within 1e-6 of the input;
  float32 halves the buffers `diffuse_3d` carries from slab to slab.  No fused multiply-add
  is used, so ``tests/reference.py`` reproduces the loops bit for bit in numpy float32.

The loops are compiled ahead of time, in `volbin.kernels`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from .kernels._diffusion import LOCKSTEP, diffuse_lanes, diffuse_slices, diffuse_volume, load_slab, store_slab
from .kernels._void_cluster import void_and_cluster_ranks

__all__ = [
    "KERNELS",
    "KERNELS_3D",
    "LOCKSTEP",
    "NEXT_SLICE_SHARE",
    "NEXT_SLICE_SPREAD",
    "VIEW_TYPES",
    "DiffusionKernel",
    "DiffusionKernel3D",
    "diffuse_2d",
    "diffuse_2d_view",
    "diffuse_3d",
    "diffuse_3d_view",
    "diffusion_kernel",
    "diffusion_kernel_3d",
    "extend_to_3d",
    "void_and_cluster_ranks",
]

_ERR = np.float32


# --------------------------------------------------------------------------------------------
# Kernels as data
# --------------------------------------------------------------------------------------------


class DiffusionKernel(NamedTuple):
    """Error-diffusion weights of a 2D kernel, as offsets from the current pixel.

    ``dy[k] >= 0``; taps in the current row (``dy == 0``) have ``dx > 0``.  ``weights`` are
    fractions of the error (already divided by the kernel's divisor).
    """

    dy: tuple[int, ...]
    dx: tuple[int, ...]
    weights: tuple[float, ...]


class DiffusionKernel3D(NamedTuple):
    """Error-diffusion weights of a volumetric kernel; ``dz`` runs along the slab axis (0).

    Taps with ``dz == 0`` follow the rules of `DiffusionKernel`; taps with ``dz > 0`` may have
    any ``dy`` and ``dx`` (the whole next slice is still unprocessed).
    """

    dz: tuple[int, ...]
    dy: tuple[int, ...]
    dx: tuple[int, ...]
    weights: tuple[float, ...]


def _matrix_kernel(matrix, divisor=None) -> DiffusionKernel:
    """Parse the weight-matrix convention; `divisor=None` normalises the weights to sum 1."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"A diffusion matrix must be a non-empty 2D array; got shape {m.shape}.")
    if not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
        raise ValueError(f"A diffusion matrix must hold real numbers; got dtype {m.dtype}.")
    m = m.astype(np.float64)
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError("A diffusion matrix must hold finite, non-negative weights.")
    c = m.shape[1] // 2
    if (m[0, : c + 1] != 0).any():
        raise ValueError(
            "A diffusion matrix must be 0 at and before the current pixel, which is row 0, "
            f"column cols // 2 = {c}; got row 0 = {m[0].tolist()}."
        )
    if (m[0, c + 3 :] != 0).any():
        raise ValueError(
            "A diffusion matrix may diffuse at most 2 pixels ahead in the current row "
            f"(row 0, columns {c + 1} and {c + 2}); got row 0 = {m[0].tolist()}."
        )
    if not (m[1:] != 0).any():
        raise ValueError(
            f"A diffusion matrix must diffuse some error to the following rows; got {m.tolist()}."
        )
    total = float(m.sum()) if divisor is None else float(divisor)
    if not total > 0:
        raise ValueError(f"The divisor of a diffusion matrix must be positive; got {total}.")
    ys, xs = np.nonzero(m)
    return DiffusionKernel(
        tuple(int(y) for y in ys),
        tuple(int(x) - c for x in xs),
        tuple(float(m[y, x]) / total for y, x in zip(ys, xs, strict=True)),
    )


#: Named 2D kernels (matrix, divisor), current pixel at row 0, column ``cols // 2``.
_MATRICES: dict[str, tuple[list[list[int]], int]] = {
    # Floyd & Steinberg (1976).
    "floyd-steinberg": ([[0, 0, 7], [3, 5, 1]], 16),
    # Jarvis, Judice & Ninke (1976).
    "jarvis-judice-ninke": ([[0, 0, 0, 7, 5], [3, 5, 7, 5, 3], [1, 3, 5, 3, 1]], 48),
    # Stucki (1981).
    "stucki": ([[0, 0, 0, 8, 4], [2, 4, 8, 4, 2], [1, 2, 4, 2, 1]], 42),
    # Burkes (1988).
    "burkes": ([[0, 0, 0, 8, 4], [2, 4, 8, 4, 2]], 32),
    # Sierra, three rows.
    "sierra": ([[0, 0, 0, 5, 3], [2, 4, 5, 4, 2], [0, 2, 3, 2, 0]], 32),
    # Sierra, two rows.
    "sierra-2row": ([[0, 0, 0, 4, 3], [1, 2, 3, 2, 1]], 16),
    # Sierra Lite.
    "sierra-lite": ([[0, 0, 2], [1, 1, 0]], 4),
    # Atkinson: diffuses only 6/8 of the error, by design (see `KERNELS`).
    "atkinson": ([[0, 0, 0, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], 8),
}

#: Named 2D error-diffusion kernels.  Every kernel's weights sum to 1 except ``"atkinson"``,
#: which diffuses 6/8 of the error and drops the rest on purpose (it keeps highlights and
#: shadows clean at the price of contrast), so its output mean is not tied to the input mean:
#: flat 0.1 comes out near 0.01.  Edge handling keeps that 6/8 total.  For Atkinson's
#: footprint without the loss, pass its matrix to `diffusion_kernel` (normalised to 1).
KERNELS: Mapping[str, DiffusionKernel] = {name: _matrix_kernel(m, d) for name, (m, d) in _MATRICES.items()}

#: Share of the error that 2D kernels extended to volumes send straight into the next slice.
#: Chosen by a search on five real scans and a phantom (docs/methods.md, "Choice of the
#: volumetric error-diffusion loop"): what volumetric diffusion buys is decorrelating the
#: slices, not moving much error through them; shares from 1/64 to 1/12 scored alike and 1/16
#: best for Floyd-Steinberg, Sierra Lite, Stucki and Sierra (within 3 % of the best for the
#: others), while 3/8 was worse than 2D diffusion per slice.  1/16 keeps the weights of the
#: dyadic kernels exact in float32 (Sierra Lite: 15/32 right, 15/64 down-left, 15/64 down,
#: 1/16 below).
NEXT_SLICE_SHARE = 0.0625

#: The spread of the earlier `floyd-steinberg-3d` kernel's next-slice share (3/8 of the
#: error): a 3x3 binomial (1 2 1) x (1 2 1) / 16 centred under the current voxel.
NEXT_SLICE_SPREAD = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
NEXT_SLICE_SPREAD.flags.writeable = False


def _extend_binomial(kernel, share: float) -> DiffusionKernel3D:
    """``1 - share`` in-slice, ``share`` spread by `NEXT_SLICE_SPREAD` over the next slice."""
    k2 = diffusion_kernel(kernel)
    total = sum(k2.weights)
    dz = [0] * len(k2.weights)
    dy = list(k2.dy)
    dx = list(k2.dx)
    w = [v * (1.0 - share) for v in k2.weights]
    for (j, i), s in np.ndenumerate(NEXT_SLICE_SPREAD):
        dz.append(1)
        dy.append(j - 1)
        dx.append(i - 1)
        w.append(float(s) * share * total)
    return DiffusionKernel3D(tuple(dz), tuple(dy), tuple(dx), tuple(w))


def extend_to_3d(kernel, share: float = NEXT_SLICE_SHARE) -> DiffusionKernel3D:
    """Turn a 2D kernel into a volumetric one: ``1 - share`` in-slice, ``share`` below.

    The in-slice weights are the 2D weights times ``1 - share``; the voxel straight below in
    the next slice, ``(dz, dy, dx) = (1, 0, 0)``, receives ``share`` times the kernel's total
    weight.  The total weight is unchanged (Atkinson stays at 6/8).  Use the result with
    ``serpentine=True`` in `diffuse_3d` (the boustrophedon path), for which the share was
    chosen.

    Parameters
    ----------
    kernel : str, (rows, cols) array_like or DiffusionKernel
        A 2D kernel, as accepted by `diffusion_kernel`.
    share : float
        Fraction of the diffused error sent to the next slice, in (0, 1).

    Returns
    -------
    DiffusionKernel3D

    Raises
    ------
    ValueError
        If `share` is not in (0, 1), or as `diffusion_kernel`.
    """
    k2 = diffusion_kernel(kernel)
    share = float(share)
    if not 0.0 < share < 1.0:
        raise ValueError(f"`share` must be in (0, 1); got {share}.")
    total = sum(k2.weights)
    return DiffusionKernel3D(
        (*(0,) * len(k2.weights), 1),
        (*k2.dy, 0),
        (*k2.dx, 0),
        (*(v * (1.0 - share) for v in k2.weights), share * total),
    )


def diffusion_kernel(kernel, *, normalize: bool = True) -> DiffusionKernel:
    """A validated 2D error-diffusion kernel from a name or a weight matrix.

    Parameters
    ----------
    kernel : str, (rows, cols) array_like or DiffusionKernel
        A name in `KERNELS`, or a matrix of non-negative weights whose row 0 holds the current
        pixel at column ``cols // 2``: entries at and before it in row 0 must be 0, at most two
        entries after it may be non-zero, and some later row must be non-zero.
    normalize : bool
        Divide a matrix's weights by their sum (so no error is lost).  With False the weights
        are used as given and must sum to at most 1.

    Returns
    -------
    DiffusionKernel

    Raises
    ------
    ValueError
        Unknown name, or a matrix breaking the rules above.

    Examples
    --------
    >>> diffusion_kernel([[0, 0, 7], [3, 5, 1]]) == KERNELS["floyd-steinberg"]
    True
    """
    if isinstance(kernel, DiffusionKernel3D):
        raise ValueError("`kernel` is volumetric; use it with `diffuse_3d`.")
    if isinstance(kernel, DiffusionKernel):
        k = kernel
    elif isinstance(kernel, str):
        try:
            return KERNELS[kernel]
        except KeyError:
            raise ValueError(
                f"`kernel` must be one of {sorted(KERNELS)} or a weight matrix; got {kernel!r}."
            ) from None
    else:
        k = _matrix_kernel(kernel, None if normalize else 1.0)
    _check_taps(np.zeros(len(k.weights), np.int64), k.dy, k.dx, k.weights)
    return k


def diffusion_kernel_3d(kernel, *, share: float = NEXT_SLICE_SHARE) -> DiffusionKernel3D:
    """A validated volumetric kernel: a name in `KERNELS_3D`, or any 2D kernel extended.

    2D kernels (names in `KERNELS`, matrices, `DiffusionKernel`) are extended with
    `extend_to_3d` using `share`.

    Raises
    ------
    ValueError
        Unknown name or invalid kernel.
    """
    if isinstance(kernel, DiffusionKernel3D):
        _check_taps(kernel.dz, kernel.dy, kernel.dx, kernel.weights)
        if max(kernel.dz) < 1:
            raise ValueError("A volumetric kernel must diffuse some error to the next slice.")
        return kernel
    if isinstance(kernel, str) and kernel in KERNELS_3D:
        return KERNELS_3D[kernel]
    if isinstance(kernel, str) and kernel not in KERNELS:
        raise ValueError(
            f"`kernel` must be one of {sorted(KERNELS_3D) + sorted(KERNELS)} or a weight "
            f"matrix; got {kernel!r}."
        )
    return extend_to_3d(kernel, share)


def _check_taps(dz, dy, dx, w) -> None:
    n = len(w)
    if not (len(dz) == len(dy) == len(dx) == n) or n == 0:
        raise ValueError("A kernel needs equally long, non-empty dz, dy, dx and weights.")
    seen = set()
    for z, y, x, v in zip(dz, dy, dx, w, strict=True):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"Kernel weights must be positive and finite; got {v}.")
        if z < 0 or (z == 0 and (y < 0 or (y == 0 and x <= 0))):
            raise ValueError(f"Kernel tap (dz, dy, dx) = {(z, y, x)} points at an already processed voxel.")
        if z == 0 and y == 0 and x > 2:
            raise ValueError(f"Kernel tap (dz, dy, dx) = {(z, y, x)}: at most 2 pixels ahead in the row.")
        if (z, y, x) in seen:
            raise ValueError(f"Kernel tap (dz, dy, dx) = {(z, y, x)} appears twice.")
        seen.add((z, y, x))
    if sum(w) > 1.0 + 1e-9:
        raise ValueError(f"Kernel weights must sum to at most 1; got {sum(w)}.")


#: Named volumetric kernels, derived here rather than taken from the literature.
#: ``"sierra-lite-3d"``, the default of `diffuse_3d` and of ``scope="volume"``: Sierra Lite
#: extended by `extend_to_3d` (1/16 straight below), weights 15/32 right, 15/64 down-left,
#: 15/64 down, 1/16 into the next slice; it rendered real scans best in the search of
#: docs/methods.md (with ``serpentine=True``).  ``"floyd-steinberg-3d"``, the earlier
#: default: Floyd-Steinberg with 3/8 of the error spread over the next slice, weights (/128)
#: 35 right; 15 25 5 on the next row; 3 6 3 / 6 12 6 / 3 6 3 on the next slice, centred under
#: the current voxel; it renders real scans worse than 2D diffusion per slice.
KERNELS_3D: Mapping[str, DiffusionKernel3D] = {
    "sierra-lite-3d": extend_to_3d("sierra-lite"),
    "floyd-steinberg-3d": _extend_binomial("floyd-steinberg", 0.375),
}


def split_taps(dz, dy, dx, w):
    """Kernel taps in the form the loops take.

    Returns ``(c1, c2, dz, dy, dx, w)``: the float32 weights of the row taps at ``dx = 1, 2``
    (0 if absent; these are carried in registers) and arrays of the other taps (int64
    offsets, float32 weights) in a fixed order, the same order ``tests/reference.py`` uses.
    Arrays rather than tuples: one compiled loop serves every kernel.
    """
    c1 = c2 = 0.0
    rest = []
    for z, y, x, v in zip(dz, dy, dx, w, strict=True):
        if z == 0 and y == 0:
            if x == 1:
                c1 = v
            else:
                c2 = v
        else:
            rest.append((int(z), int(y), int(x), v))
    rest.sort(key=lambda t: t[:3])
    taps = np.array([t[:3] for t in rest], np.int64).reshape(-1, 3).T.copy()
    return (
        _ERR(c1),
        _ERR(c2),
        taps[0],
        taps[1],
        taps[2],
        np.array([t[3] for t in rest], _ERR),
    )


@functools.lru_cache(maxsize=64)
def _loop_taps(kernel):
    """`split_taps` of a (hashable) kernel, cached: drivers call the loops once per chunk."""
    dz = getattr(kernel, "dz", (0,) * len(kernel.weights))
    taps = split_taps(dz, kernel.dy, kernel.dx, kernel.weights)
    for a in taps[2:]:
        a.flags.writeable = False
    return taps


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------
#
# `diffuse_slices` and `diffuse_volume` are compiled ahead of time (volbin.kernels._diffusion,
# where the order of operations is written out); they take the arguments `split_taps`
# makes.  Each row is processed in two steps.  A sequential pass quantises its pixels,
# carrying the error for the next one or two pixels of the row in registers and writing the
# error each pixel diffuses (already rescaled at edges) to a row buffer.  A second pass then
# adds ``w[k] * srow`` to each tap's target row, tap after tap: plain vectorisable loops
# instead of scattered updates inside the dependency chain.  The order of additions is part
# of the definition (``tests/reference.py`` follows it).


# --------------------------------------------------------------------------------------------
# Public, driver-friendly entry points
# --------------------------------------------------------------------------------------------


def _prepare(img, out, what):
    a = np.asarray(img)
    if not (np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_):
        raise TypeError(
            f"`{what}` must hold float intensities in [0, 1]; got dtype {a.dtype} "
            "(rescale integers first, e.g. divide uint8 data by 255)."
        )
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"`{what}` must be a 2D or 3D array; got shape {np.shape(img)}.")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if out is None:
        out = np.empty(a.shape, np.uint8)
    else:
        if not (
            isinstance(out, np.ndarray)
            and out.dtype == np.uint8
            and out.flags.c_contiguous
            and out.size == a.size
        ):
            raise ValueError(
                f"`out` must be a C-contiguous uint8 array of {a.size} elements to match "
                f"`{what}` {np.shape(img)}."
            )
    return a, out


def _index_args(shape, key, index_base, index_strides):
    if index_strides is None:
        return np.uint64(key), int(index_base), (shape[1] * shape[2], shape[2], 1)
    if len(index_strides) != 3:
        raise ValueError(f"`index_strides` must hold 3 ints; got {index_strides!r}.")
    s0, s1, s2 = index_strides
    return np.uint64(key), int(index_base), (int(s0), int(s1), int(s2))


def _check_scalars(threshold, jitter):
    threshold = float(threshold)
    jitter = float(jitter)
    if not math.isfinite(threshold):
        raise ValueError(f"`threshold` must be finite; got {threshold}.")
    if not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"`jitter` must be a finite number >= 0; got {jitter}.")
    return threshold, jitter


def diffuse_2d(
    img: np.ndarray,
    out: np.ndarray | None = None,
    kernel="floyd-steinberg",
    *,
    serpentine: bool = False,
    threshold: float = 0.5,
    jitter: float = 0.0,
    key: int | np.uint64 = 0,
    index_base: int = 0,
    index_strides: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Error-diffuse every 2D slice of a stack independently.

    Parameters
    ----------
    img : (n, rows, cols) or (rows, cols) float array
        Intensities in [0, 1]; float32 C-contiguous input is used without a copy (others
        are copied: drivers should hand over slices along the last axes of C-ordered data).
    out : (n, rows, cols) uint8 ndarray, optional
        Where to write the 0/1 result (C-contiguous, same number of elements).
    kernel : str, (rows, cols) array_like or DiffusionKernel
        See `diffusion_kernel`.
    serpentine : bool
        Scan odd rows right to left, mirroring the kernel.
    threshold : float
        A pixel is 1 where value plus carried error is > `threshold`.
    jitter : float
        Amplitude of the uniform threshold noise (0 for none).
    key : uint64
        Random key from `volbin._kernels.seed_key`; only used with `jitter`.
    index_base, index_strides : int, tuple of 3 ints
        Global index of ``img[0, 0, 0]`` and global index steps along its three axes (default:
        the C-order strides of `img` itself), so that noise does not depend on chunking.

    Returns
    -------
    out : (n, rows, cols) uint8 ndarray

    Raises
    ------
    TypeError
        If `img` does not hold floats.
    ValueError
        Bad shapes, `out`, kernel, `threshold` or `jitter`.

    Notes
    -----
    The loop releases the GIL; drivers run it on chunks of whole slices in threads.

    Examples
    --------
    >>> diffuse_2d(np.full((4, 4), 0.5, np.float32))[0]
    array([[0, 1, 0, 1],
           [1, 0, 1, 0],
           [0, 1, 0, 1],
           [1, 0, 1, 0]], dtype=uint8)
    """
    a, out = _prepare(img, out, "img")
    k = diffusion_kernel(kernel)
    threshold, jitter = _check_scalars(threshold, jitter)
    c1, c2, _, dy, dx, w = _loop_taps(k)
    key, base, strides = _index_args(a.shape, key, index_base, index_strides)
    res = out.reshape(a.shape)
    diffuse_slices(a, res, c1, c2, dy, dx, w, bool(serpentine), threshold, jitter, key, base,
                   strides)  # fmt: skip
    return out


def diffuse_3d(
    vol: np.ndarray,
    out: np.ndarray | None = None,
    kernel="sierra-lite-3d",
    *,
    carry_in: np.ndarray | None = None,
    carry_out: np.ndarray | None = None,
    z0: int = 0,
    n_slices: int | None = None,
    serpentine: bool = True,
    threshold: float = 0.5,
    jitter: float = 0.0,
    key: int | np.uint64 = 0,
    index_base: int = 0,
    index_strides: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Volumetric error diffusion of a slab of slices, streaming along axis 0.

    Process a volume in one call, or slab after slab in order, passing each call's
    `carry_out` as the next call's `carry_in`: the bytes are identical either way.

    Parameters
    ----------
    vol : (n, rows, cols) float array
        The slab: slices ``z0 .. z0 + n - 1`` of a volume of `n_slices` slices.
    out : (n, rows, cols) uint8 ndarray, optional
        Where to write the result.
    kernel : str, array_like, DiffusionKernel or DiffusionKernel3D
        See `diffusion_kernel_3d`; 2D kernels are extended into the next slice.
    carry_in : (d, rows, cols) float32 ndarray, optional
        Error the previous slab sent into this one (``d = max(dz)``); None at the start.
    carry_out : (d, rows, cols) float32 ndarray, optional
        Where to put the error this slab sends on; allocated if None.
    z0, n_slices : int
        Position of the slab in the volume and the volume's length (default: the slab is the
        whole volume).  The last slice's edge handling needs to know where the volume ends.
    serpentine : bool
        Scan the volume along one continuous boustrophedon path (see the module notes;
        default); False scans every slice in raster order.
    threshold, jitter, key, index_base, index_strides
        As in `diffuse_2d`.

    Returns
    -------
    out : (n, rows, cols) uint8 ndarray
    carry_out : (d, rows, cols) float32 ndarray

    Raises
    ------
    TypeError
        If `vol` does not hold floats.
    ValueError
        Bad shapes, buffers, slab position or parameters.
    """
    a, out = _prepare(vol, out, "vol")
    k = diffusion_kernel_3d(kernel)
    threshold, jitter = _check_scalars(threshold, jitter)
    n, rows, cols = a.shape
    z0 = int(z0)
    n_slices = z0 + n if n_slices is None else int(n_slices)
    if z0 < 0 or z0 + n > n_slices:
        raise ValueError(f"Slab of {n} slices at `z0` = {z0} does not fit in `n_slices` = {n_slices}.")
    c1, c2, dz, dy, dx, w = _loop_taps(k)
    depth = int(dz.max())
    cshape = (depth, rows, cols)
    if carry_in is None:
        carry_in = np.zeros(cshape, _ERR)
    elif not (isinstance(carry_in, np.ndarray) and carry_in.shape == cshape):
        raise ValueError(f"`carry_in` must be an array of shape {cshape}.")
    carry_in = np.ascontiguousarray(carry_in, dtype=_ERR)
    if carry_out is None:
        carry_out = np.empty(cshape, _ERR)
    elif not (
        isinstance(carry_out, np.ndarray)
        and carry_out.shape == cshape
        and carry_out.dtype == _ERR
        and carry_out.flags.c_contiguous
    ):
        raise ValueError(f"`carry_out` must be a C-contiguous float32 array of shape {cshape}.")
    key, base, strides = _index_args(a.shape, key, index_base, index_strides)
    diffuse_volume(a, out.reshape(a.shape), c1, c2, dz, dy, dx, w, bool(serpentine), threshold,
                   jitter, key, base, strides, z0, n_slices, carry_in, carry_out)  # fmt: skip
    return out, carry_out


# --------------------------------------------------------------------------------------------
# Views of raw data in, bits out
# --------------------------------------------------------------------------------------------
#
# Drivers hand these a transposed view of the input volume (no copy) and of the output, with
# the rescale's (lo, span); the loops compute each value as `Transform.apply` does.  2D: the
# lockstep loop `diffuse_lanes` reads rows of 16 slices from the view itself.  3D: the view is
# staged slab by slab into a small float32 buffer by `load_slab` (reading the input in its
# memory order), diffused by `diffuse_volume`, and the bits written by `store_slab`.  The
# bytes are those `diffuse_2d` / `diffuse_3d` give on a rescaled contiguous copy.

#: float32 bytes of one slab staged by `diffuse_3d_view` (a few slices, in the core's cache).
SLAB_BYTES = 2**20
#: Slices staged at least when the slice axis is the innermost in memory: consecutive slices
#: share cache lines (16 float32 or 64 bytes), which are then read once.
SLAB_MIN_INNERMOST = 16

#: Input types the views may have (bool is read as uint8; others, float16 and non-native byte
#: orders among them, are refused).
VIEW_TYPES = frozenset(
    np.dtype(t)
    for t in (
        *("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"),
        *("float32", "float64"),
    )
)


def _prepare_view(src, out, what):
    if not isinstance(src, np.ndarray) or src.ndim != 3:
        raise ValueError(f"`{what}` must be a 3D numpy array (a view); got {type(src).__name__}.")
    if src.dtype == np.bool_:
        src = src.view(np.uint8)
    if src.dtype not in VIEW_TYPES:
        raise TypeError(
            f"`{what}` must hold native-endian integers or float32/float64; got dtype {src.dtype}."
        )
    if out is None:
        out = np.empty(src.shape, np.uint8)
    elif not (
        isinstance(out, np.ndarray)
        and out.dtype in (np.uint8, np.bool_)
        and out.shape == src.shape
        and out.flags.writeable
    ):
        raise ValueError(f"`out` must be a writable uint8 or bool array of shape {src.shape}.")
    return src, out


def _rescale_args(rescale) -> tuple[float, float, bool]:
    if rescale is None:
        return 0.0, 1.0, False
    lo, span = (float(v) for v in rescale)
    if not (math.isfinite(lo) and math.isfinite(span) and span > 0):
        raise ValueError(f"`rescale` must be (lo, span) with finite lo and span > 0; got {rescale!r}.")
    return lo, span, True


def _slab_depth(src: np.ndarray, slab: int | None) -> int:
    n, rows, cols = src.shape
    if slab is not None:
        if int(slab) < 1:
            raise ValueError(f"`slab` must be a positive int; got {slab}.")
        return min(int(slab), max(n, 1))
    depth = max(2, SLAB_BYTES // max(4 * rows * cols, 1))
    st = [abs(t) for t in src.strides]
    if st[0] < min(st[1], st[2]):
        depth = max(depth, SLAB_MIN_INNERMOST)
    return min(depth, max(n, 1))


def diffuse_2d_view(
    src: np.ndarray,
    out: np.ndarray | None = None,
    kernel="floyd-steinberg",
    *,
    rescale: tuple[float, float] | None = None,
    serpentine: bool = False,
    threshold: float = 0.5,
    jitter: float = 0.0,
    key: int | np.uint64 = 0,
    index_base: int = 0,
    index_strides: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """`diffuse_2d` of every slice ``src[i]`` of a view of raw data, rescaled on the fly.

    Sixteen slices are diffused in lockstep, one per vector lane (`diffuse_lanes`).

    Parameters
    ----------
    src : (n, rows, cols) ndarray
        Any strides (a transposed view of a volume is read in place) and any type of
        `VIEW_TYPES`.
    out : (n, rows, cols) uint8 or bool ndarray, optional
        Any strides; receives the 0/1 result.
    rescale : (lo, span), optional
        Use ``clip((float64(x) - lo) / span, 0, 1)`` rounded to float32, the linear rescale of
        `volbin.rescale.Transform.apply`, instead of ``float32(x)``.
    kernel, serpentine, threshold, jitter, key, index_base, index_strides
        As in `diffuse_2d`; `index_strides` defaults to the C-order strides of `src`'s shape.

    Returns
    -------
    out : (n, rows, cols) uint8 or bool ndarray
        The bytes `diffuse_2d` gives on the rescaled values as a contiguous float32 copy.

    Raises
    ------
    TypeError
        If `src` has a type outside `VIEW_TYPES`.
    ValueError
        Bad shapes, `out`, `rescale`, kernel, `threshold` or `jitter`.
    """
    src, out = _prepare_view(src, out, "src")
    lo, span, do_rescale = _rescale_args(rescale)
    k = diffusion_kernel(kernel)
    threshold, jitter = _check_scalars(threshold, jitter)
    c1, c2, _, dy, dx, w = _loop_taps(k)
    key, base, strides = _index_args(src.shape, key, index_base, index_strides)
    if src.size:
        diffuse_lanes(src, out.view(np.uint8), lo, span, do_rescale, c1, c2, dy, dx, w, bool(serpentine),
                      threshold, jitter, key, base, strides)  # fmt: skip
    return out


def diffuse_3d_view(
    src: np.ndarray,
    out: np.ndarray | None = None,
    kernel="sierra-lite-3d",
    *,
    rescale: tuple[float, float] | None = None,
    carry_in: np.ndarray | None = None,
    z0: int = 0,
    n_slices: int | None = None,
    serpentine: bool = True,
    threshold: float = 0.5,
    jitter: float = 0.0,
    key: int | np.uint64 = 0,
    index_base: int = 0,
    index_strides: tuple[int, int, int] | None = None,
    slab: int | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """`diffuse_3d` of a view of raw data (slices along axis 0), rescaled on the fly.

    The view is staged slab by slab (`slab` slices at a time; default about `SLAB_BYTES` of
    float32) into a contiguous buffer by `load_slab`, and the bits written by `store_slab`;
    with ``threads=2`` a second thread stages the next slab and writes the last one's bits
    while the (sequential) loop runs.  `src`, `out` and `rescale` are as in
    `diffuse_2d_view`; the other parameters as in `diffuse_3d`.  `carry_in` is not modified.

    Returns
    -------
    out : (n, rows, cols) uint8 or bool ndarray
    carry_out : (d, rows, cols) float32 ndarray
        The bytes and the carried error `diffuse_3d` gives on the rescaled values.
    """
    src, out = _prepare_view(src, out, "src")
    lo, span, do_rescale = _rescale_args(rescale)
    k = diffusion_kernel_3d(kernel)
    threshold, jitter = _check_scalars(threshold, jitter)
    n, rows, cols = src.shape
    z0 = int(z0)
    n_slices = z0 + n if n_slices is None else int(n_slices)
    if z0 < 0 or z0 + n > n_slices:
        raise ValueError(f"Slab of {n} slices at `z0` = {z0} does not fit in `n_slices` = {n_slices}.")
    c1, c2, dz, dy, dx, w = _loop_taps(k)
    cshape = (int(dz.max()), rows, cols)
    if carry_in is None:
        carry_in = np.zeros(cshape, _ERR)
    elif not (isinstance(carry_in, np.ndarray) and carry_in.shape == cshape):
        raise ValueError(f"`carry_in` must be an array of shape {cshape}.")
    given = carry_in = np.ascontiguousarray(carry_in, dtype=_ERR)
    carry_out = np.empty(cshape, _ERR)
    key, base, strides = _index_args(src.shape, key, index_base, index_strides)
    bits = out.view(np.uint8)
    if n == 0:
        return out, carry_in.copy()
    depth = _slab_depth(src, slab)
    direct_in = not do_rescale and src.dtype == np.float32 and src.flags.c_contiguous
    direct_out = bits.flags.c_contiguous
    ranges = [(s, min(n, s + depth)) for s in range(0, n, depth)]
    pipelined = threads > 1 and len(ranges) > 1 and not (direct_in and direct_out)
    nbuf = 2 if pipelined else 1
    ins = [] if direct_in else [np.empty((depth, rows, cols), np.float32) for _ in range(nbuf)]
    outs = [] if direct_out else [np.empty((depth, rows, cols), np.uint8) for _ in range(nbuf)]

    def stage(i: int) -> np.ndarray:
        s, e = ranges[i]
        if direct_in:
            return src[s:e]
        x = ins[i % nbuf][: e - s]
        load_slab(src[s:e], x, lo, span, do_rescale)
        return x

    def unstage(i: int, y: np.ndarray) -> None:
        s, e = ranges[i]
        store_slab(y, bits[s:e])

    # With `threads`, a second thread stages the next slab and writes out the last one's bits
    # while this one diffuses (the loop is sequential; staging a transposed view costs about
    # as much as the loop).
    with ThreadPoolExecutor(1) if pipelined else contextlib.nullcontext() as helper:
        staged = stage(0)
        done = []
        for i, (s, e) in enumerate(ranges):
            x = staged if i == 0 or helper is None else staged.result()
            if i + 1 < len(ranges):
                staged = helper.submit(stage, i + 1) if helper is not None else None
            y = bits[s:e] if direct_out else outs[i % nbuf][: e - s]
            diffuse_volume(x, y, c1, c2, dz, dy, dx, w, bool(serpentine), threshold, jitter, key,
                           base + s * strides[0], strides, z0 + s, n_slices, carry_in, carry_out)  # fmt: skip
            # The error sent on feeds the next slab; the caller's buffer is never written.
            carry_in, carry_out = carry_out, (np.empty(cshape, _ERR) if carry_in is given else carry_in)
            if not direct_out:
                if helper is not None:
                    done.append(helper.submit(unstage, i, y))
                else:
                    unstage(i, y)
            if helper is None and i + 1 < len(ranges):
                staged = stage(i + 1)
        for f in done:
            f.result()
    return out, carry_in


# --------------------------------------------------------------------------------------------
# Void-and-cluster (blue-noise threshold arrays, see volbin.ordered)
# --------------------------------------------------------------------------------------------
#
# `void_and_cluster_ranks` (volbin.kernels._void_cluster) ranks the cells of a torus; cells
# holding a one carry 2**42 on top of their integer energy, so the tightest cluster is the
# maximum and the largest void the minimum, ties to the lowest index.
