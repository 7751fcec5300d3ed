"""Per-group statistics of 4D blocks: finite range, moments, histograms, in-bin offsets.

Blocks are 4D C-contiguous arrays of any native integer or float type (bool as uint8); a
voxel's group is ``sum(index[a] * gstrides[a])`` (``gstrides`` is 0 on axes that do not
index groups).  Outputs accumulate, so a caller may feed several blocks into one result.

Every value is converted to double before use, and the arithmetic is the plain IEEE double
arithmetic of the formulas below (no fused multiply-add, no reassociation): ``min(a, b)``
and ``max(a, b)`` keep ``a`` unless ``b`` is strictly smaller or larger, as Python's do.
"""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.math cimport isfinite, isnan

cdef extern from "_simd.h" nogil:
    ctypedef struct vb_bins_t:
        double a, nm, s, flast, fnb, up_ok
    int vb_init()
    int vb_set_level(int level)
    int32_t vb_bin(double fv, double a, double nm, double s, double flast, double fnb, double up_ok)
    void vb_bins_f64(const double* x, Py_ssize_t n, const vb_bins_t* p, int32_t* idx)
    void vb_bins_f32(const float* x, Py_ssize_t n, const vb_bins_t* p, int32_t* idx)
    void vb_bins_i32(const int32_t* x, Py_ssize_t n, const vb_bins_t* p, int32_t* idx)
    void vb_bins_i16(const int16_t* x, Py_ssize_t n, const vb_bins_t* p, int32_t* idx)
    void vb_bins_u16(const uint16_t* x, Py_ssize_t n, const vb_bins_t* p, int32_t* idx)
    void vb_bins_u8(const uint8_t* x, Py_ssize_t n, const vb_bins_t* p, int32_t* idx)
    void vb_minmax(const double* x, Py_ssize_t n, double* lo, double* hi, int64_t* bad)
    void vb_prefetch_ahead(const void* p, Py_ssize_t nbytes, Py_ssize_t ahead, const void* end)

from volbin.kernels._blocks cimport check_groups, real_t

#: Vector version of the binning loop in use: 0 scalar, 1 SSE2, 2 AVX2, 3 AVX-512.
SIMD_LEVEL = vb_init()


def _set_simd_level(int level):
    """Use vector version `level` or the best below it (tests compare every version)."""
    global SIMD_LEVEL
    SIMD_LEVEL = vb_set_level(level)
    return SIMD_LEVEL


#: Fixed-point scale of the within-bin positions summed by `group_histogram_offsets`.
OFFSET_SCALE = 2**24
# Rows ahead that the histogram row loops ask the cache for (0: none; `_set_prefetch_rows`).
cdef Py_ssize_t PF_ROWS = 2


def _set_prefetch_rows(Py_ssize_t rows):
    global PF_ROWS
    PF_ROWS = rows


cdef double _OFFSET_SCALE = 16777216.0


cdef inline double _min(double a, double b) noexcept nogil:
    return b if b < a else a


cdef inline double _max(double a, double b) noexcept nogil:
    return b if b > a else a


