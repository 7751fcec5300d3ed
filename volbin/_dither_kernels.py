"""Compiled core of dithering: error-diffusion kernels as data, and their loops.

Intensities are float32 arrays in [0, 1]; outputs are uint8 arrays of 0 and 1, with
``1 where value + carried error > threshold``.  Everything here works on plain C-contiguous
numpy arrays and knows nothing of dask, scopes or files; drivers call `diffuse_2d` on a
chunk of whole slices (or `diffuse_3d` on a slab, carrying the error from slab to slab) in
worker threads, since the loops release the GIL.

Conventions shared by every loop
--------------------------------
* Scan order: row by row, left to right; with ``serpentine=True`` odd rows (``y % 2 == 1``)
  run right to left with the kernel mirrored (``dx -> -dx``).
* Edges: a share of error that would land outside the image (or volume) is not dropped.  At a
  pixel whose kernel reaches outside, the error is split over the in-bounds targets only, with
  their weights rescaled to the kernel's total weight (``s = e * wsum / insum``, in float64).
  The only error ever lost is that of the last pixel of an image (of a volume, for
  `diffuse_3d`), which has no unprocessed neighbour, so the output mean follows the input
  mean to within ``0.5 / n_pixels`` for every kernel whose weights sum to 1.  (Renormalising
  rather than dropping has one visible cost: when both sides of an image are odd, a
  mid-grey checkerboard holds half a pixel less than the input, and that surplus flips a few
  pixels at the end of the last row.)
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

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .kernels._diffusion import diffuse_slices, diffuse_volume
from .kernels._void_cluster import void_and_cluster_ranks

__all__ = [
    "KERNELS",
    "KERNELS_3D",
    "NEXT_SLICE_SHARE",
    "NEXT_SLICE_SPREAD",
    "DiffusionKernel",
    "DiffusionKernel3D",
    "diffuse_2d",
    "diffuse_3d",
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

#: Share of the error that 2D kernels extended to volumes push into the next slice.  With
#: Floyd-Steinberg the error then goes about a third each way: 7/16 * 5/8 = 0.27 along the
#: row, 9/16 * 5/8 = 0.35 to the next row and 3/8 to the next slice.  Measured on flat
#: 64^3 volumes at levels 0.05 to 0.8, 3/8 gave the least noise power below 0.25 cycles/voxel
#: among the shares 1/4, 5/16, 1/3, 3/8, 2/5 and 1/2 (about 9x less than slice-by-slice 2D
#: diffusion), and it keeps every weight dyadic, hence exact in float32.
NEXT_SLICE_SHARE = 0.375

#: How the next-slice share is spread: a 3x3 binomial (1 2 1) x (1 2 1) / 16 centred under
#: the current voxel.  The next slice is wholly unprocessed, so the spread can be symmetric;
#: it gave a third of the low-frequency noise of sending the share to the voxel below alone.
NEXT_SLICE_SPREAD = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
NEXT_SLICE_SPREAD.flags.writeable = False


def extend_to_3d(kernel, share: float = NEXT_SLICE_SHARE) -> DiffusionKernel3D:
    """Turn a 2D kernel into a volumetric one: ``1 - share`` in-slice, ``share`` to the next.

    The in-slice weights are the 2D weights times ``1 - share``; the next slice (``dz = 1``)
    receives ``share`` of the error spread by `NEXT_SLICE_SPREAD` around ``(dy, dx) = (0, 0)``.
    The total weight is unchanged (Atkinson stays at 6/8).

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


#: Named volumetric kernels.  ``"floyd-steinberg-3d"`` is derived here, not taken from the
#: literature: `extend_to_3d` of Floyd-Steinberg with `NEXT_SLICE_SHARE` = 3/8, i.e. weights
#: (/128) 35 right; 15 25 5 on the next row; and 3 6 3 / 6 12 6 / 3 6 3 on the next slice,
#: centred under the current voxel.
KERNELS_3D: Mapping[str, DiffusionKernel3D] = {
    "floyd-steinberg-3d": extend_to_3d("floyd-steinberg", NEXT_SLICE_SHARE),
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
    kernel="floyd-steinberg-3d",
    *,
    carry_in: np.ndarray | None = None,
    carry_out: np.ndarray | None = None,
    z0: int = 0,
    n_slices: int | None = None,
    serpentine: bool = False,
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
    serpentine, threshold, jitter, key, index_base, index_strides
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
# Void-and-cluster (blue-noise threshold arrays, see volbin.ordered)
# --------------------------------------------------------------------------------------------
#
# `void_and_cluster_ranks` (volbin.kernels._void_cluster) ranks the cells of a torus; cells
# holding a one carry 2**42 on top of their integer energy, so the tightest cluster is the
# maximum and the largest void the minimum, ties to the lowest index.
