"""The histogram-equalisation curve: a table lookup on equally spaced knots, and the histogram
of its output without computing most of it (see ``volbin._tone_kernels`` for the contract).

Values of any native integer or float type are converted to double before use; the
arithmetic is the plain IEEE double arithmetic written below (no fused multiply-add).
"""

from libc.math cimport NAN, floor
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

from volbin.kernels._blocks cimport real_t


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
    cdef double step = (hi - lo) / nbins
    cdef double norm = nbins / (hi - lo) if hi > lo else 0.0
    cdef double flast = <double>(nbins - 1)
    cdef double up_ok = 1.0 if step > 0.0 else 0.0
    cdef double v, s, k, frac, a, fv, kf
    cdef Py_ssize_t ki, b, i0, m
    cdef const real_t* row
    cdef int64_t* c4 = <int64_t*>calloc(4 * (nbins + 1), sizeof(int64_t))
    cdef int32_t* knots = <int32_t*>malloc(_ROW * sizeof(int32_t))
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
                    v = <double>row[j]
                    b = table[ki]
                    if b < 0:
                        s = (v - e0) * scale
                        if s != s:
                            s = 0.0
                        k = <double>ki
                        frac = _clamp(s - k, 0.0, 1.0)
                        a = values[ki]
                        fv = <double>(<float>(a + frac * (values[ki + 1] - a)))
                        kf = floor(_clamp((fv - lo) * norm, 0.0, flast))
                        kf = (
                            kf
                            - <double>((fv < kf * step + lo) and (kf > 0.0))
                            + <double>((fv >= (kf + 1.0) * step + lo) and (kf < flast)) * up_ok
                        )
                        b = <Py_ssize_t>kf
                    if v == v:
                        c4[(j & 3) * (nbins + 1) + b] += 1
                    else:
                        c4[(j & 3) * (nbins + 1) + nbins] += 1
                i0 += m
            for q in range(nbins):
                counts[q] += c4[q] + c4[(nbins + 1) + q] + c4[2 * (nbins + 1) + q] + c4[3 * (nbins + 1) + q]
    finally:
        free(c4)
        free(knots)
