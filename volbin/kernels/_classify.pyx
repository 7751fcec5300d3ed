"""k-means on voxel vectors: seeding draws, Lloyd sums, nearest centres (see
``volbin._classify_kernels`` for the contract).  Blocks are 4D double arrays ``(n0, n1, n2,
C)`` (strided views are fine) and masks uint8 ``(n0, n1, n2)`` (broadcast views are fine).
"""

from libc.math cimport INFINITY, log1p
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

from ._splitmix cimport uniform01

#: Fixed-point steps per unit of the normalised values summed by `lloyd_sums`.
FIXED_SCALE = 2**32


cdef inline bint _valid(const double[:, :, :, :] x, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t i2, Py_ssize_t nc) noexcept nogil:
    cdef Py_ssize_t c
    cdef double v
    for c in range(nc):
        v = x[i0, i1, i2, c]
        if not (v - v == 0.0):
            return False
    return True


cdef inline Py_ssize_t _nearest(
    const double[:, :, :, :] x, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t i2, Py_ssize_t g,
    const double[:, :] lo, const double[:, :] inv, const double[:, :, :] centres, Py_ssize_t nk,
    double* y, Py_ssize_t nc, double* dist,
) noexcept nogil:
    cdef Py_ssize_t c, k, best = 0
    cdef double d, t, best_d = INFINITY
    for c in range(nc):
        y[c] = (x[i0, i1, i2, c] - lo[g, c]) * inv[g, c]
    for k in range(nk):
        d = 0.0
        for c in range(nc):
            t = y[c] - centres[g, k, c]
            d += t * t
        if d < best_d:
            best_d = d
            best = k
    dist[0] = best_d
    return best


def seeding_draw(
    const double[:, :, :, :] x, const uint8_t[:, :, :] mask, const int64_t[:] gstrides,
    const double[:, :] lo, const double[:, :] inv, const double[:, :, :] centres, Py_ssize_t nk,
    uint64_t key, const int64_t[:] shape3, const int64_t[:] offset3,
    double[:] best_key, int64_t[:] best_index, double[:, :] best_y,
):
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], nc = x.shape[3]
    cdef Py_ssize_t i0, i1, i2, c, g
    cdef int64_t s1 = shape3[1], s2 = shape3[2], index
    cdef double w, u, score
    cdef double* y = <double*>malloc((nc + 1) * sizeof(double))
    if y == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i0 in range(n0):
                for i1 in range(n1):
                    for i2 in range(n2):
                        if not mask[i0, i1, i2] or not _valid(x, i0, i1, i2, nc):
                            continue
                        g = i0 * gstrides[0] + i1 * gstrides[1] + i2 * gstrides[2]
                        if nk == 0:
                            for c in range(nc):
                                y[c] = (x[i0, i1, i2, c] - lo[g, c]) * inv[g, c]
                            w = 1.0
                        else:
                            _nearest(x, i0, i1, i2, g, lo, inv, centres, nk, y, nc, &w)
                        if not w > 0.0:
                            continue
                        index = ((offset3[0] + i0) * s1 + offset3[1] + i1) * s2 + offset3[2] + i2
                        u = uniform01(key, <uint64_t>index)
                        score = -log1p(-u) / w
                        if score < best_key[g] or (score == best_key[g] and index < best_index[g]):
                            best_key[g] = score
                            best_index[g] = index
                            for c in range(nc):
                                best_y[g, c] = y[c]
    finally:
        free(y)


def lloyd_sums(
    const double[:, :, :, :] x, const uint8_t[:, :, :] mask, const int64_t[:] gstrides,
    const double[:, :] lo, const double[:, :] inv, const double[:, :, :] centres,
    int64_t[:, :] counts, int64_t[:, :, :] sums,
):
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], nc = x.shape[3]
    cdef Py_ssize_t nk = centres.shape[1]
    cdef Py_ssize_t i0, i1, i2, c, g, k
    cdef double scale = <double>FIXED_SCALE, d
    cdef double* y = <double*>malloc((nc + 1) * sizeof(double))
    if y == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i0 in range(n0):
                for i1 in range(n1):
                    for i2 in range(n2):
                        if not mask[i0, i1, i2] or not _valid(x, i0, i1, i2, nc):
                            continue
                        g = i0 * gstrides[0] + i1 * gstrides[1] + i2 * gstrides[2]
                        k = _nearest(x, i0, i1, i2, g, lo, inv, centres, nk, y, nc, &d)
                        counts[g, k] += 1
                        for c in range(nc):
                            sums[g, k, c] += <int64_t>(y[c] * scale + 0.5)
    finally:
        free(y)


def nearest_labels(
    const double[:, :, :, :] x, const uint8_t[:, :, :] mask, const int64_t[:] gstrides,
    const double[:, :] lo, const double[:, :] inv, const double[:, :, :] centres, Py_ssize_t offset,
    uint8_t[:, :, :] out,
):
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], nc = x.shape[3]
    cdef Py_ssize_t nk = centres.shape[1]
    cdef Py_ssize_t i0, i1, i2, g, k
    cdef double d
    cdef double* y = <double*>malloc((nc + 1) * sizeof(double))
    if y == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i0 in range(n0):
                for i1 in range(n1):
                    for i2 in range(n2):
                        if not mask[i0, i1, i2] or not _valid(x, i0, i1, i2, nc):
                            out[i0, i1, i2] = 0
                            continue
                        g = i0 * gstrides[0] + i1 * gstrides[1] + i2 * gstrides[2]
                        k = _nearest(x, i0, i1, i2, g, lo, inv, centres, nk, y, nc, &d)
                        out[i0, i1, i2] = <uint8_t>(k + offset)
    finally:
        free(y)
