"""The histogram-equalisation curve: a table lookup on equally spaced knots, and the histogram
of its output without computing most of it (see ``volbin._tone_kernels`` for the contract).

Values of any native integer or float type are converted to double before use; the
arithmetic is the plain IEEE double arithmetic written below (no fused multiply-add).
"""

from libc.math cimport NAN, floor
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

from volbin.kernels._blocks cimport real_t

cdef extern from "_simd.h" nogil:
    ctypedef struct vb_bins_t:
        double a, nm, s, flast, fnb, up_ok
    int vb_init()
    int vb_set_level(int level)
    ctypedef struct vb_eq_t:
        double e0, scale, last
        const double* values
        const int32_t* table
        const uint32_t* bits
        double lo, step, norm, flast, up_ok
        int32_t sink
    int32_t vb_eq_bin_1(double fv, int32_t k, const vb_eq_t* q)
    int32_t vb_eq_bin_at(double frac, int32_t k, const vb_eq_t* q)
    Py_ssize_t vb_eq_unsettled_f64(const double* x, Py_ssize_t n, const vb_bins_t* p, const vb_eq_t* q,
                                   int32_t* add, int32_t* sub)
    Py_ssize_t vb_eq_unsettled_f32(const float* x, Py_ssize_t n, const vb_bins_t* p, const vb_eq_t* q,
                                   int32_t* add, int32_t* sub)
    Py_ssize_t vb_eq_unsettled_i32(const int32_t* x, Py_ssize_t n, const vb_bins_t* p, const vb_eq_t* q,
                                   int32_t* add, int32_t* sub)
    Py_ssize_t vb_eq_unsettled_i16(const int16_t* x, Py_ssize_t n, const vb_bins_t* p, const vb_eq_t* q,
                                   int32_t* add, int32_t* sub)
    Py_ssize_t vb_eq_unsettled_u16(const uint16_t* x, Py_ssize_t n, const vb_bins_t* p, const vb_eq_t* q,
                                   int32_t* add, int32_t* sub)
    Py_ssize_t vb_eq_unsettled_u8(const uint8_t* x, Py_ssize_t n, const vb_bins_t* p, const vb_eq_t* q,
                                  int32_t* add, int32_t* sub)

#: Vector version of the loop that finds unsettled values: 0/1 scalar, 2 AVX2, 3 AVX-512.
SIMD_LEVEL = vb_init()


def _set_simd_level(int level):
    """Use vector version `level` or the best below it (tests compare every version)."""
    global SIMD_LEVEL
    SIMD_LEVEL = vb_set_level(level)
    return SIMD_LEVEL


ctypedef fused binned_t:
    uint8_t
    int16_t
    uint16_t
    int32_t
    float
    double


cdef inline double _clamp(double v, double lo, double hi) noexcept nogil:
    # min(max(v, lo), hi) as Python's: max keeps v unless lo is larger, min keeps it unless hi is smaller.
    if lo > v:
        v = lo
    if hi < v:
        v = hi
    return v


cdef enum:
    _ROW = 1024  # values whose knot intervals are found at a time (a buffer that stays in L1)


