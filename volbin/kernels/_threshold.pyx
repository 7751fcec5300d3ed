"""Per-group threshold masks of 4D blocks, written in place and counted in the same pass.

Blocks are 4D C-contiguous arrays of any native integer or float type (bool as uint8), as in
``_histogram``.  A voxel's threshold group is ``sum(index[a] * tstrides[a])`` and its count
group ``sum(index[a] * cstrides[a])``.  Each value is converted to double and compared with
the group's double threshold, which is what numpy's ``block > threshold`` computes for these
types (a float32 block against a float64 threshold is compared in float64, and a threshold
numpy would first round to float32 is one a float32 value compares with identically).
"""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

cdef extern from "_above.h" nogil:
    int vb_init()
    int vb_set_level(int level)
    int64_t vb_above_f64(const double* x, Py_ssize_t n, double t, double u, int flags, uint8_t* o)
    int64_t vb_above_f32(const float* x, Py_ssize_t n, double t, double u, int flags, uint8_t* o)
    int64_t vb_above_i32(const int32_t* x, Py_ssize_t n, double t, double u, int flags, uint8_t* o)
    int64_t vb_above_i16(const int16_t* x, Py_ssize_t n, double t, double u, int flags, uint8_t* o)
    int64_t vb_above_u16(const uint16_t* x, Py_ssize_t n, double t, double u, int flags, uint8_t* o)
    int64_t vb_above_u8(const uint8_t* x, Py_ssize_t n, double t, double u, int flags, uint8_t* o)
    int64_t vb_above_lanes_f64(const double* x, Py_ssize_t n, const double* t, const double* u, int flags, uint8_t* o)
    int64_t vb_above_lanes_f32(const float* x, Py_ssize_t n, const double* t, const double* u, int flags, uint8_t* o)
    int64_t vb_above_lanes_i32(const int32_t* x, Py_ssize_t n, const double* t, const double* u, int flags, uint8_t* o)
    int64_t vb_above_lanes_i16(const int16_t* x, Py_ssize_t n, const double* t, const double* u, int flags, uint8_t* o)
    int64_t vb_above_lanes_u16(const uint16_t* x, Py_ssize_t n, const double* t, const double* u, int flags, uint8_t* o)
    int64_t vb_above_lanes_u8(const uint8_t* x, Py_ssize_t n, const double* t, const double* u, int flags, uint8_t* o)
    void vb_prefetch_ahead(const void* p, Py_ssize_t nbytes, Py_ssize_t ahead, const void* end)
    enum:
        VB_ABOVE_INCLUSIVE
        VB_ABOVE_UPPER
        VB_ABOVE_INVERT
        VB_ABOVE_FINITE

from volbin.kernels._blocks cimport check_groups, real_t

#: Vector version of the row loop in use: 0 scalar, 1 SSE2, 2 AVX2 (3, AVX-512, runs AVX2 here).
SIMD_LEVEL = vb_init()

# Rows ahead that the row loops ask the cache for (0: none; `_set_prefetch_rows`).
cdef Py_ssize_t PF_ROWS = 2


def _set_prefetch_rows(Py_ssize_t rows):
    global PF_ROWS
    PF_ROWS = rows


def _set_simd_level(int level):
    """Use vector version `level` (clipped to what the machine has); returns the level in use.
    For tests, which check every version against the scalar loop."""
    return vb_set_level(level)


#: Bits of `flags` (defined in _above.h): ``x >= t`` instead of ``x > t``; also ``x <= upper``;
#: the complement; non-finite values are never foreground (applied after the complement).
INCLUSIVE = VB_ABOVE_INCLUSIVE
UPPER = VB_ABOVE_UPPER
INVERT = VB_ABOVE_INVERT
FINITE = VB_ABOVE_FINITE


cdef inline uint8_t _fg(double fv, double tv, double uv, int flags) noexcept nogil:
    cdef uint8_t f
    if flags & VB_ABOVE_INCLUSIVE:
        f = fv >= tv
    else:
        f = fv > tv
    if flags & VB_ABOVE_UPPER:
        f = f & (fv <= uv)
    if flags & VB_ABOVE_INVERT:
        f = f ^ 1
    if flags & VB_ABOVE_FINITE:
        f = f & ((fv - fv) == 0.0)
    return f