def group_stats(const real_t[:, :, :, ::1] x, const int64_t[::1] gstrides, Py_ssize_t n_groups,
                double[::1] out_min, double[::1] out_max, int64_t[::1] out_n, double[::1] out_sum,
                double[::1] out_sumsq, int64_t[:, ::1] out_nonfinite):
    """Per-group min, max, count, sum, sum of squares of the finite values of 4D `x`.

    `out_nonfinite` is (n_groups, 3): counts of NaN, +Inf, -Inf.  Outputs accumulate (callers
    initialise min to +inf and max to -inf).
    """
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], n3 = x.shape[3]
    cdef Py_ssize_t i0, i1, i2, i3, gb, g
    cdef int64_t g0s, g1s, g2s, g3s
    cdef const real_t* row
    cdef double fv, lo, hi, s, ss
    cdef int64_t n, nan, pinf, ninf
    cdef double* mn = &out_min[0]
    cdef double* mx = &out_max[0]
    cdef int64_t* cnt = &out_n[0]
    cdef double* sm = &out_sum[0]
    cdef double* sq = &out_sumsq[0]
    cdef int64_t* nf
    if out_nonfinite.shape[1] != 3:
        raise ValueError("`out_nonfinite` must be (n_groups, 3).")
    check_groups(n0, n1, n2, n3, gstrides, min(out_min.shape[0], out_max.shape[0], out_n.shape[0],
                 out_sum.shape[0], out_sumsq.shape[0], out_nonfinite.shape[0]), "gstrides")
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    if n0 * n1 * n2 * n3 == 0:
        return
    nf = &out_nonfinite[0, 0]
    with nogil:
        for i0 in range(n0):
            for i1 in range(n1):
                for i2 in range(n2):
                    gb = i0 * g0s + i1 * g1s + i2 * g2s
                    row = &x[i0, i1, i2, 0]
                    if g3s == 0:
                        # A row of one group: the same operations in the same order, on
                        # local accumulators (the output arrays might alias each other).
                        lo, hi, n, s, ss = mn[gb], mx[gb], cnt[gb], sm[gb], sq[gb]
                        nan, pinf, ninf = nf[3 * gb], nf[3 * gb + 1], nf[3 * gb + 2]
                        for i3 in range(n3):
                            fv = <double>row[i3]
                            if isfinite(fv):
                                if fv < lo:
                                    lo = fv
                                if fv > hi:
                                    hi = fv
                                n += 1
                                s += fv
                                ss += fv * fv
                            elif isnan(fv):
                                nan += 1
                            elif fv > 0:
                                pinf += 1
                            else:
                                ninf += 1
                        mn[gb], mx[gb], cnt[gb], sm[gb], sq[gb] = lo, hi, n, s, ss
                        nf[3 * gb], nf[3 * gb + 1], nf[3 * gb + 2] = nan, pinf, ninf
                        continue
                    for i3 in range(n3):
                        g = gb + i3 * g3s
                        fv = <double>row[i3]
                        if isfinite(fv):
                            if fv < mn[g]:
                                mn[g] = fv
                            if fv > mx[g]:
                                mx[g] = fv
                            cnt[g] += 1
                            sm[g] += fv
                            sq[g] += fv * fv
                        elif isnan(fv):
                            nf[3 * g] += 1
                        elif fv > 0:
                            nf[3 * g + 1] += 1
                        else:
                            nf[3 * g + 2] += 1


cdef inline void _gather_position(const real_t* plane, Py_ssize_t n2, Py_ssize_t n3, Py_ssize_t i3,
                                  double* out) noexcept nogil:
    """out[i2] = plane[i2, i3] as doubles: one position's values across a C-ordered
    (n2, n3) plane (in the cache: a plane is a few rows)."""
    cdef Py_ssize_t i2
    for i2 in range(n2):
        out[i2] = <double>plane[i2 * n3 + i3]


def group_minmax(const real_t[:, :, :, ::1] x, const int64_t[::1] gstrides, double[::1] out_min,
                 double[::1] out_max, int64_t[::1] out_nonfinite):
    """Per-group finite min and max of 4D `x`, and the count of non-finite voxels.

    Outputs accumulate (callers initialise min to +inf and max to -inf).
    """
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], n3 = x.shape[3]
    cdef Py_ssize_t i0, i1, i2, i3, gb, g
    cdef int64_t g0s, g1s, g2s, g3s
    cdef const real_t* row
    cdef double fv
    cdef double* mn = &out_min[0]
    cdef double* mx = &out_max[0]
    cdef int64_t* nf = &out_nonfinite[0]
    cdef double* buf
    cdef const void* end
    check_groups(n0, n1, n2, n3, gstrides, min(out_min.shape[0], out_max.shape[0],
                 out_nonfinite.shape[0]), "gstrides")
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    if n0 * n1 * n2 * n3 == 0:
        return
    end = <const void*>(&x[n0 - 1, n1 - 1, n2 - 1, n3 - 1] + 1)
    with nogil:
        buf = <double*>malloc((n3 if g3s == 0 or g2s != 0 else n2) * sizeof(double))
        if buf == NULL:
            with gil:
                raise MemoryError()
        for i0 in range(n0):
            for i1 in range(n1):
                if g3s != 0 and g2s == 0:
                    # A group per position along the rows, the same for every row of the
                    # plane: each position's values across the plane, gathered from the
                    # cache into a row, take the vector loop (as in group_histogram).
                    gb = i0 * g0s + i1 * g1s
                    row = &x[i0, i1, 0, 0]
                    for i3 in range(n3):
                        _gather_position(row, n2, n3, i3, buf)
                        g = gb + i3 * g3s
                        vb_minmax(buf, n2, mn + g, mx + g, nf + g)
                    continue
                for i2 in range(n2):
                    gb = i0 * g0s + i1 * g1s + i2 * g2s
                    row = &x[i0, i1, i2, 0]
                    if g3s == 0 and PF_ROWS:
                        vb_prefetch_ahead(row, n3 * sizeof(real_t), PF_ROWS * n3 * sizeof(real_t), end)
                    if g3s == 0 and real_t is double:
                        vb_minmax(<const double*>row, n3, mn + gb, mx + gb, nf + gb)
                    elif g3s == 0:
                        # A row of one group: the vector loop over the row as doubles.
                        for i3 in range(n3):
                            buf[i3] = <double>row[i3]
                        vb_minmax(buf, n3, mn + gb, mx + gb, nf + gb)
                    else:
                        for i3 in range(n3):
                            g = gb + i3 * g3s
                            fv = <double>row[i3]
                            if fv - fv == 0.0:  # finite
                                mn[g] = _min(mn[g], fv)
                                mx[g] = _max(mx[g], fv)
                            else:
                                nf[g] += 1
        free(buf)


