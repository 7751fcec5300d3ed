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

Compilation results are cached on disk (``cache=True``); on clusters point
``NUMBA_CACHE_DIR`` at a writable folder.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from numba import njit

from ._kernels import uniform01

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
# Each row is processed in two steps.  A sequential pass quantises its pixels, carrying the
# error for the next one or two pixels of the row in registers (`r1`, `r2`) and writing the
# error each pixel diffuses (`srow`, already rescaled at edges) to a row buffer.  A second
# pass then adds ``w[k] * srow`` to each tap's target row, tap after tap: plain vectorisable
# loops instead of scattered updates inside the dependency chain.  The order of additions is
# part of the definition (``tests/reference.py`` follows it).


@njit(cache=True, nogil=True, inline="always")
def _floor32(t):
    """The largest float32 <= `t`: for float32 v, ``v > _floor32(t)`` iff ``v > t`` exactly."""
    f = np.float32(t)
    if np.float64(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return f


@njit(cache=True, nogil=True, inline="always")
def _above(v, t32, threshold, jitter, key, index):
    """``v > threshold (+ jitter noise)``; without jitter a float32 compare against `t32`."""
    if jitter == 0.0:
        return v > t32
    return np.float64(v) > threshold + jitter * (uniform01(key, np.uint64(index)) - 0.5)


@njit(cache=True, nogil=True)
def _edge_run(src, dst, p0, err, base, srow, tap_ok, x0, step, count, cols, c1, c2, dx, w,
              wsum, r1, r2, t32, threshold, jitter, key, rowidx, xstride):  # fmt: skip
    """Pixels of one row whose kernel reaches outside: rescale weights over in-bounds taps.

    `tap_ok[k]` says whether tap k's row and slice exist; columns are checked here.
    Returns the current-row error registers ``(r1, r2)`` for the next pixel.
    """
    zero = np.float32(0)
    one = np.float32(1)
    for i in range(count):
        x = x0 + step * i
        a = src[p0 + x]
        if not np.isfinite(a):
            a = zero
        v = (a + err[base + x]) + r1
        b = _above(v, t32, threshold, jitter, key, rowidx + x * xstride)
        dst[p0 + x] = b
        e = v - one if b else v
        in1 = c1 != zero and 0 <= x + step < cols
        in2 = c2 != zero and 0 <= x + 2 * step < cols
        insum = zero
        allin = True
        if c1 != zero:
            if in1:
                insum += c1
            else:
                allin = False
        if c2 != zero:
            if in2:
                insum += c2
            else:
                allin = False
        for k in range(len(w)):
            if tap_ok[k] and 0 <= x + step * dx[k] < cols:
                insum += w[k]
            else:
                allin = False
        # The rescaled share is formed in float64 and each product rounded once to float32:
        # with a single tap left (the last row) that tap then gets exactly `e`, so no rounding
        # drift builds up along the row.  With every tap inside this equals the inner loop.
        if allin:
            s = np.float64(e)
        elif insum > zero:
            s = np.float64(e) * (np.float64(wsum) / np.float64(insum))
        else:
            s = 0.0  # no unprocessed neighbour: the last pixel of the image
        srow[x] = np.float32(s)
        r1n = r2 + np.float32(c1 * s) if in1 else r2
        r2 = np.float32(c2 * s) if in2 else zero
        r1 = r1n
    return r1, r2


@njit(cache=True, nogil=True)
def _inner_run(src, dst, cur, srow, x0, step, count, c1, c2, r1, r2, t32, threshold, jitter,
               key, rowidx, xstride):  # fmt: skip
    """Pixels of one row (row views) whose whole kernel lies in bounds.

    Unsigned indices spare numba's negative-index handling.  The loop is one dependency chain
    through ``r1``, kept short: an add, a float32 compare, a conditional subtract, a multiply
    and an add.  LLVM compiles the conditional as a branch; a branch-free table lookup
    measured slower here (3D diffusion 0.089 s vs 0.072 s), though not for `_inner_run2`.
    """
    zero = np.float32(0)
    one = np.float32(1)
    for i in range(count):
        x = x0 + step * i
        u = np.uint64(x)
        a = src[u]
        if not np.isfinite(a):
            a = zero
        v = (a + cur[u]) + r1
        b = _above(v, t32, threshold, jitter, key, rowidx + x * xstride)
        dst[u] = b
        e = v - one if b else v
        srow[u] = e
        r1 = r2 + c1 * e
        r2 = c2 * e
    return r1, r2


@njit(cache=True, nogil=True)
def _inner_run2(srca, srcb, dsta, dstb, cura, curb, srowa, srowb, x0, step, count, c1, c2,
                r1a, r2a, r1b, r2b, t32, threshold, jitter, key, rowa, rowb, xstride):  # fmt: skip
    """`_inner_run` on the same row of two independent slices at once.

    Two interleaved dependency chains keep the core busy while each waits on its own.  Here
    the output value is subtracted through a table (no branch): with two chains in flight a
    misprediction costs more than the load (JJN 6.4 vs 8.9 ns per pixel, measured).
    """
    zero = np.float32(0)
    lut = np.zeros(2, np.float32)
    lut[1] = 1
    for i in range(count):
        x = x0 + step * i
        u = np.uint64(x)
        aa = srca[u]
        ab = srcb[u]
        if not np.isfinite(aa):
            aa = zero
        if not np.isfinite(ab):
            ab = zero
        va = (aa + cura[u]) + r1a
        vb = (ab + curb[u]) + r1b
        ba = _above(va, t32, threshold, jitter, key, rowa + x * xstride)
        bb = _above(vb, t32, threshold, jitter, key, rowb + x * xstride)
        dsta[u] = ba
        dstb[u] = bb
        ea = va - lut[np.uint64(ba)]
        eb = vb - lut[np.uint64(bb)]
        srowa[u] = ea
        srowb[u] = eb
        r1a = r2a + c1 * ea
        r2a = c2 * ea
        r1b = r2b + c1 * eb
        r2b = c2 * eb
    return r1a, r2a, r1b, r2b


@njit(cache=True, nogil=True)
def _spread(err, offs, tap_ok, srow, step, dx, w, cols):
    """Add ``w[k] * srow`` to each existing target row ``err[offs[k]:]``, shifted by dx[k]."""
    for k in range(len(w)):
        if not tap_ok[k]:
            continue
        d = step * dx[k]
        lo = max(0, -d)
        hi = min(cols, cols - d)
        wk = w[k]
        # Views with 0-based indices: numba then skips negative-index handling and the loop
        # vectorises (about 15x faster than indexing `err` at `offs[k] + d + x`).
        tgt = err[offs[k] + d + lo : offs[k] + d + hi]
        sv = srow[lo:hi]
        for i in range(hi - lo):
            tgt[i] += wk * sv[i]


@njit(cache=True, nogil=True)
def _segments(cols, step, lo, hi):
    """(start, count) of the three runs of a row in scan order: edge, inner, edge."""
    if step > 0:
        return 0, lo, lo, hi - lo, hi, cols - hi
    return cols - 1, cols - hi, hi - 1, hi - lo, lo - 1, lo


@njit(cache=True, nogil=True)
def _inner_range(cols, step, dxmin, dxmax, row_inside):
    """[lo, hi): the columns of a row where every tap's column is inside."""
    if not row_inside:
        return cols, cols
    if step > 0:
        lo = min(-dxmin, cols)
        hi = max(cols - dxmax, lo)
    else:
        lo = min(dxmax, cols)
        hi = max(cols + dxmin, lo)
    return lo, hi


@njit(cache=True, nogil=True)
def _kernel_extent(c1, c2, dy, dx, w):
    """Total weight and reach of the taps: (wsum, dymin, dymax, dxmin, dxmax)."""
    wsum = np.float32(0) + c1 + c2
    dymin = 0
    dymax = 0
    dxmin = 0
    dxmax = 2 if c2 != 0 else (1 if c1 != 0 else 0)
    for k in range(len(w)):
        wsum += w[k]
        dymin = min(dymin, dy[k])
        dymax = max(dymax, dy[k])
        dxmin = min(dxmin, dx[k])
        dxmax = max(dxmax, dx[k])
    return wsum, dymin, dymax, dxmin, dxmax


@njit(cache=True, nogil=True)
def diffuse_slices(img, out, c1, c2, dy, dx, w, serpentine, threshold, jitter, key,
                   index_base, index_strides):  # fmt: skip
    """Error-diffuse each 2D slice ``img[i]`` of a (n, rows, cols) float32 stack into `out`.

    Slices are independent; pairs of them are processed in lockstep (identical results,
    faster).  The error lives in a ring of ``max(dy) + 1`` rows.  `c1`, `c2`, `dy`, `dx`,
    `w` come from `split_taps`; see the module notes for the rest.
    """
    n, rows, cols = img.shape
    plane = rows * cols
    src = img.reshape(n * plane)
    dst = out.reshape(n * plane)
    ntap = len(w)
    wsum, _, dymax, dxmin, dxmax = _kernel_extent(c1, c2, dy, dx, w)
    zero = np.float32(0)
    t32 = _floor32(threshold)
    nring = dymax + 1
    ring = np.zeros((2, nring * cols), _ERR)
    erra = ring[0]
    errb = ring[1]
    srows = np.zeros((2, cols), _ERR)
    srowa = srows[0]
    srowb = srows[1]
    offs = np.empty(ntap, np.int64)
    tap_ok = np.empty(ntap, np.bool_)
    s0, s1, s2 = index_strides
    s = 0
    while s < n:
        two = s + 1 < n
        ring[:] = 0
        for y in range(rows):
            step = -1 if serpentine and y % 2 == 1 else 1
            base = (y % nring) * cols
            for k in range(ntap):
                offs[k] = ((y + dy[k]) % nring) * cols
                tap_ok[k] = y + dy[k] < rows
            lo, hi = _inner_range(cols, step, dxmin, dxmax, y + dymax < rows)
            a0, an, b0, bn, c0, cn = _segments(cols, step, lo, hi)
            pa = s * plane + y * cols
            pb = pa + plane
            rowa = index_base + s * s0 + y * s1
            rowb = rowa + s0
            r1a, r2a = _edge_run(src, dst, pa, erra, base, srowa, tap_ok, a0, step, an, cols,
                                 c1, c2, dx, w, wsum, zero, zero, t32, threshold, jitter, key,
                                 rowa, s2)  # fmt: skip
            if two:
                r1b, r2b = _edge_run(src, dst, pb, errb, base, srowb, tap_ok, a0, step, an,
                                     cols, c1, c2, dx, w, wsum, zero, zero, t32, threshold,
                                     jitter, key, rowb, s2)  # fmt: skip
                r1a, r2a, r1b, r2b = _inner_run2(
                    src[pa : pa + cols], src[pb : pb + cols], dst[pa : pa + cols],
                    dst[pb : pb + cols], erra[base : base + cols], errb[base : base + cols],
                    srowa, srowb, b0, step, bn, c1, c2, r1a, r2a, r1b, r2b, t32, threshold,
                    jitter, key, rowa, rowb, s2)  # fmt: skip
                _edge_run(src, dst, pb, errb, base, srowb, tap_ok, c0, step, cn, cols, c1,
                          c2, dx, w, wsum, r1b, r2b, t32, threshold, jitter, key, rowb,
                          s2)  # fmt: skip
                _spread(errb, offs, tap_ok, srowb, step, dx, w, cols)
                errb[base : base + cols] = 0
            else:
                r1a, r2a = _inner_run(src[pa : pa + cols], dst[pa : pa + cols],
                                      erra[base : base + cols], srowa, b0, step, bn, c1, c2,
                                      r1a, r2a, t32, threshold, jitter, key, rowa, s2)  # fmt: skip
            _edge_run(src, dst, pa, erra, base, srowa, tap_ok, c0, step, cn, cols, c1, c2, dx,
                      w, wsum, r1a, r2a, t32, threshold, jitter, key, rowa, s2)  # fmt: skip
            _spread(erra, offs, tap_ok, srowa, step, dx, w, cols)
            erra[base : base + cols] = 0
        s += 2


@njit(cache=True, nogil=True)
def diffuse_volume(vol, out, c1, c2, dz, dy, dx, w, serpentine, threshold, jitter, key,
                   index_base, index_strides, z0, n_slices, carry_in, carry_out):  # fmt: skip
    """Volumetric error diffusion of the slab ``vol`` (slices z0 .. z0 + n - 1 of n_slices).

    `carry_in` (max(dz), rows, cols) holds the error already sent into this slab's first
    slices; `carry_out` receives the error sent past its end.  The error lives in a ring of
    ``max(dz) + 1`` slices, so memory does not grow with the slab.
    """
    n, rows, cols = vol.shape
    plane = rows * cols
    src = vol.reshape(n * plane)
    dst = out.reshape(n * plane)
    ntap = len(w)
    wsum, dymin, dymax, dxmin, dxmax = _kernel_extent(c1, c2, dy, dx, w)
    dzmax = dz.max()
    zero = np.float32(0)
    t32 = _floor32(threshold)
    nring = dzmax + 1
    ring = np.zeros(nring * plane, _ERR)
    for j in range(dzmax):
        for y in range(rows):
            for x in range(cols):
                ring[j * plane + y * cols + x] = carry_in[j, y, x]
    srow = np.zeros(cols, _ERR)
    offs = np.empty(ntap, np.int64)
    tap_ok = np.empty(ntap, np.bool_)
    s0, s1, s2 = index_strides
    for z in range(n):
        gz = z0 + z
        pz = (z % nring) * plane
        for y in range(rows):
            step = -1 if serpentine and y % 2 == 1 else 1
            base = pz + y * cols
            for k in range(ntap):
                ty = y + dy[k]
                offs[k] = ((z + dz[k]) % nring) * plane + ty * cols
                tap_ok[k] = 0 <= ty < rows and gz + dz[k] < n_slices
            inside = y + dymin >= 0 and y + dymax < rows and gz + dzmax < n_slices
            lo, hi = _inner_range(cols, step, dxmin, dxmax, inside)
            a0, an, b0, bn, c0, cn = _segments(cols, step, lo, hi)
            p0 = z * plane + y * cols
            row = index_base + z * s0 + y * s1
            r1, r2 = _edge_run(src, dst, p0, ring, base, srow, tap_ok, a0, step, an, cols, c1,
                               c2, dx, w, wsum, zero, zero, t32, threshold, jitter, key, row,
                               s2)  # fmt: skip
            r1, r2 = _inner_run(src[p0 : p0 + cols], dst[p0 : p0 + cols],
                                ring[base : base + cols], srow, b0, step, bn, c1, c2, r1, r2,
                                t32, threshold, jitter, key, row, s2)  # fmt: skip
            _edge_run(src, dst, p0, ring, base, srow, tap_ok, c0, step, cn, cols, c1, c2, dx, w,
                      wsum, r1, r2, t32, threshold, jitter, key, row, s2)  # fmt: skip
            _spread(ring, offs, tap_ok, srow, step, dx, w, cols)
        ring[pz : pz + plane] = 0
    for j in range(dzmax):
        q = ((n + j) % nring) * plane
        for y in range(rows):
            for x in range(cols):
                carry_out[j, y, x] = ring[q + y * cols + x]


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


_ONE_FLAG = np.int64(2**42)  # added to the energy of cells holding a one (energies < 2**41)


@njit(cache=True, nogil=True)
def _refresh_row(energy, row_min, row_max, r, nx):
    """Recompute the summaries (least and largest energy) of row `r` of length `nx`."""
    row = energy[r * nx : (r + 1) * nx]
    lo = row[0]
    hi = row[0]
    for i in range(nx):
        lo = min(lo, row[i])
        hi = max(hi, row[i])
    row_min[r] = lo
    row_max[r] = hi


@njit(cache=True, nogil=True)
def _add_response(energy, row_min, row_max, g, g_rows, p, sign):
    """``energy += sign * g`` shifted toroidally to flat index `p`; row summaries follow.

    Rows of `g` that are all zero (`g_rows` False: far from the centre) are skipped, so a
    step touches only the rows near `p`.
    """
    nz, ny, nx = g.shape
    pz = p // (ny * nx)
    py = (p // nx) % ny
    px = p % nx
    for z in range(nz):
        gz = (z - pz) % nz
        for y in range(ny):
            gy = (y - py) % ny
            if not g_rows[gz, gy]:
                continue
            r = z * ny + y
            q = r * nx
            tail = energy[q + px : q + nx]
            head = energy[q : q + px]
            g_tail = g[gz, gy, : nx - px]
            g_head = g[gz, gy, nx - px :]
            if sign > 0:
                for i in range(nx - px):
                    tail[i] += g_tail[i]
                for i in range(px):
                    head[i] += g_head[i]
            else:
                for i in range(nx - px):
                    tail[i] -= g_tail[i]
                for i in range(px):
                    head[i] -= g_head[i]
            _refresh_row(energy, row_min, row_max, r, nx)


@njit(cache=True, nogil=True)
def _toggle(energy, row_min, row_max, g, g_rows, p, sign):
    """Set (sign 1) or clear (sign -1) the one at `p`: its flag and its filter response."""
    energy[p] += sign * _ONE_FLAG
    _add_response(energy, row_min, row_max, g, g_rows, p, sign)


@njit(cache=True, nogil=True)
def _first_min(energy, row_min, nx):
    """Lowest flat index of the least energy, through the row summaries."""
    r = 0
    for i in range(row_min.size):
        if row_min[i] < row_min[r]:
            r = i
    m = row_min[r]
    for i in range(r * nx, (r + 1) * nx):
        if energy[i] == m:
            return i
    return -1


@njit(cache=True, nogil=True)
def _first_max(energy, row_max, nx):
    """Lowest flat index of the largest energy, through the row summaries."""
    r = 0
    for i in range(row_max.size):
        if row_max[i] > row_max[r]:
            r = i
    m = row_max[r]
    for i in range(r * nx, (r + 1) * nx):
        if energy[i] == m:
            return i
    return -1


@njit(cache=True, nogil=True)
def void_and_cluster_ranks(pattern, energy, g, max_swaps):
    """Ranks 0..N-1 of every cell by Ulichney's void-and-cluster method.

    Parameters
    ----------
    pattern : (N,) uint8
        Initial binary pattern (a minority of ones), flattened.
    energy : (N,) int64
        Toroidal filtering of `pattern` by `g`, flattened; modified.
    g : (nz, ny, nx) int64
        Toroidal filter response of one cell at (0, 0, 0), in exact integer units (total
        below 2**41), so that incremental updates are exact.
    max_swaps : int
        Safety bound on the swaps of the initial relaxation.

    Returns
    -------
    ranks : (N,) int64

    Notes
    -----
    Cells holding a one carry `_ONE_FLAG` on top of their energy, so the tightest cluster
    (the one of most energy) is the array's maximum and the largest void (the zero of least
    energy) its minimum; ties go to the lowest index.  Per-row minima and maxima are kept up
    to date, so a step costs the rows near the changed cell plus one pass over the rows.
    """
    n = pattern.size
    ranks = np.empty(n, np.int64)
    nz, ny, nx = g.shape
    g_rows = np.zeros((nz, ny), np.bool_)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if g[z, y, x] != 0:
                    g_rows[z, y] = True
    ones = 0
    for q in range(n):
        if pattern[q]:
            energy[q] += _ONE_FLAG
            ones += 1
    nrows = n // nx
    row_min = np.empty(nrows, np.int64)
    row_max = np.empty(nrows, np.int64)
    for r in range(nrows):
        _refresh_row(energy, row_min, row_max, r, nx)
    # Relax the initial pattern: move the tightest cluster into the largest void until the two
    # coincide.
    for _ in range(max_swaps):
        c = _first_max(energy, row_max, nx)
        _toggle(energy, row_min, row_max, g, g_rows, c, -1)
        v = _first_min(energy, row_min, nx)
        _toggle(energy, row_min, row_max, g, g_rows, v, 1)
        if v == c:
            break
    # Phase 1: rank the initial ones by removing the tightest cluster each time.
    e1 = energy.copy()
    min1 = row_min.copy()
    max1 = row_max.copy()
    for r in range(ones - 1, -1, -1):
        c = _first_max(e1, max1, nx)
        ranks[c] = r
        _toggle(e1, min1, max1, g, g_rows, c, -1)
    # Phases 2 and 3: fill the largest void each time.  Past half-full, the tightest cluster
    # of zeros (Ulichney's phase 3) is the zero of least energy, the same rule.
    for r in range(ones, n):
        v = _first_min(energy, row_min, nx)
        ranks[v] = r
        _toggle(energy, row_min, row_max, g, g_rows, v, 1)
    return ranks