def equalize_map(const real_t[::1] x, double e0, double scale, const double[::1] values, float[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double last = <double>(values.shape[0] - 2)
    cdef double v, s, k, frac, lo, r
    cdef Py_ssize_t ki
    with nogil:
        for i in range(n):
            v = <double>x[i]
            s = (v - e0) * scale
            if s != s:
                s = 0.0
            k = floor(_clamp(s, 0.0, last))
            frac = _clamp(s - k, 0.0, 1.0)
            ki = <Py_ssize_t>k
            lo = values[ki]
            r = lo + frac * (values[ki + 1] - lo)
            out[i] = <float>r if v == v else <float>NAN


cdef inline vb_eq_t _curve(double e0, double scale, const double[::1] values, const int32_t[::1] table,
                          const uint32_t* bits, double lo, double hi, Py_ssize_t nbins) noexcept:
    # The curve and the equalised histogram's bins, as vb_eq_bin_1 takes them.
    cdef vb_eq_t q
    q.e0 = e0
    q.scale = scale
    q.last = <double>(values.shape[0] - 2)
    q.values = &values[0]
    q.table = &table[0]
    q.bits = bits
    q.lo = lo
    q.step = (hi - lo) / nbins
    q.norm = nbins / (hi - lo) if hi > lo else 0.0
    q.flast = <double>(nbins - 1)
    q.up_ok = 1.0 if q.step > 0.0 else 0.0
    q.sink = <int32_t>nbins
    return q


def equalized_table(const double[::1] values, double lo, double hi, Py_ssize_t nbins, int32_t[::1] table):
    cdef Py_ssize_t k, nb = values.shape[0] - 1
    cdef int32_t b0, b1
    cdef vb_eq_t cv
    if nb < 1 or table.shape[0] < nb or nbins < 1:
        raise ValueError("`values` needs two knots or more, `table` an entry per interval.")
    cv = _curve(0.0, 1.0, values, table, NULL, lo, hi, nbins)
    with nogil:
        for k in range(nb):
            b0 = vb_eq_bin_at(0.0, <int32_t>k, &cv)
            b1 = vb_eq_bin_at(1.0, <int32_t>k, &cv)
            table[k] = b0 if b0 == b1 else -1


def equalized_histogram(
    const real_t[::1] x,
    double e0,
    double scale,
    const double[::1] values,
    const int32_t[::1] table,
    double lo,
    double hi,
    Py_ssize_t nbins,
    int64_t[::1] counts,
):
    cdef Py_ssize_t j, q, n = x.shape[0]
    cdef double last = <double>(values.shape[0] - 2)
    cdef double s
    cdef Py_ssize_t ki, b, i0, m
    cdef const real_t* row
    cdef vb_eq_t cv
    cdef int64_t* c4
    cdef int32_t* knots
    if values.shape[0] < 2 or table.shape[0] < values.shape[0] - 1 or counts.shape[0] < nbins or nbins < 1:
        raise ValueError("`values` needs two knots or more, `table` an entry per interval, `counts` "
                         "an entry per bin.")
    cv = _curve(e0, scale, values, table, NULL, lo, hi, nbins)
    c4 = <int64_t*>calloc(4 * (nbins + 1), sizeof(int64_t))
    knots = <int32_t*>malloc(_ROW * sizeof(int32_t))
    if c4 == NULL or knots == NULL:
        free(c4)
        free(knots)
        raise MemoryError()
    try:
        with nogil:
            i0 = 0
            while i0 < n:
                m = n - i0 if n - i0 < _ROW else _ROW
                row = &x[i0]
                # The knot interval of each value, floor(_clamp(s, 0, last)) (a truncation,
                # as the value is >= 0), in a loop the compiler vectorises.
                for j in range(m):
                    s = (<double>row[j] - e0) * scale
                    s = 0.0 if s != s else s
                    s = 0.0 if 0.0 > s else s
                    s = last if last < s else s
                    knots[j] = <int32_t>s
                for j in range(m):
                    ki = knots[j]
                    b = table[ki]
                    if b < 0:
                        b = vb_eq_bin_1(<double>row[j], <int32_t>ki, &cv)
                    if row[j] == row[j]:
                        c4[(j & 3) * (nbins + 1) + b] += 1
                    else:
                        c4[(j & 3) * (nbins + 1) + nbins] += 1
                i0 += m
            for q in range(nbins):
                counts[q] += c4[q] + c4[(nbins + 1) + q] + c4[2 * (nbins + 1) + q] + c4[3 * (nbins + 1) + q]
    finally:
        free(c4)
        free(knots)


def equalized_corrections(
    const binned_t[::1] x,
    double e0,
    double scale,
    const double[::1] values,
    const int32_t[::1] table,
    const uint32_t[::1] bits,
    double lo,
    double hi,
    Py_ssize_t nbins,
    double flo,
    double fhi,
    int64_t[::1] counts,
):
    cdef Py_ssize_t nb = values.shape[0] - 1
    cdef Py_ssize_t j, i0, m, c, q, n = x.shape[0]
    cdef vb_bins_t fp
    cdef vb_eq_t cv
    cdef const binned_t* row
    cdef int32_t* add
    cdef int32_t* sub
    cdef int64_t* cnt
    if not fhi > flo or nb < 1 or nbins < 1:
        raise ValueError(f"Need fhi > flo and bins; got [{flo}, {fhi}], {nb} and {nbins} bins.")
    if table.shape[0] < nb or bits.shape[0] < (nb + 31) // 32 or counts.shape[0] < nbins:
        raise ValueError("`table` needs an entry per knot interval, `bits` a bit per knot "
                         "interval and `counts` an entry per bin.")
    # The fine bins as `_histogram.group_histogram` computes them over [flo, fhi].
    fp.a = flo
    fp.nm = nb / (fhi - flo)
    fp.s = (fhi - flo) / nb
    fp.flast = <double>(nb - 1)
    fp.fnb = <double>nb
    fp.up_ok = 1.0 if fp.s > 0.0 else 0.0
    cv = _curve(e0, scale, values, table, &bits[0], lo, hi, nbins)
    add = <int32_t*>malloc((_ROW + 8) * sizeof(int32_t))
    sub = <int32_t*>malloc((_ROW + 8) * sizeof(int32_t))
    cnt = <int64_t*>calloc(nbins + 1, sizeof(int64_t))  # index nbins counts nothing
    try:
        if add == NULL or sub == NULL or cnt == NULL:
            raise MemoryError()
        with nogil:
            i0 = 0
            while i0 < n:
                m = n - i0 if n - i0 < _ROW else _ROW
                row = &x[i0]
                if binned_t is double:
                    c = vb_eq_unsettled_f64(row, m, &fp, &cv, add, sub)
                elif binned_t is float:
                    c = vb_eq_unsettled_f32(row, m, &fp, &cv, add, sub)
                elif binned_t is int32_t:
                    c = vb_eq_unsettled_i32(row, m, &fp, &cv, add, sub)
                elif binned_t is int16_t:
                    c = vb_eq_unsettled_i16(row, m, &fp, &cv, add, sub)
                elif binned_t is uint16_t:
                    c = vb_eq_unsettled_u16(row, m, &fp, &cv, add, sub)
                else:
                    c = vb_eq_unsettled_u8(row, m, &fp, &cv, add, sub)
                for j in range(c):
                    cnt[add[j]] += 1
                    cnt[sub[j]] -= 1
                i0 += m
            for q in range(nbins):
                counts[q] += cnt[q]
    finally:
        free(add)
        free(sub)
        free(cnt)