cdef inline void _count_bins(uint32_t* c2, int64_t* c4, bint small, Py_ssize_t stride,
                             const int32_t* idx, Py_ssize_t n) noexcept nogil:
    """Count bins idx[:n] of one group in its interleaved sub-histograms: two uint32 ones at
    c2 and c2 + stride if `small`, else four int64 ones at c4 + j * stride."""
    cdef Py_ssize_t i = 0
    if small:
        while i + 2 <= n:
            c2[idx[i]] += 1
            c2[stride + idx[i + 1]] += 1
            i += 2
        if i < n:
            c2[idx[i]] += 1
        return
    while i + 4 <= n:
        c4[idx[i]] += 1
        c4[stride + idx[i + 1]] += 1
        c4[2 * stride + idx[i + 2]] += 1
        c4[3 * stride + idx[i + 3]] += 1
        i += 4
    while i < n:
        c4[(i & 3) * stride + idx[i]] += 1
        i += 1


def group_histogram(const real_t[:, :, :, ::1] x, const int64_t[::1] gstrides,
                    const double[::1] lo, const double[::1] hi, Py_ssize_t nbins,
                    int64_t[:, ::1] counts):
    """Add the histogram of 4D `x` to `counts` (n_groups, nbins), per group.

    Bins are `nbins` equal bins over [lo[g], hi[g]] with edges ``k * step + lo`` as in
    ``np.linspace``; a value is assigned exactly as ``np.histogram`` assigns it (the last bin
    includes its right edge).  Values outside the range go to the edge bins (clipping);
    non-finite values are skipped.  A group with ``hi <= lo`` puts every finite value in bin 0.
    """
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], n3 = x.shape[3]
    cdef Py_ssize_t ng = counts.shape[0]
    cdef Py_ssize_t i0, i1, i2, i3, gb, g, q
    cdef int32_t k
    cdef int64_t g0s, g1s, g2s, g3s
    cdef Py_ssize_t last = nbins - 1, width = nbins + 1
    cdef double flast = <double>last, fnb = <double>nbins
    cdef double fv
    cdef const real_t* row
    cdef vb_bins_t* par
    cdef vb_bins_t* pg
    cdef int64_t* c4
    cdef uint32_t* c2 = NULL
    # Many bins: two interleaved uint32 histograms (a quarter of the memory of four int64
    # ones, so that 65536 bins stay in a core's cache); each counts at most half of the
    # voxels, so uint32 cannot overflow below 2**32 voxels.
    cdef bint small = ng * (nbins + 1) >= 16384 and n0 * n1 * n2 * n3 < 4294967296
    cdef int32_t* idx
    cdef double* buf
    cdef double* lanes = NULL
    cdef int32_t* lidx = NULL
    cdef const void* end = NULL
    if nbins < 1:
        raise ValueError(f"`nbins` must be a positive int; got {nbins}.")
    if counts.shape[1] != nbins or lo.shape[0] < ng or hi.shape[0] < ng:
        raise ValueError("`counts` must be (n_groups, nbins), with n_groups entries in `lo` and `hi`.")
    check_groups(n0, n1, n2, n3, gstrides, ng, "gstrides")
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    if n0 * n1 * n2 * n3:
        end = <const void*>(&x[n0 - 1, n1 - 1, n2 - 1, n3 - 1] + 1)
    if ng == 0:
        return
    with nogil:
        par = <vb_bins_t*>malloc(ng * sizeof(vb_bins_t))
        # Four interleaved sub-histograms (hiding store-to-load latency on runs of equal
        # bins); index nbins collects non-finite values and is dropped.
        c4 = <int64_t*>calloc((1 if small else 4) * ng * width, sizeof(int64_t))
        if small:
            c2 = <uint32_t*>calloc(2 * ng * width, sizeof(uint32_t))
        idx = <int32_t*>malloc((n3 + 1) * sizeof(int32_t))
        buf = <double*>malloc((n3 + 1) * sizeof(double))
        if g3s != 0 and g2s == 0 and n2 > 1:
            lanes = <double*>malloc((n2 + 1) * sizeof(double))
            lidx = <int32_t*>malloc((n2 + 1) * sizeof(int32_t))
        try:
            if par == NULL or c4 == NULL or idx == NULL or buf == NULL or (small and c2 == NULL):
                with gil:
                    raise MemoryError()
            if g3s != 0 and g2s == 0 and n2 > 1 and (lanes == NULL or lidx == NULL):
                with gil:
                    raise MemoryError()
            for g in range(ng):
                pg = par + g
                pg.a = lo[g]
                pg.flast = flast
                pg.fnb = fnb
                if hi[g] > lo[g]:
                    pg.nm = nbins / (hi[g] - lo[g])
                    pg.s = (hi[g] - lo[g]) / nbins
                else:
                    pg.nm = 0.0
                    pg.s = 0.0
                pg.up_ok = 1.0 if pg.s > 0.0 else 0.0
            if n0 * n1 * n2 * n3 != 0:
                for i0 in range(n0):
                    for i1 in range(n1):
                        if lanes != NULL:
                            # A group per position along the rows, the same for every row
                            # of the plane (a C-order (X, Y, Z, T) stack per volume, or
                            # z-slices with z innermost): each position's values across
                            # the plane, gathered from the cache into a row, take the
                            # vector loop of a row of one group.
                            gb = i0 * g0s + i1 * g1s
                            row = &x[i0, i1, 0, 0]
                            for i3 in range(n3):
                                _gather_position(row, n2, n3, i3, lanes)
                                g = gb + i3 * g3s
                                vb_bins_f64(lanes, n2, par + g, lidx)
                                _count_bins(c2 + g * width if small else NULL, c4 + g * width, small,
                                            ng * width, lidx, n2)
                            continue
                        for i2 in range(n2):
                            gb = i0 * g0s + i1 * g1s + i2 * g2s
                            row = &x[i0, i1, i2, 0]
                            if g3s == 0:
                                # A row of one group: bin indices for the whole row in a
                                # vector loop, then the counting loop, while the row after
                                # next comes in.
                                if PF_ROWS:
                                    vb_prefetch_ahead(row, n3 * sizeof(real_t), PF_ROWS * n3 * sizeof(real_t), end)
                                if real_t is double:
                                    vb_bins_f64(row, n3, par + gb, idx)
                                elif real_t is float:
                                    vb_bins_f32(row, n3, par + gb, idx)
                                elif real_t is int32_t:
                                    vb_bins_i32(row, n3, par + gb, idx)
                                elif real_t is int16_t:
                                    vb_bins_i16(row, n3, par + gb, idx)
                                elif real_t is uint16_t:
                                    vb_bins_u16(row, n3, par + gb, idx)
                                elif real_t is uint8_t:
                                    vb_bins_u8(row, n3, par + gb, idx)
                                else:
                                    for i3 in range(n3):
                                        buf[i3] = <double>row[i3]
                                    vb_bins_f64(buf, n3, par + gb, idx)
                                _count_bins(c2 + gb * width if small else NULL, c4 + gb * width, small,
                                            ng * width, idx, n3)
                            else:
                                for i3 in range(n3):
                                    g = gb + i3 * g3s
                                    pg = par + g
                                    k = vb_bin(<double>row[i3], pg.a, pg.nm, pg.s, flast, fnb,
                                               pg.up_ok)
                                    if small:
                                        c2[((i3 & 1) * ng + g) * width + k] += 1
                                    else:
                                        c4[((i3 & 3) * ng + g) * width + k] += 1
            if small:
                for g in range(ng):
                    for q in range(nbins):
                        counts[g, q] += <int64_t>c2[g * width + q] + <int64_t>c2[(ng + g) * width + q]
            else:
                for g in range(ng):
                    for q in range(nbins):
                        counts[g, q] += (c4[g * width + q] + c4[(ng + g) * width + q]
                                         + c4[(2 * ng + g) * width + q] + c4[(3 * ng + g) * width + q])
        finally:
            free(par)
            free(c4)
            free(c2)
            free(idx)
            free(buf)
            free(lanes)
            free(lidx)


