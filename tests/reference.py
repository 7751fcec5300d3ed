"""Plain reference versions of volbin's compiled dithering loops (slow, written to be read).

They follow the definitions in ``volbin/_dither_kernels.py`` and ``volbin/ordered.py``
operation by operation, in float32 numpy scalars, so the compiled loops must agree with them
bit for bit:

* scan rows in order; with ``serpentine`` odd rows run right to left, kernel mirrored;
* ``v = (value + error from earlier rows and slices) + error from this row``;
* the pixel is 1 where ``float(v) > threshold + jitter * (u - 0.5)``, ``e = v - output``;
* at a pixel whose kernel reaches outside, ``s = e * (wsum / insum)`` in float64 over the
  in-bounds taps (``s = e`` when every tap is inside, ``s = 0`` when none is);
* ``float32(w * s)`` goes at once to the one or two next pixels of the row; to later rows and
  slices ``w * float32(s)`` is added once the row is finished, tap after tap.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

F32 = np.float32

_GAMMA = 0x9E3779B97F4A7C15
_MASK = 2**64 - 1


def uniform01(key: int, index: int) -> float:
    """SplitMix64 counter-based uniform in [0, 1), in Python integers."""
    z = (int(key) + (int(index) + 1) * _GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return (z >> 11) * 2.0**-53


def floyd_steinberg(image_u8: np.ndarray, serpentine: bool = False) -> np.ndarray:
    """Floyd-Steinberg of one 8-bit slice (values / 255), written out tap by tap."""
    img = image_u8.astype(F32) / F32(255)
    rows, cols = img.shape
    err = np.zeros((rows, cols), F32)  # error from the row above
    out = np.zeros((rows, cols), np.uint8)
    right, down_left, down, down_right = F32(7 / 16), F32(3 / 16), F32(5 / 16), F32(1 / 16)
    for y in range(rows):
        step = -1 if serpentine and y % 2 else 1
        xs = range(cols) if step == 1 else range(cols - 1, -1, -1)
        ahead = np.zeros(cols, F32)  # error from this row
        sent = np.zeros(cols, F32)
        for x in xs:
            v = (img[y, x] + err[y, x]) + ahead[x]
            out[y, x] = float(v) > 0.5
            e = v - F32(1) if out[y, x] else v
            has_next = 0 <= x + step < cols
            has_below = y + 1 < rows
            has_left = has_below and 0 <= x - step < cols
            has_right = has_below and 0 <= x + step < cols
            if has_next and has_below and has_left and has_right:
                s = float(e)
            else:
                insum = F32(0)
                for w, ok in (
                    (right, has_next),
                    (down_left, has_left),
                    (down, has_below),
                    (down_right, has_right),
                ):
                    if ok:
                        insum += w
                s = float(e) * (1.0 / float(insum)) if insum > 0 else 0.0
            sent[x] = F32(s)
            if has_next:
                ahead[x + step] += F32(float(right) * s)
        if y + 1 < rows:  # tap by tap, in the order (dx = -1, 0, 1) of the unmirrored kernel
            for dx, w in ((-1, down_left), (0, down), (1, down_right)):
                for x in range(cols):
                    if 0 <= x + step * dx < cols:
                        err[y + 1, x + step * dx] += w * sent[x]
    return out


def _taps(kernel):
    """(c1, c2, sorted memory taps, wsum) exactly as `volbin._dither_kernels.split_taps`."""
    dz = getattr(kernel, "dz", (0,) * len(kernel.weights))
    c1 = c2 = F32(0)
    rest = []
    for z, y, x, w in zip(dz, kernel.dy, kernel.dx, kernel.weights, strict=True):
        if z == 0 and y == 0:
            if x == 1:
                c1 = F32(w)
            else:
                c2 = F32(w)
        else:
            rest.append((z, y, x, F32(w)))
    rest.sort(key=lambda t: t[:3])
    wsum = (F32(0) + c1) + c2
    for t in rest:
        wsum += t[3]
    return c1, c2, rest, wsum


def diffuse(
    volume: np.ndarray,
    kernel,
    *,
    serpentine: bool = False,
    threshold: float = 0.5,
    jitter: float = 0.0,
    key: int = 0,
    index_base: int = 0,
    index_strides: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Error diffusion of a (n, rows, cols) volume with any kernel of dz, dy, dx, weights.

    A 2D kernel (no ``dz``) treats each slice on its own, as ``diffuse_2d``; a volumetric
    kernel diffuses through the whole volume, as ``diffuse_3d`` in one piece.
    """
    vol = np.asarray(volume, F32)
    n, rows, cols = vol.shape
    if index_strides is None:
        index_strides = (rows * cols, cols, 1)
    if not hasattr(kernel, "dz"):
        flat = SimpleNamespace(
            dz=(0,) * len(kernel.weights), dy=kernel.dy, dx=kernel.dx, weights=kernel.weights
        )
        out = np.zeros(vol.shape, np.uint8)
        for i in range(n):
            out[i] = diffuse(
                vol[i : i + 1],
                flat,
                serpentine=serpentine,
                threshold=threshold,
                jitter=jitter,
                key=key,
                index_base=index_base + i * index_strides[0],
                index_strides=index_strides,
            )[0]
        return out
    c1, c2, rest, wsum = _taps(kernel)
    err = np.zeros((n, rows, cols), F32)
    out = np.zeros((n, rows, cols), np.uint8)
    for z in range(n):
        for y in range(rows):
            step = -1 if serpentine and y % 2 else 1
            xs = range(cols) if step == 1 else range(cols - 1, -1, -1)
            ahead = np.zeros(cols, F32)
            sent = np.zeros(cols, F32)
            for x in xs:
                value = vol[z, y, x]
                if not np.isfinite(value):
                    value = F32(0)
                v = (value + err[z, y, x]) + ahead[x]
                t = threshold
                if jitter != 0:
                    g = index_base + z * index_strides[0] + y * index_strides[1]
                    g += x * index_strides[2]
                    t = threshold + jitter * (uniform01(key, g) - 0.5)
                out[z, y, x] = float(v) > t
                e = v - F32(1) if out[z, y, x] else v
                ok1 = c1 != 0 and 0 <= x + step < cols
                ok2 = c2 != 0 and 0 <= x + 2 * step < cols
                allin = (ok1 or c1 == 0) and (ok2 or c2 == 0)
                insum = F32(0)
                if ok1:
                    insum += c1
                if ok2:
                    insum += c2
                for dz, dy, dx, w in rest:
                    if z + dz < n and 0 <= y + dy < rows and 0 <= x + step * dx < cols:
                        insum += w
                    else:
                        allin = False
                if allin:
                    s = float(e)
                elif insum > 0:
                    s = float(e) * (float(wsum) / float(insum))
                else:
                    s = 0.0
                sent[x] = F32(s)
                if ok2:
                    ahead[x + 2 * step] += F32(float(c2) * s)
                if ok1:
                    ahead[x + step] += F32(float(c1) * s)
            for dz, dy, dx, w in rest:
                if z + dz < n and 0 <= y + dy < rows:
                    for x in range(cols):
                        if 0 <= x + step * dx < cols:
                            err[z + dz, y + dy, x + step * dx] += w * sent[x]
    return out


