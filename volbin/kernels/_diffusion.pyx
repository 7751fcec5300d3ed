"""Error-diffusion loops: 2D slice stacks and volumetric slabs (see volbin._dither_kernels).

Each row is processed in two steps.  A sequential pass quantises its pixels, carrying the
error for the next one or two pixels of the row in registers (``r1``, ``r2``) and writing
the error each pixel diffuses (``srow``, already rescaled at edges) to a row buffer.  A
second pass then adds ``w[k] * srow`` to each tap's target row, tap after tap: plain
vectorisable loops instead of scattered updates inside the dependency chain.  The order of
additions is part of the definition (``tests/reference.py`` follows it).

Error arithmetic is float32 and every operation is a single IEEE operation in the type the
comments give (no fused multiply-add, no float64 intermediate unless written): the loops are
bit-identical to ``tests/reference.py``.
"""

from libc.math cimport INFINITY, isfinite, nextafterf
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from ._splitmix cimport uniform01


cdef inline float _floor32(double t) noexcept nogil:
    """The largest float32 <= `t`: for float32 v, ``v > _floor32(t)`` iff ``v > t`` exactly."""
    cdef float f = <float>t
    if <double>f > t:
        f = nextafterf(f, -INFINITY)
    return f


cdef inline bint _above(float v, float t32, double threshold, double jitter, uint64_t key,
                        uint64_t index) noexcept nogil:
    """``v > threshold (+ jitter noise)``; without jitter a float32 compare against `t32`."""
    if jitter == 0.0:
        return v > t32
    return <double>v > threshold + jitter * (uniform01(key, index) - 0.5)


cdef struct Taps:
    # The kernel: row taps c1 (dx = 1) and c2 (dx = 2) in registers; the other taps in arrays.
    float c1
    float c2
    float wsum
    Py_ssize_t ntap
    const int64_t* dx
    const float* w
    # Per row: target offsets into the error buffer, and whether each tap's row/slice exists.
    int64_t* offs
    uint8_t* tap_ok


cdef struct Quant:
    # Threshold and jitter of the quantiser.
    float t32
    double threshold
    double jitter
    uint64_t key
    uint64_t xstride


cdef inline void _edge_run(const float* src, uint8_t* dst, const float* err, float* srow,
                           const Taps* tp, Py_ssize_t x0, Py_ssize_t step, Py_ssize_t count,
                           Py_ssize_t cols, float* r1p, float* r2p, const Quant* qt,
                           uint64_t rowidx) noexcept nogil:
    """Pixels of one row whose kernel reaches outside: rescale weights over in-bounds taps.

    `src`, `dst`, `err` and `srow` point at the row's first pixel; ``tp.tap_ok[k]`` says
    whether tap k's row and slice exist; columns are checked here.  ``*r1p, *r2p`` are the
    current-row error registers, updated for the next pixel.
    """
    cdef float zero = 0.0, one = 1.0, a, v, e, insum, r1 = r1p[0], r2 = r2p[0], r1n
    cdef float c1 = tp.c1, c2 = tp.c2
    cdef double s
    cdef Py_ssize_t i, k, x, tx
    cdef bint b, in1, in2, allin
    for i in range(count):
        x = x0 + step * i
        a = src[x]
        if not isfinite(a):
            a = zero
        v = (a + err[x]) + r1
        b = _above(v, qt.t32, qt.threshold, qt.jitter, qt.key, rowidx + <uint64_t>x * qt.xstride)
        dst[x] = b
        e = v - one if b else v
        in1 = c1 != zero and 0 <= x + step < cols
        in2 = c2 != zero and 0 <= x + 2 * step < cols
        insum = zero
        allin = True
        if c1 != zero:
            if in1:
                insum = insum + c1
            else:
                allin = False
        if c2 != zero:
            if in2:
                insum = insum + c2
            else:
                allin = False
        for k in range(tp.ntap):
            tx = x + step * tp.dx[k]
            if tp.tap_ok[k] and 0 <= tx < cols:
                insum = insum + tp.w[k]
            else:
                allin = False
        # The rescaled share is formed in float64 and each product rounded once to float32:
        # with a single tap left (the last row) that tap then gets exactly `e`, so no rounding
        # drift builds up along the row.  With every tap inside this equals the inner loop.
        if allin:
            s = <double>e
        elif insum > zero:
            s = <double>e * (<double>tp.wsum / <double>insum)
        else:
            s = 0.0  # no unprocessed neighbour: the last pixel of the image
        srow[x] = <float>s
        r1n = r2 + <float>(<double>c1 * s) if in1 else r2
        r2 = <float>(<double>c2 * s) if in2 else zero
        r1 = r1n
    r1p[0] = r1
    r2p[0] = r2