def group_histogram_offsets(const real_t[:, :, :, ::1] x, const int64_t[::1] gstrides,
                            const double[::1] lo, const double[::1] hi, Py_ssize_t nbins,
                            int64_t[:, ::1] counts, int64_t[:, ::1] offsets):
    """Add the histogram of 4D `x` to `counts`, and the positions of the values within their
    bins to `offsets` (both (n_groups, nbins) int64), per group.

    Bins, edges and clipping are those of `group_histogram`.  A value's position is
    ``(v - left_edge) / width`` in [0, 1] (a clipped value sits on the edge it is clipped
    to), summed in fixed point (``OFFSET_SCALE`` steps per bin), so the mean of each bin is
    known to 2**-24 of a bin.  Integer sums do not depend on the order of accumulation, hence
    not on the chunking.
    """
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], n3 = x.shape[3]
    cdef Py_ssize_t ng = counts.shape[0]
    cdef Py_ssize_t i0, i1, i2, i3, gb, g, k
    cdef int64_t g0s, g1s, g2s, g3s
    cdef Py_ssize_t last = nbins - 1
    cdef double fnb = <double>nbins
    cdef double fv, a, b, s, f, r, pos
    cdef const real_t* row
    cdef int64_t* cnt
    cdef int64_t* off
    if nbins < 1:
        raise ValueError(f"`nbins` must be a positive int; got {nbins}.")
    if (counts.shape[1] != nbins or offsets.shape[0] != ng or offsets.shape[1] != nbins
            or lo.shape[0] < ng or hi.shape[0] < ng):
        raise ValueError("`counts` and `offsets` must be (n_groups, nbins), with n_groups entries "
                         "in `lo` and `hi`.")
    check_groups(n0, n1, n2, n3, gstrides, ng, "gstrides")
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    if ng == 0 or n0 * n1 * n2 * n3 == 0:
        return
    cnt = &counts[0, 0]
    off = &offsets[0, 0]
    with nogil:
        for i0 in range(n0):
            for i1 in range(n1):
                for i2 in range(n2):
                    gb = i0 * g0s + i1 * g1s + i2 * g2s
                    row = &x[i0, i1, i2, 0]
                    for i3 in range(n3):
                        g = gb + i3 * g3s
                        fv = <double>row[i3]
                        if not fv - fv == 0.0:  # NaN or ±Inf
                            continue
                        a = lo[g]
                        b = hi[g]
                        if not b > a:
                            cnt[g * nbins] += 1
                            continue
                        s = (b - a) / fnb
                        f = (fv - a) * (fnb / (b - a))
                        if f < 0.0:
                            k = 0
                            pos = 0.0
                        elif f >= fnb:
                            k = last
                            pos = 1.0
                        else:
                            k = <Py_ssize_t>f
                            r = f - <double>k
                            if r < 1e-7 or r > 0.9999999:
                                # Near an edge: decide against the exact edges, as np.histogram.
                                if k > 0 and fv < <double>k * s + a:
                                    k -= 1
                                elif k < last and fv >= <double>(k + 1) * s + a:
                                    k += 1
                            pos = _min(_max((fv - (<double>k * s + a)) / s, 0.0), 1.0)
                        cnt[g * nbins + k] += 1
                        off[g * nbins + k] += <int64_t>(pos * _OFFSET_SCALE + 0.5)


