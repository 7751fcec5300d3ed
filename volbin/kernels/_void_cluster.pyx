"""Void-and-cluster ranking (Ulichney 1993) on a torus, in exact integer energies.

See ``volbin.ordered`` for how the filter and the initial pattern are made.
"""

import numpy as np

from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

cdef extern from "_simd.h" nogil:
    int vb_init()
    int vb_set_level(int level)
    void vb_range64(const int64_t* v, Py_ssize_t n, int64_t* lo, int64_t* hi)
    Py_ssize_t vb_argmin64(const int64_t* v, Py_ssize_t n)
    Py_ssize_t vb_argmax64(const int64_t* v, Py_ssize_t n)
    void vb_toggle_row(int64_t* row, const int64_t* g, Py_ssize_t nx, Py_ssize_t px, int64_t sign,
                       int64_t* lo, int64_t* hi)


#: Vector version of the row loops in use: 0 scalar, 1 SSE2, 2 AVX2, 3 AVX-512.
SIMD_LEVEL = vb_init()


def _set_simd_level(int level):
    """Use vector version `level` or the best below it (tests compare every version)."""
    global SIMD_LEVEL
    SIMD_LEVEL = vb_set_level(level)
    return SIMD_LEVEL


cdef int64_t _ONE_FLAG = 1LL << 42  # added to the energy of cells holding a one (energies < 2**41)


cdef struct Field:
    int64_t* energy
    int64_t* row_min
    int64_t* row_max
    Py_ssize_t nrows


cdef struct Filter:
    const int64_t* g
    const uint8_t* g_rows
    Py_ssize_t nz
    Py_ssize_t ny
    Py_ssize_t nx


cdef inline void _refresh_row(Field* f, Py_ssize_t r, Py_ssize_t nx) noexcept nogil:
    """Recompute the summaries (least and largest energy) of row `r` of length `nx`."""
    vb_range64(f.energy + r * nx, nx, f.row_min + r, f.row_max + r)


cdef void _toggle(Field* f, const Filter* flt, Py_ssize_t p, int64_t sign) noexcept nogil:
    """Set (sign 1) or clear (sign -1) the one at `p`: its flag and its filter response.

    ``energy += sign * g`` shifted toroidally to flat index `p`; rows of `g` that are all zero
    (far from the centre) are skipped, so a step touches only the rows near `p`.
    """
    cdef Py_ssize_t nz = flt.nz, ny = flt.ny, nx = flt.nx
    cdef Py_ssize_t pz = p // (ny * nx), py = (p // nx) % ny, px = p % nx
    cdef Py_ssize_t z, y, gz, gy, r
    f.energy[p] += sign * _ONE_FLAG
    for z in range(nz):
        gz = z - pz
        if gz < 0:
            gz += nz
        for y in range(ny):
            gy = y - py
            if gy < 0:
                gy += ny
            if not flt.g_rows[gz * ny + gy]:
                continue
            r = z * ny + y
            vb_toggle_row(f.energy + r * nx, flt.g + (gz * ny + gy) * nx, nx, px, sign,
                          f.row_min + r, f.row_max + r)


cdef Py_ssize_t _first_min(const Field* f, Py_ssize_t nx) noexcept nogil:
    """Lowest flat index of the least energy, through the row summaries."""
    cdef Py_ssize_t r = vb_argmin64(f.row_min, f.nrows)
    return r * nx + vb_argmin64(f.energy + r * nx, nx)


cdef Py_ssize_t _first_max(const Field* f, Py_ssize_t nx) noexcept nogil:
    """Lowest flat index of the largest energy, through the row summaries."""
    cdef Py_ssize_t r = vb_argmax64(f.row_max, f.nrows)
    return r * nx + vb_argmax64(f.energy + r * nx, nx)


def void_and_cluster_ranks(const uint8_t[::1] pattern, int64_t[::1] energy,
                           const int64_t[:, :, ::1] g, Py_ssize_t max_swaps):
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
    Cells holding a one carry ``2**42`` on top of their energy, so the tightest cluster
    (the one of most energy) is the array's maximum and the largest void (the zero of least
    energy) its minimum; ties go to the lowest index.  Per-row minima and maxima are kept up
    to date, so a step costs the rows near the changed cell plus one pass over the rows.
    """
    cdef Py_ssize_t n = pattern.shape[0], nz = g.shape[0], ny = g.shape[1], nx = g.shape[2]
    cdef Py_ssize_t q, r, z, y, x, i, c, v, ones = 0
    cdef Field f, f1
    cdef Filter flt
    cdef uint8_t* g_rows = NULL
    cdef int64_t* buf = NULL
    ranks = np.empty(n, np.int64)
    cdef int64_t[::1] rk = ranks
    if energy.shape[0] != n or nz * ny * nx != n:
        raise ValueError(f"`pattern`, `energy` and `g` must hold the same number of cells; got "
                         f"{n}, {energy.shape[0]} and {nz * ny * nx}.")
    if n == 0:
        return ranks
    with nogil:
        f.nrows = n // nx
        f1.nrows = f.nrows
        g_rows = <uint8_t*>malloc(nz * ny)
        # energy copy, then row minima and maxima of both fields.
        buf = <int64_t*>malloc((n + 4 * f.nrows) * sizeof(int64_t))
        try:
            if g_rows == NULL or buf == NULL:
                with gil:
                    raise MemoryError()
            flt.g = &g[0, 0, 0]
            flt.g_rows = g_rows
            flt.nz = nz
            flt.ny = ny
            flt.nx = nx
            for z in range(nz):
                for y in range(ny):
                    g_rows[z * ny + y] = 0
                    for x in range(nx):
                        if g[z, y, x] != 0:
                            g_rows[z * ny + y] = 1
            f.energy = &energy[0]
            f.row_min = buf + n
            f.row_max = f.row_min + f.nrows
            for q in range(n):
                if pattern[q]:
                    f.energy[q] += _ONE_FLAG
                    ones += 1
            for r in range(f.nrows):
                _refresh_row(&f, r, nx)
            # Relax the initial pattern: move the tightest cluster into the largest void until
            # the two coincide.
            for i in range(max_swaps):
                c = _first_max(&f, nx)
                _toggle(&f, &flt, c, -1)
                v = _first_min(&f, nx)
                _toggle(&f, &flt, v, 1)
                if v == c:
                    break
            # Phase 1: rank the initial ones by removing the tightest cluster each time.
            f1.energy = buf
            f1.row_min = f.row_max + f.nrows
            f1.row_max = f1.row_min + f.nrows
            memcpy(f1.energy, f.energy, n * sizeof(int64_t))
            memcpy(f1.row_min, f.row_min, f.nrows * sizeof(int64_t))
            memcpy(f1.row_max, f.row_max, f.nrows * sizeof(int64_t))
            for r in range(ones - 1, -1, -1):
                c = _first_max(&f1, nx)
                rk[c] = r
                _toggle(&f1, &flt, c, -1)
            # Phases 2 and 3: fill the largest void each time.  Past half-full, the tightest
            # cluster of zeros (Ulichney's phase 3) is the zero of least energy, the same rule.
            for r in range(ones, n):
                v = _first_min(&f, nx)
                rk[v] = r
                _toggle(&f, &flt, v, 1)
        finally:
            free(g_rows)
            free(buf)
    return ranks