cdef inline void _inner_run(const float* src, uint8_t* dst, const float* cur, float* srow,
                            Py_ssize_t x0, Py_ssize_t step, Py_ssize_t count, float c1, float c2,
                            float* r1p, float* r2p, const Quant* qt, uint64_t rowidx) noexcept nogil:
    """Pixels of one row whose whole kernel lies in bounds (pointers at the row's start).

    One dependency chain through ``r1``, kept short: an add, a float32 compare, a
    conditional subtract, a multiply and an add.
    """
    cdef float zero = 0.0, one = 1.0, a, v, e, r1 = r1p[0], r2 = r2p[0]
    cdef Py_ssize_t i, x
    cdef bint b
    for i in range(count):
        x = x0 + step * i
        a = src[x]
        if not isfinite(a):
            a = zero
        v = (a + cur[x]) + r1
        b = _above(v, qt.t32, qt.threshold, qt.jitter, qt.key, rowidx + <uint64_t>x * qt.xstride)
        dst[x] = b
        e = v - one if b else v
        srow[x] = e
        r1 = r2 + c1 * e
        r2 = c2 * e
    r1p[0] = r1
    r2p[0] = r2


cdef inline void _inner_run2(const float* srca, const float* srcb, uint8_t* dsta, uint8_t* dstb,
                             const float* cura, const float* curb, float* srowa, float* srowb,
                             Py_ssize_t x0, Py_ssize_t step, Py_ssize_t count, float c1, float c2,
                             float* r1ap, float* r2ap, float* r1bp, float* r2bp, const Quant* qt,
                             uint64_t rowa, uint64_t rowb) noexcept nogil:
    """`_inner_run` on the same row of two independent slices at once.

    Two interleaved dependency chains keep the core busy while each waits on its own.  The
    output value is subtracted as a float (``v - b``, exact), without a branch.
    """
    cdef float zero = 0.0, aa, ab, va, vb, ea, eb
    cdef float r1a = r1ap[0], r2a = r2ap[0], r1b = r1bp[0], r2b = r2bp[0]
    cdef Py_ssize_t i, x
    cdef bint ba, bb
    for i in range(count):
        x = x0 + step * i
        aa = srca[x]
        ab = srcb[x]
        if not isfinite(aa):
            aa = zero
        if not isfinite(ab):
            ab = zero
        va = (aa + cura[x]) + r1a
        vb = (ab + curb[x]) + r1b
        ba = _above(va, qt.t32, qt.threshold, qt.jitter, qt.key, rowa + <uint64_t>x * qt.xstride)
        bb = _above(vb, qt.t32, qt.threshold, qt.jitter, qt.key, rowb + <uint64_t>x * qt.xstride)
        dsta[x] = ba
        dstb[x] = bb
        ea = va - <float>ba
        eb = vb - <float>bb
        srowa[x] = ea
        srowb[x] = eb
        r1a = r2a + c1 * ea
        r2a = c2 * ea
        r1b = r2b + c1 * eb
        r2b = c2 * eb
    r1ap[0] = r1a
    r2ap[0] = r2a
    r1bp[0] = r1b
    r2bp[0] = r2b


cdef inline void _spread(float* err, const Taps* tp, const float* srow, Py_ssize_t step,
                         Py_ssize_t cols) noexcept nogil:
    """Add ``w[k] * srow`` to each existing target row ``err + offs[k]``, shifted by dx[k]."""
    cdef Py_ssize_t k, i, d, lo, hi
    cdef float wk
    cdef float* tgt
    cdef const float* sv
    for k in range(tp.ntap):
        if not tp.tap_ok[k]:
            continue
        d = step * tp.dx[k]
        lo = -d if -d > 0 else 0
        hi = cols - d if cols - d < cols else cols
        wk = tp.w[k]
        tgt = err + tp.offs[k] + d + lo
        sv = srow + lo
        for i in range(hi - lo):
            tgt[i] = tgt[i] + wk * sv[i]


cdef inline void _segments(Py_ssize_t cols, Py_ssize_t step, Py_ssize_t lo, Py_ssize_t hi,
                           Py_ssize_t* seg) noexcept nogil:
    """(start, count) of the three runs of a row in scan order: edge, inner, edge."""
    if step > 0:
        seg[0], seg[1], seg[2], seg[3], seg[4], seg[5] = 0, lo, lo, hi - lo, hi, cols - hi
    else:
        seg[0], seg[1], seg[2], seg[3], seg[4], seg[5] = cols - 1, cols - hi, hi - 1, hi - lo, lo - 1, lo