def group_count(const uint8_t[:, :, :, ::1] x, const int64_t[::1] gstrides, int64_t[::1] counts):
    """Add the number of non-zero bytes of 4D `x` (a boolean block as uint8) to `counts`,
    per group."""
    cdef Py_ssize_t n0 = x.shape[0], n1 = x.shape[1], n2 = x.shape[2], n3 = x.shape[3]
    cdef Py_ssize_t i0, i1, i2, i3, gb
    cdef int64_t g0s, g1s, g2s, g3s, s
    cdef const uint8_t* row
    cdef int64_t* c = &counts[0]
    check_groups(n0, n1, n2, n3, gstrides, counts.shape[0], "gstrides")
    g0s, g1s, g2s, g3s = gstrides[0], gstrides[1], gstrides[2], gstrides[3]
    if n0 * n1 * n2 * n3 == 0:
        return
    with nogil:
        for i0 in range(n0):
            for i1 in range(n1):
                for i2 in range(n2):
                    gb = i0 * g0s + i1 * g1s + i2 * g2s
                    row = &x[i0, i1, i2, 0]
                    if g3s == 0:
                        s = 0
                        for i3 in range(n3):
                            s += row[i3] != 0
                        c[gb] += s
                    else:
                        for i3 in range(n3):
                            c[gb + i3 * g3s] += row[i3] != 0