cdef inline int64_t _above_lanes(const real_t* row, Py_ssize_t n, const double* t, const double* u,
                                 int flags, uint8_t* o) noexcept nogil:
    """vb_above_lanes_* of the row's type (the types of the vector row loops only)."""
    if real_t is double:
        return vb_above_lanes_f64(row, n, t, u, flags, o)
    elif real_t is float:
        return vb_above_lanes_f32(row, n, t, u, flags, o)
    elif real_t is int32_t:
        return vb_above_lanes_i32(row, n, t, u, flags, o)
    elif real_t is int16_t:
        return vb_above_lanes_i16(row, n, t, u, flags, o)
    elif real_t is uint16_t:
        return vb_above_lanes_u16(row, n, t, u, flags, o)
    elif real_t is uint8_t:
        return vb_above_lanes_u8(row, n, t, u, flags, o)
    else:
        return 0  # not reached


def group_above(const real_t[:, :, :, ::1] x, const int64_t[::1] tstrides,
                const double[::1] thresholds, const double[::1] upper, int flags,
                uint8_t[:, :, :, ::1] out, const int64_t[::1] cstrides, int64_t[::1] counts):
    """Write the foreground of 4D `x` into `out` (bool as uint8, `x`'s shape) and add the
    number of foreground voxels of each count group to `counts`.

    Foreground is ``x > t`` (``x >= t`` with `INCLUSIVE`), and ``x <= u`` with `UPPER`, for
    the voxel's group threshold ``t`` and upper bound ``u`` (`upper` is read only with
    `UPPER`); `INVERT` takes the complement, and `FINITE` then clears non-finite voxels.
    """
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], n3 = x.shape[3]
    cdef Py_ssize_t i0, i1, i2, i3, tb, cb
    cdef int64_t t0s, t1s, t2s, t3s, c0s, c1s, c2s, c3s, s
    cdef const real_t* row
    cdef uint8_t* orow
    cdef uint8_t f
    cdef double tv, uv = 0.0, fv
    cdef int64_t* c = &counts[0]
    cdef const void* end
    cdef const double* tp = &thresholds[0]
    cdef const double* up = NULL
    cdef double* trow = NULL
    cdef double* urow = NULL
    cdef Py_ssize_t tlast = -1
    cdef bint plane
    if out.shape[0] != n0 or out.shape[1] != n1 or out.shape[2] != n2 or out.shape[3] != n3:
        raise ValueError("`out` must have the shape of `x`.")
    check_groups(n0, n1, n2, n3, tstrides, thresholds.shape[0], "tstrides")
    check_groups(n0, n1, n2, n3, cstrides, counts.shape[0], "cstrides")
    if flags & VB_ABOVE_UPPER:
        check_groups(n0, n1, n2, n3, tstrides, upper.shape[0], "tstrides")
        up = &upper[0]
    t0s, t1s, t2s, t3s = tstrides[0], tstrides[1], tstrides[2], tstrides[3]
    c0s, c1s, c2s, c3s = cstrides[0], cstrides[1], cstrides[2], cstrides[3]
    if n0 * n1 * n2 * n3 == 0:
        return
    end = <const void*>(&x[n0 - 1, n1 - 1, n2 - 1, n3 - 1] + 1)
    # A threshold per position along the rows, the same for every row of a plane (a C-order
    # (X, Y, Z, T) stack per volume): the plane is one row, its thresholds laid out once.
    plane = (t3s != 0 and t2s == 0 and c2s == 0 and n2 * n3 <= 4096
             and (real_t is double or real_t is float or real_t is int32_t or real_t is int16_t
                  or real_t is uint16_t or real_t is uint8_t))
    if t3s != 0:
        trow = <double*>malloc((n2 * n3 if plane else n3) * sizeof(double))
        urow = <double*>malloc((n2 * n3 if plane else n3) * sizeof(double))
        if trow == NULL or urow == NULL:
            free(trow)
            free(urow)
            raise MemoryError()
    with nogil:
        for i0 in range(n0):
            for i1 in range(n1):
                if plane:
                    tb = i0 * t0s + i1 * t1s
                    cb = i0 * c0s + i1 * c1s
                    if tb != tlast:
                        for i2 in range(n2):
                            for i3 in range(n3):
                                trow[i2 * n3 + i3] = tp[tb + i3 * t3s]
                                urow[i2 * n3 + i3] = up[tb + i3 * t3s] if up != NULL else 0.0
                        tlast = tb
                    row = &x[i0, i1, 0, 0]
                    orow = &out[i0, i1, 0, 0]
                    s = _above_lanes(row, n2 * n3, trow, urow, flags, orow)
                    if c3s == 0:
                        c[cb] += s
                    else:
                        for i2 in range(n2):
                            for i3 in range(n3):
                                c[cb + i3 * c3s] += orow[i2 * n3 + i3]
                    continue
                for i2 in range(n2):
                    tb = i0 * t0s + i1 * t1s + i2 * t2s
                    cb = i0 * c0s + i1 * c1s + i2 * c2s
                    row = &x[i0, i1, i2, 0]
                    orow = &out[i0, i1, i2, 0]
                    if t3s == 0:
                        # One threshold per row: the vector row loops (asking the cache for
                        # the row after next); then one count per row, or the row added to
                        # counts along it (a volume axis that is the contiguous one).
                        if PF_ROWS:
                            vb_prefetch_ahead(row, n3 * sizeof(real_t), PF_ROWS * n3 * sizeof(real_t), end)
                        tv = tp[tb]
                        if up != NULL:
                            uv = up[tb]
                        if real_t is double:
                            s = vb_above_f64(row, n3, tv, uv, flags, orow)
                        elif real_t is float:
                            s = vb_above_f32(row, n3, tv, uv, flags, orow)
                        elif real_t is int32_t:
                            s = vb_above_i32(row, n3, tv, uv, flags, orow)
                        elif real_t is int16_t:
                            s = vb_above_i16(row, n3, tv, uv, flags, orow)
                        elif real_t is uint16_t:
                            s = vb_above_u16(row, n3, tv, uv, flags, orow)
                        elif real_t is uint8_t:
                            s = vb_above_u8(row, n3, tv, uv, flags, orow)
                        else:
                            s = 0
                            for i3 in range(n3):
                                f = _fg(<double>row[i3], tv, uv, flags)
                                orow[i3] = f
                                s += f
                        if c3s == 0:
                            c[cb] += s
                        else:
                            for i3 in range(n3):
                                c[cb + i3 * c3s] += orow[i3]
                    elif trow != NULL and (real_t is double or real_t is float or real_t is int32_t
                                           or real_t is int16_t or real_t is uint16_t
                                           or real_t is uint8_t):
                        # A threshold per position along the rows: the row's thresholds (and
                        # upper bounds) laid out once per base, then the vector row loop.
                        if tb != tlast:
                            for i3 in range(n3):
                                trow[i3] = tp[tb + i3 * t3s]
                                urow[i3] = up[tb + i3 * t3s] if up != NULL else 0.0
                            tlast = tb
                        if PF_ROWS:
                            vb_prefetch_ahead(row, n3 * sizeof(real_t), PF_ROWS * n3 * sizeof(real_t), end)
                        s = _above_lanes(row, n3, trow, urow, flags, orow)
                        if c3s == 0:
                            c[cb] += s
                        else:
                            for i3 in range(n3):
                                c[cb + i3 * c3s] += orow[i3]
                    else:
                        for i3 in range(n3):
                            fv = <double>row[i3]
                            tv = tp[tb + i3 * t3s]
                            if up != NULL:
                                uv = up[tb + i3 * t3s]
                            f = _fg(fv, tv, uv, flags)
                            orow[i3] = f
                            c[cb + i3 * c3s] += f
    free(trow)
    free(urow)