cdef inline void _inner_range(Py_ssize_t cols, Py_ssize_t step, Py_ssize_t dxmin, Py_ssize_t dxmax,
                              bint row_inside, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the columns of a row where every tap's column is inside."""
    if not row_inside:
        lo[0] = cols
        hi[0] = cols
    elif step > 0:
        lo[0] = min(-dxmin, cols)
        hi[0] = max(cols - dxmax, lo[0])
    else:
        lo[0] = min(dxmax, cols)
        hi[0] = max(cols + dxmin, lo[0])


cdef inline void _kernel_extent(Taps* tp, const int64_t* dy, Py_ssize_t* ext) noexcept nogil:
    """Total weight (into tp.wsum) and reach of the taps: ext = (dymin, dymax, dxmin, dxmax)."""
    cdef float wsum = 0.0
    cdef Py_ssize_t k
    wsum = wsum + tp.c1
    wsum = wsum + tp.c2
    ext[0] = 0
    ext[1] = 0
    ext[2] = 0
    ext[3] = 2 if tp.c2 != 0 else (1 if tp.c1 != 0 else 0)
    for k in range(tp.ntap):
        wsum = wsum + tp.w[k]
        ext[0] = min(ext[0], dy[k])
        ext[1] = max(ext[1], dy[k])
        ext[2] = min(ext[2], tp.dx[k])
        ext[3] = max(ext[3], tp.dx[k])
    tp.wsum = wsum


cdef int _check_taps(const int64_t[::1] dy, const int64_t[::1] dx, const float[::1] w) except -1:
    if dy.shape[0] != w.shape[0] or dx.shape[0] != w.shape[0]:
        raise ValueError("`dy`, `dx` and `w` must be equally long.")
    return 0


def diffuse_slices(const float[:, :, ::1] img, uint8_t[:, :, ::1] out, float c1, float c2,
                   const int64_t[::1] dy, const int64_t[::1] dx, const float[::1] w, bint serpentine,
                   double threshold, double jitter, uint64_t key, int64_t index_base,
                   index_strides):
    """Error-diffuse each 2D slice ``img[i]`` of a (n, rows, cols) float32 stack into `out`.

    Slices are independent; pairs of them are processed in lockstep (identical results,
    faster).  The error lives in a ring of ``max(dy) + 1`` rows.  `c1`, `c2`, `dy`, `dx`,
    `w` come from ``split_taps`` (every tap has ``dy >= 1``); `index_strides` is a tuple of 3
    ints; see ``volbin._dither_kernels`` for the rest.
    """
    cdef Py_ssize_t n = img.shape[0], rows = img.shape[1], cols = img.shape[2]
    cdef Py_ssize_t plane = rows * cols, nring, s, y, k, lo, hi, base, pa, pb
    cdef Py_ssize_t step
    cdef Py_ssize_t ext[4]
    cdef Py_ssize_t seg[6]
    cdef uint64_t s0, s1, rowa, rowb
    cdef bint two
    cdef float r1a, r2a, r1b, r2b
    cdef float* ring = NULL
    cdef float* erra
    cdef float* errb
    cdef float* srows = NULL
    cdef float* srowa
    cdef float* srowb
    cdef const float* src
    cdef uint8_t* dst
    cdef const int64_t* dyp
    cdef Taps tp
    cdef Quant qt
    _check_taps(dy, dx, w)
    if (out.shape[0], out.shape[1], out.shape[2]) != (n, rows, cols):
        raise ValueError("`out` must have the shape of `img`.")
    for k in range(dy.shape[0]):
        if dy[k] < 1:
            raise ValueError("Every memory tap of a 2D kernel must have `dy` >= 1.")
    s0 = <uint64_t><int64_t>index_strides[0]
    s1 = <uint64_t><int64_t>index_strides[1]
    if n * plane == 0:
        return
    tp.c1 = c1
    tp.c2 = c2
    tp.ntap = w.shape[0]
    tp.dx = &dx[0] if tp.ntap else NULL
    tp.w = &w[0] if tp.ntap else NULL
    dyp = &dy[0] if tp.ntap else NULL
    qt.threshold = threshold
    qt.jitter = jitter
    qt.key = key
    qt.xstride = <uint64_t><int64_t>index_strides[2]
    src = &img[0, 0, 0]
    dst = &out[0, 0, 0]
    with nogil:
        _kernel_extent(&tp, dyp, ext)
        qt.t32 = _floor32(threshold)
        nring = ext[1] + 1
        ring = <float*>malloc(2 * nring * cols * sizeof(float))
        srows = <float*>calloc(2 * cols, sizeof(float))
        tp.offs = <int64_t*>malloc((tp.ntap + 1) * sizeof(int64_t))
        tp.tap_ok = <uint8_t*>malloc((tp.ntap + 1) * sizeof(uint8_t))
        try:
            if ring == NULL or srows == NULL or tp.offs == NULL or tp.tap_ok == NULL:
                with gil:
                    raise MemoryError()
            erra = ring
            errb = ring + nring * cols
            srowa = srows
            srowb = srows + cols
            s = 0
            while s < n:
                two = s + 1 < n
                memset(ring, 0, 2 * nring * cols * sizeof(float))
                for y in range(rows):
                    step = -1 if serpentine and y % 2 == 1 else 1
                    base = (y % nring) * cols
                    for k in range(tp.ntap):
                        tp.offs[k] = ((y + dyp[k]) % nring) * cols
                        tp.tap_ok[k] = y + dyp[k] < rows
                    _inner_range(cols, step, ext[2], ext[3], y + ext[1] < rows, &lo, &hi)
                    _segments(cols, step, lo, hi, seg)
                    pa = s * plane + y * cols
                    pb = pa + plane
                    rowa = <uint64_t>index_base + <uint64_t>s * s0 + <uint64_t>y * s1
                    rowb = rowa + s0
                    r1a = 0.0
                    r2a = 0.0
                    _edge_run(src + pa, dst + pa, erra + base, srowa, &tp, seg[0], step, seg[1],
                              cols, &r1a, &r2a, &qt, rowa)
                    if two:
                        r1b = 0.0
                        r2b = 0.0
                        _edge_run(src + pb, dst + pb, errb + base, srowb, &tp, seg[0], step, seg[1],
                                  cols, &r1b, &r2b, &qt, rowb)
                        _inner_run2(src + pa, src + pb, dst + pa, dst + pb, erra + base,
                                    errb + base, srowa, srowb, seg[2], step, seg[3], c1, c2, &r1a,
                                    &r2a, &r1b, &r2b, &qt, rowa, rowb)
                        _edge_run(src + pb, dst + pb, errb + base, srowb, &tp, seg[4], step, seg[5],
                                  cols, &r1b, &r2b, &qt, rowb)
                        _spread(errb, &tp, srowb, step, cols)
                        memset(errb + base, 0, cols * sizeof(float))
                    else:
                        _inner_run(src + pa, dst + pa, erra + base, srowa, seg[2], step, seg[3],
                                   c1, c2, &r1a, &r2a, &qt, rowa)
                    _edge_run(src + pa, dst + pa, erra + base, srowa, &tp, seg[4], step, seg[5],
                              cols, &r1a, &r2a, &qt, rowa)
                    _spread(erra, &tp, srowa, step, cols)
                    memset(erra + base, 0, cols * sizeof(float))
                s += 2
        finally:
            free(ring)
            free(srows)
            free(tp.offs)
            free(tp.tap_ok)


def diffuse_volume(const float[:, :, ::1] vol, uint8_t[:, :, ::1] out, float c1, float c2,
                   const int64_t[::1] dz, const int64_t[::1] dy, const int64_t[::1] dx,
                   const float[::1] w, bint serpentine, double threshold, double jitter,
                   uint64_t key, int64_t index_base, index_strides, Py_ssize_t z0,
                   Py_ssize_t n_slices, const float[:, :, ::1] carry_in, float[:, :, ::1] carry_out):
    """Volumetric error diffusion of the slab ``vol`` (slices z0 .. z0 + n - 1 of n_slices).

    `carry_in` (max(dz), rows, cols) holds the error already sent into this slab's first
    slices; `carry_out` receives the error sent past its end.  The error lives in a ring of
    ``max(dz) + 1`` slices, so memory does not grow with the slab.
    """
    cdef Py_ssize_t n = vol.shape[0], rows = vol.shape[1], cols = vol.shape[2]
    cdef Py_ssize_t plane = rows * cols, nring, dzmax, z, gz, pz, y, k, j, ty, lo, hi, base, p0
    cdef Py_ssize_t step
    cdef Py_ssize_t ext[4]
    cdef Py_ssize_t seg[6]
    cdef uint64_t s0, s1, row
    cdef bint inside
    cdef float r1, r2
    cdef float* ring = NULL
    cdef float* srow = NULL
    cdef const float* src = NULL
    cdef uint8_t* dst = NULL
    cdef const int64_t* dzp
    cdef const int64_t* dyp
    cdef Taps tp
    cdef Quant qt
    _check_taps(dy, dx, w)
    if dz.shape[0] != w.shape[0]:
        raise ValueError("`dz` and `w` must be equally long.")
    if w.shape[0] == 0:
        raise ValueError("A volumetric kernel needs taps into the next slice.")
    if (out.shape[0], out.shape[1], out.shape[2]) != (n, rows, cols):
        raise ValueError("`out` must have the shape of `vol`.")
    dzmax = 0
    for k in range(dz.shape[0]):
        if dz[k] < 0 or (dz[k] == 0 and dy[k] < 1):
            raise ValueError("Memory taps must point at a later row or slice.")
        dzmax = max(dzmax, dz[k])
    if ((carry_in.shape[0], carry_in.shape[1], carry_in.shape[2]) != (dzmax, rows, cols)
            or (carry_out.shape[0], carry_out.shape[1], carry_out.shape[2]) != (dzmax, rows, cols)):
        raise ValueError(f"`carry_in` and `carry_out` must be of shape {(dzmax, rows, cols)}.")
    s0 = <uint64_t><int64_t>index_strides[0]
    s1 = <uint64_t><int64_t>index_strides[1]
    tp.c1 = c1
    tp.c2 = c2
    tp.ntap = w.shape[0]
    tp.dx = &dx[0]
    tp.w = &w[0]
    dzp = &dz[0]
    dyp = &dy[0]
    qt.threshold = threshold
    qt.jitter = jitter
    qt.key = key
    qt.xstride = <uint64_t><int64_t>index_strides[2]
    if plane == 0:
        return
    if n:
        src = &vol[0, 0, 0]
        dst = &out[0, 0, 0]
    with nogil:
        _kernel_extent(&tp, dyp, ext)
        qt.t32 = _floor32(threshold)
        nring = dzmax + 1
        ring = <float*>calloc(nring * plane, sizeof(float))
        srow = <float*>calloc(cols, sizeof(float))
        tp.offs = <int64_t*>malloc((tp.ntap + 1) * sizeof(int64_t))
        tp.tap_ok = <uint8_t*>malloc((tp.ntap + 1) * sizeof(uint8_t))
        try:
            if ring == NULL or srow == NULL or tp.offs == NULL or tp.tap_ok == NULL:
                with gil:
                    raise MemoryError()
            for j in range(dzmax):
                for y in range(rows):
                    for k in range(cols):
                        ring[j * plane + y * cols + k] = carry_in[j, y, k]
            for z in range(n):
                gz = z0 + z
                pz = (z % nring) * plane
                for y in range(rows):
                    step = -1 if serpentine and y % 2 == 1 else 1
                    base = pz + y * cols
                    for k in range(tp.ntap):
                        ty = y + dyp[k]
                        tp.offs[k] = ((z + dzp[k]) % nring) * plane + ty * cols
                        tp.tap_ok[k] = 0 <= ty < rows and gz + dzp[k] < n_slices
                    inside = y + ext[0] >= 0 and y + ext[1] < rows and gz + dzmax < n_slices
                    _inner_range(cols, step, ext[2], ext[3], inside, &lo, &hi)
                    _segments(cols, step, lo, hi, seg)
                    p0 = z * plane + y * cols
                    row = <uint64_t>index_base + <uint64_t>z * s0 + <uint64_t>y * s1
                    r1 = 0.0
                    r2 = 0.0
                    _edge_run(src + p0, dst + p0, ring + base, srow, &tp, seg[0], step, seg[1],
                              cols, &r1, &r2, &qt, row)
                    _inner_run(src + p0, dst + p0, ring + base, srow, seg[2], step, seg[3], c1, c2,
                               &r1, &r2, &qt, row)
                    _edge_run(src + p0, dst + p0, ring + base, srow, &tp, seg[4], step, seg[5],
                              cols, &r1, &r2, &qt, row)
                    _spread(ring, &tp, srow, step, cols)
                memset(ring + pz, 0, plane * sizeof(float))
            for j in range(dzmax):
                pz = ((n + j) % nring) * plane
                for y in range(rows):
                    for k in range(cols):
                        carry_out[j, y, k] = ring[pz + y * cols + k]
        finally:
            free(ring)
            free(srow)
            free(tp.offs)
            free(tp.tap_ok)