def bayer_ranks(n: int, ndim: int = 2) -> np.ndarray:
    """Bayer ranks of side 2**n by the block recursion.

    2D: M(2k) = [[4M, 4M + 2], [4M + 3, 4M + 1]].  3D: M(2k) is 8M + D[i, j, l] in the octant
    (i, j, l), with D the 2x2x2 base matrix of `volbin.dither.ordered`.
    """
    if ndim == 2:
        m = np.zeros((1, 1), np.int64)
        for _ in range(n):
            m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
        return m
    base = np.empty((2, 2, 2), np.int64)
    for z in range(2):
        for y in range(2):
            for x in range(2):
                base[z, y, x] = 4 * (x ^ y) + 2 * (y ^ z) + z
    m = np.zeros((1, 1, 1), np.int64)
    for _ in range(n):
        k = m.shape[0]
        new = np.empty((2 * k,) * 3, np.int64)
        for z in range(2):
            for y in range(2):
                for x in range(2):
                    new[z * k : (z + 1) * k, y * k : (y + 1) * k, x * k : (x + 1) * k] = 8 * m + base[z, y, x]
        m = new
    return m


def void_and_cluster(pattern: np.ndarray, g: np.ndarray, max_swaps: int) -> np.ndarray:
    """Ranks of the cells of a torus by Ulichney's void-and-cluster method, from scratch.

    `pattern` (N,) holds the initial ones, `g` (any shape of N cells) the integer filter
    response of a cell at the origin.  Each step recomputes the whole energy, exactly:
    ``energy = ones @ G`` with ``G[q]`` the filter shifted to cell ``q``.  The tightest
    cluster is the one of most energy, the largest void the zero of least energy; ties go
    to the lowest index (``np.argmax``, ``np.argmin``).
    """
    shape = g.shape
    n = g.size
    circulant = np.stack(
        [np.roll(g, np.unravel_index(q, shape), axis=tuple(range(g.ndim))).ravel() for q in range(n)]
    )
    big = 2**42

    def energy(ones):
        return ones.astype(np.int64) @ circulant + big * ones

    ones = pattern.astype(bool).copy()
    for _ in range(max_swaps):
        c = int(np.argmax(energy(ones)))
        ones[c] = False
        v = int(np.argmin(energy(ones)))
        ones[v] = True
        if v == c:
            break
    ranks = np.empty(n, np.int64)
    first = ones.copy()
    for r in range(int(first.sum()) - 1, -1, -1):
        c = int(np.argmax(energy(first)))
        ranks[c] = r
        first[c] = False
    for r in range(int(ones.sum()), n):
        v = int(np.argmin(energy(ones)))
        ranks[v] = r
        ones[v] = True
    return ranks
