"""Error-diffusion loops: 2D slice stacks and volumetric slabs (see volbin._dither_kernels).

Each row is processed in two steps.  A sequential pass quantises its pixels, carrying the
error for the next one or two pixels of the row in registers (``r1``, ``r2``) and writing
the error each pixel diffuses (``srow``, already rescaled at edges) to a row buffer.  A
second pass then adds ``w[k] * srow`` to each tap's target row, tap after tap: plain
vectorisable loops instead of scattered updates inside the dependency chain.  The order of
additions is part of the definition (``tests/reference.py`` follows it).

`diffuse_lanes` runs 16 slices of a 2D stack in lockstep, one per vector lane, reading them
from a view of raw data (any strides and numeric type) and rescaling as it reads;
`load_slab` and `store_slab` stage such views for `diffuse_volume`.

Error arithmetic is float32 and every operation is a single IEEE operation in the type the
comments give (no fused multiply-add, no float64 intermediate unless written): the loops are
bit-identical to ``tests/reference.py``.
"""

from libc.math cimport INFINITY, isfinite, nextafterf
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from ._splitmix cimport uniform01

cdef extern from "_simd.h" nogil:
    enum:
        VB_LANES
    int vb_init()
    int vb_set_level(int level)
    void vb_lanes_inner(const float* a, uint8_t* bits, const float* cur, float* srow, Py_ssize_t x0,
                        Py_ssize_t step, Py_ssize_t count, float c1, float c2, float* r1, float* r2,
                        float t32)
    void vb_rescale(const double* x, float* out, Py_ssize_t n, double lo, double span)
    void vb_axpy(float* y, const float* x, Py_ssize_t n, float w)
    void vb_prefetch(const void* p)
    void vb_prefetchw(void* p)

#: Vector version of the lockstep loops in use (`diffuse_lanes`): 0 scalar, 1 SSE2, 2 AVX2.
SIMD_LEVEL = vb_init()


def _set_simd_level(int level):
    """Use vector version `level` or the best below it (tests compare every version)."""
    global SIMD_LEVEL
    SIMD_LEVEL = vb_set_level(level)
    return SIMD_LEVEL


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
    # Per row: target offsets into the error buffer, whether each tap's row/slice exists, and
    # whether a tap whose row/slice is missing leaves past the end of the scan (its error is
    # then dropped) rather than through a side the scan comes back along.
    int64_t* offs
    uint8_t* tap_ok
    uint8_t* tap_far
    # Raster scan: a tap past the end of the row is dropped too (serpentine rows come back).
    bint raster


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
    """Pixels of one row whose kernel reaches outside: the "scan-end" edge rule.

    Out-of-bounds taps past the end of the scan (``tp.tap_far``, and in raster scans past the
    end of the row) are dropped; the weight of the other out-of-bounds taps (sides the scan
    comes back along) is spread over the in-bounds taps: ``s = e * wkeep / insum``.
    `src`, `dst`, `err` and `srow` point at the row's first pixel; ``tp.tap_ok[k]`` says
    whether tap k's row and slice exist; columns are checked here.  ``*r1p, *r2p`` are the
    current-row error registers, updated for the next pixel.
    """
    cdef float zero = 0.0, one = 1.0, a, v, e, insum, wkeep, r1 = r1p[0], r2 = r2p[0], r1n
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
        wkeep = zero
        allin = True
        if c1 != zero:
            if in1:
                insum = insum + c1
                wkeep = wkeep + c1
            else:
                allin = False
                if not tp.raster:
                    wkeep = wkeep + c1
        if c2 != zero:
            if in2:
                insum = insum + c2
                wkeep = wkeep + c2
            else:
                allin = False
                if not tp.raster:
                    wkeep = wkeep + c2
        for k in range(tp.ntap):
            tx = x + step * tp.dx[k]
            if tp.tap_ok[k] and 0 <= tx < cols:
                insum = insum + tp.w[k]
                wkeep = wkeep + tp.w[k]
            else:
                allin = False
                if not (tp.tap_far[k] or (tp.raster and tx >= cols)):
                    wkeep = wkeep + tp.w[k]
        # The rescaled share is formed in float64 and each product rounded once to float32.
        # With every tap inside this equals the inner loop.
        if allin:
            s = <double>e
        elif insum > zero:
            s = <double>e * (<double>wkeep / <double>insum)
        else:
            s = 0.0  # no unprocessed neighbour: the last pixel of the scan
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
    cdef Py_ssize_t k, d, lo, hi
    for k in range(tp.ntap):
        if not tp.tap_ok[k]:
            continue
        d = step * tp.dx[k]
        lo = -d if -d > 0 else 0
        hi = cols - d if cols - d < cols else cols
        vb_axpy(err + tp.offs[k] + d + lo, srow + lo, hi - lo, tp.w[k])


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
    tp.raster = not serpentine
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
        tp.tap_far = <uint8_t*>malloc((tp.ntap + 1) * sizeof(uint8_t))
        try:
            if (ring == NULL or srows == NULL or tp.offs == NULL or tp.tap_ok == NULL
                    or tp.tap_far == NULL):
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
                        tp.tap_far[k] = not tp.tap_ok[k]  # past the slice's last row
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
            free(tp.tap_far)


def diffuse_volume(const float[:, :, ::1] vol, uint8_t[:, :, ::1] out, float c1, float c2,
                   const int64_t[::1] dz, const int64_t[::1] dy, const int64_t[::1] dx,
                   const float[::1] w, bint serpentine, double threshold, double jitter,
                   uint64_t key, int64_t index_base, index_strides, Py_ssize_t z0,
                   Py_ssize_t n_slices, const float[:, :, ::1] carry_in, float[:, :, ::1] carry_out):
    """Volumetric error diffusion of the slab ``vol`` (slices z0 .. z0 + n - 1 of n_slices).

    `carry_in` (max(dz), rows, cols) holds the error already sent into this slab's first
    slices; `carry_out` receives the error sent past its end.  The error lives in a ring of
    ``max(dz) + 1`` slices, so memory does not grow with the slab.  With `serpentine` the
    scan is the boustrophedon path of ``volbin._dither_kernels``, set by the global slice
    index ``z0 + z``, so any slab size gives the same bytes.
    """
    cdef Py_ssize_t n = vol.shape[0], rows = vol.shape[1], cols = vol.shape[2]
    cdef Py_ssize_t plane = rows * cols, nring, dzmax, z, gz, pz, y, k, j, ty, lo, hi, base, p0
    cdef Py_ssize_t step, ysgn, r
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
    tp.raster = not serpentine
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
        tp.tap_far = <uint8_t*>malloc((tp.ntap + 1) * sizeof(uint8_t))
        try:
            if (ring == NULL or srow == NULL or tp.offs == NULL or tp.tap_ok == NULL
                    or tp.tap_far == NULL):
                with gil:
                    raise MemoryError()
            for j in range(dzmax):
                for y in range(rows):
                    for k in range(cols):
                        ring[j * plane + y * cols + k] = carry_in[j, y, k]
            for z in range(n):
                gz = z0 + z
                pz = (z % nring) * plane
                # Boustrophedon (serpentine): odd slices scan their rows backwards (kernel dy
                # mirrored) and the r-th row of slice gz runs right to left when
                # (gz * rows + r) is odd, so the path is one continuous back-and-forth line.
                ysgn = -1 if serpentine and gz % 2 == 1 else 1
                for r in range(rows):
                    y = r if ysgn == 1 else rows - 1 - r
                    step = -1 if serpentine and (gz * rows + r) % 2 == 1 else 1
                    base = pz + y * cols
                    for k in range(tp.ntap):
                        ty = y + ysgn * dyp[k]
                        tp.offs[k] = ((z + dzp[k]) % nring) * plane + ty * cols
                        tp.tap_ok[k] = 0 <= ty < rows and gz + dzp[k] < n_slices
                        tp.tap_far[k] = gz + dzp[k] >= n_slices or (
                            ty >= rows if ysgn == 1 else ty < 0)
                    if ysgn == 1:
                        inside = y + ext[0] >= 0 and y + ext[1] < rows
                    else:
                        inside = y - ext[1] >= 0 and y - ext[0] < rows
                    inside = inside and gz + dzmax < n_slices
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
            free(tp.tap_far)


# --------------------------------------------------------------------------------------------
# Slabs of raw data in, bits out: what the drivers hand the loops without a pass of their own
# --------------------------------------------------------------------------------------------

from volbin.kernels._blocks cimport real_t as raw_t


cdef inline Py_ssize_t _iabs(Py_ssize_t v) noexcept nogil:
    return -v if v < 0 else v


cdef inline void _loop_order(const Py_ssize_t* inner, const Py_ssize_t* middle,
                             Py_ssize_t* order) noexcept nogil:
    """Loop nesting (outer, middle, inner axes) of a strided copy between two arrays.

    The innermost loop walks the axis of smallest `inner` stride (the side read or written
    element by element); the middle one, of the other two axes, the one of smallest `middle`
    stride, so the other side advances through memory from one inner run to the next (a
    transposed view is then read in cache lines and written in rows).
    """
    cdef Py_ssize_t a, b, c
    c = 0
    for a in range(1, 3):
        if _iabs(inner[a]) < _iabs(inner[c]):
            c = a
    a, b = (1, 2) if c == 0 else ((0, 2) if c == 1 else (0, 1))
    if _iabs(middle[b]) < _iabs(middle[a]):
        a, b = b, a
    order[0], order[1], order[2] = b, a, c


def load_slab(const raw_t[:, :, :] src, float[:, :, ::1] dst, double lo, double span, bint rescale):
    """Fill the float32 slab `dst` from `src` (same shape, any strides and numeric type).

    Without `rescale`, ``dst = float32(src)``.  With it, the linear rescale of
    ``volbin.rescale.Transform.apply``, operation by operation: ``r = (float64(x) - lo) /
    span``, clipped to [0, 1] and rounded once to float32; NaN becomes 0, which is what the
    loops read for it.  The loops walk `src` in its memory order.
    """
    cdef Py_ssize_t n[3]
    cdef Py_ssize_t sst[3]
    cdef Py_ssize_t dst_st[3]
    cdef Py_ssize_t order[3]
    cdef Py_ssize_t i, j, k, n0, n1, n2, s0, s1, s2, d0, d1, d2
    cdef const char* sp
    cdef const raw_t* sj
    cdef float* dp
    cdef float* dj
    cdef double* tmp
    cdef double* t
    cdef float* ftmp
    cdef float* ft
    cdef Py_ssize_t item = sizeof(raw_t)
    if (src.shape[0], src.shape[1], src.shape[2]) != (dst.shape[0], dst.shape[1], dst.shape[2]):
        raise ValueError("`src` and `dst` must have the same shape.")
    if src.shape[0] * src.shape[1] * src.shape[2] == 0:
        return
    for i in range(3):
        n[i] = src.shape[i]
        sst[i] = src.strides[i]
    dst_st[0] = dst.shape[1] * dst.shape[2]
    dst_st[1] = dst.shape[2]
    dst_st[2] = 1
    _loop_order(sst, dst_st, order)
    n0, n1, n2 = n[order[0]], n[order[1]], n[order[2]]
    s0, s1 = sst[order[0]], sst[order[1]]
    s2 = sst[order[2]]  # in bytes
    d0, d1, d2 = dst_st[order[0]], dst_st[order[1]], dst_st[order[2]]
    sp = <const char*>&src[0, 0, 0]
    dp = &dst[0, 0, 0]
    with nogil:
        # One outer step at a time: gather its (middle, inner) block into tmp as doubles,
        # rescale the block in one call, scatter it to dst.
        tmp = <double*>malloc(n1 * n2 * sizeof(double))
        ftmp = <float*>malloc(n1 * n2 * sizeof(float))
        if tmp == NULL or ftmp == NULL:
            free(tmp)
            free(ftmp)
            with gil:
                raise MemoryError()
        for i in range(n0):
            for j in range(n1):
                sj = <const raw_t*>(sp + i * s0 + j * s1)
                t = tmp + j * n2
                if i + 1 < n0 and s2 == item:
                    # Short runs far apart (a transposed view): fetch the next ones early.
                    for k in range(0, n2 * item, 64):
                        vb_prefetch(<const char*>sj + s0 + k)
                if s2 == item:
                    for k in range(n2):
                        t[k] = <double>sj[k]
                else:
                    for k in range(n2):
                        t[k] = <double>(<const raw_t*>(<const char*>sj + k * s2))[0]
            if rescale:
                vb_rescale(tmp, ftmp, n1 * n2, lo, span)  # NaN -> 0
            else:
                for k in range(n1 * n2):
                    ftmp[k] = <float>tmp[k]
            for j in range(n1):
                dj = dp + i * d0 + j * d1
                ft = ftmp + j * n2
                if d2 == 1:
                    for k in range(n2):
                        dj[k] = ft[k]
                else:
                    for k in range(n2):
                        dj[k * d2] = ft[k]
        free(tmp)
        free(ftmp)


def store_slab(const uint8_t[:, :, ::1] src, uint8_t[:, :, :] dst):
    """Copy the uint8 slab `src` into `dst` (same shape, any strides), in `dst`'s memory order."""
    cdef Py_ssize_t n[3]
    cdef Py_ssize_t dst_st[3]
    cdef Py_ssize_t src_st[3]
    cdef Py_ssize_t order[3]
    cdef Py_ssize_t i, j, k, n0, n1, n2, s0, s1, s2, d0, d1, d2
    cdef const uint8_t* sp
    cdef const uint8_t* sj
    cdef char* dp
    cdef char* dj
    if (src.shape[0], src.shape[1], src.shape[2]) != (dst.shape[0], dst.shape[1], dst.shape[2]):
        raise ValueError("`src` and `dst` must have the same shape.")
    if src.shape[0] * src.shape[1] * src.shape[2] == 0:
        return
    for i in range(3):
        n[i] = dst.shape[i]
        dst_st[i] = dst.strides[i]
    src_st[0] = src.shape[1] * src.shape[2]
    src_st[1] = src.shape[2]
    src_st[2] = 1
    _loop_order(dst_st, src_st, order)
    n0, n1, n2 = n[order[0]], n[order[1]], n[order[2]]
    s0, s1, s2 = src_st[order[0]], src_st[order[1]], src_st[order[2]]
    d0, d1, d2 = dst_st[order[0]], dst_st[order[1]], dst_st[order[2]]
    sp = &src[0, 0, 0]
    dp = <char*>&dst[0, 0, 0]
    with nogil:
        for i in range(n0):
            for j in range(n1):
                sj = sp + i * s0 + j * s1
                dj = dp + i * d0 + j * d1
                if i + 1 < n0 and d2 == 1:
                    for k in range(0, n2, 64):
                        vb_prefetchw(dj + d0 + k)
                for k in range(n2):
                    dj[k * d2] = <char>sj[k * s2]


# --------------------------------------------------------------------------------------------
# Sixteen slices in lockstep, one per vector lane
# --------------------------------------------------------------------------------------------
#
# The slices of a 2D diffusion are independent and share their geometry, so `diffuse_lanes`
# runs LANES of them side by side: every buffer holds LANES values per pixel (lane = slice),
# and each step of the scan is a loop over the lanes that the compiler turns into vector
# instructions.  Per lane, the operations are those of `diffuse_slices`, in its order: the
# same bytes.  Rows are read from the raw data (any strides and type, rescaled as
# `load_slab` does) into a small row buffer, and the bits written straight to `out`.

cdef enum:
    LANES = VB_LANES  # slices diffused in lockstep
    PASS = 4  # groups of LANES slices read together when the slices are innermost in memory

#: Slices `diffuse_lanes` diffuses in lockstep (callers cutting a stack cut it in multiples).
LOCKSTEP = LANES


cdef inline void _edge_run_l(const float* a, uint8_t* bits, const float* err, float* srow,
                             const Taps* tp, Py_ssize_t x0, Py_ssize_t step, Py_ssize_t count,
                             Py_ssize_t cols, float* r1, float* r2, const Quant* qt,
                             const uint64_t* rowidx) noexcept nogil:
    """`_edge_run` on LANES slices (buffers hold LANES values per pixel)."""
    cdef float zero = 0.0, one = 1.0, v, e, insum, wkeep, r1n
    cdef float c1 = tp.c1, c2 = tp.c2
    cdef double s, f = 0.0
    cdef Py_ssize_t i, k, x, tx, xo, l
    cdef bint b, in1, in2, allin
    cdef int mode
    for i in range(count):
        x = x0 + step * i
        # The geometry of the pixel, the same in every lane.
        in1 = c1 != zero and 0 <= x + step < cols
        in2 = c2 != zero and 0 <= x + 2 * step < cols
        insum = zero
        wkeep = zero
        allin = True
        if c1 != zero:
            if in1:
                insum = insum + c1
                wkeep = wkeep + c1
            else:
                allin = False
                if not tp.raster:
                    wkeep = wkeep + c1
        if c2 != zero:
            if in2:
                insum = insum + c2
                wkeep = wkeep + c2
            else:
                allin = False
                if not tp.raster:
                    wkeep = wkeep + c2
        for k in range(tp.ntap):
            tx = x + step * tp.dx[k]
            if tp.tap_ok[k] and 0 <= tx < cols:
                insum = insum + tp.w[k]
                wkeep = wkeep + tp.w[k]
            else:
                allin = False
                if not (tp.tap_far[k] or (tp.raster and tx >= cols)):
                    wkeep = wkeep + tp.w[k]
        if allin:
            mode = 0
        elif insum > zero:
            mode = 1
            f = <double>wkeep / <double>insum
        else:
            mode = 2
        xo = x * LANES
        for l in range(LANES):
            v = (a[xo + l] + err[xo + l]) + r1[l]
            b = _above(v, qt.t32, qt.threshold, qt.jitter, qt.key, rowidx[l] + <uint64_t>x * qt.xstride)
            bits[xo + l] = b
            e = v - one if b else v
            if mode == 0:
                s = <double>e
            elif mode == 1:
                s = <double>e * f
            else:
                s = 0.0
            srow[xo + l] = <float>s
            r1n = r2[l] + <float>(<double>c1 * s) if in1 else r2[l]
            r2[l] = <float>(<double>c2 * s) if in2 else zero
            r1[l] = r1n


cdef inline void _inner_run_l(const float* a, uint8_t* bits, const float* cur, float* srow,
                              Py_ssize_t x0, Py_ssize_t step, Py_ssize_t count, float c1, float c2,
                              float* r1p, float* r2p, const Quant* qt,
                              const uint64_t* rowidx) noexcept nogil:
    """`_inner_run` on LANES slices; the output value is subtracted as a float (exact)."""
    cdef float v, e, t32 = qt.t32
    cdef float r1[LANES]
    cdef float r2[LANES]
    cdef Py_ssize_t i, x, xo, l
    cdef bint b
    for l in range(LANES):
        r1[l] = r1p[l]
        r2[l] = r2p[l]
    if qt.jitter == 0.0:
        vb_lanes_inner(a, bits, cur, srow, x0, step, count, c1, c2, r1, r2, t32)
    else:
        for i in range(count):
            x = x0 + step * i
            xo = x * LANES
            for l in range(LANES):
                v = (a[xo + l] + cur[xo + l]) + r1[l]
                b = _above(v, t32, qt.threshold, qt.jitter, qt.key, rowidx[l] + <uint64_t>x * qt.xstride)
                bits[xo + l] = b
                e = v - <float>b
                srow[xo + l] = e
                r1[l] = r2[l] + c1 * e
                r2[l] = c2 * e
    for l in range(LANES):
        r1p[l] = r1[l]
        r2p[l] = r2[l]


cdef inline void _spread_l(float* err, const Taps* tp, const float* srow, Py_ssize_t step,
                           Py_ssize_t cols) noexcept nogil:
    """`_spread` on LANES slices: each tap's update is one flat loop over pixels and lanes."""
    cdef Py_ssize_t k, d, lo, hi
    for k in range(tp.ntap):
        if not tp.tap_ok[k]:
            continue
        d = step * tp.dx[k]
        lo = -d if -d > 0 else 0
        hi = cols - d if cols - d < cols else cols
        vb_axpy(err + tp.offs[k] + (d + lo) * LANES, srow + lo * LANES, (hi - lo) * LANES, tp.w[k])


def diffuse_lanes(const raw_t[:, :, :] src, uint8_t[:, :, :] out, double lo, double span,
                  bint rescale, float c1, float c2, const int64_t[::1] dy, const int64_t[::1] dx,
                  const float[::1] w, bint serpentine, double threshold, double jitter, uint64_t key,
                  int64_t index_base, index_strides):
    """`diffuse_slices` of the slices ``src[i]`` of raw data (any strides), into `out`.

    Each value is read as `load_slab` reads it (``float32(x)``, or with `rescale` the linear
    rescale by `lo` and `span`), non-finite values as 0; `out` (same shape, any strides)
    receives the bits.  LANES slices are diffused in lockstep; the bytes are those of
    `diffuse_slices` on the values as a contiguous float32 stack.  When the slices are the
    innermost axis of `src` in memory, PASS groups of LANES slices advance row by row
    together, so each row of data is read in whole cache lines.
    """
    cdef Py_ssize_t n = src.shape[0], rows = src.shape[1], cols = src.shape[2]
    cdef Py_ssize_t nring, s, y, k, c, l, g, nl, lo_, hi_, base, width, groups, npass, m
    cdef Py_ssize_t ss, sr, sc, os_, or_, oc, item = sizeof(raw_t)
    cdef Py_ssize_t step
    cdef bint across, across_out
    cdef Py_ssize_t ext[4]
    cdef Py_ssize_t seg[6]
    cdef uint64_t s0, s1
    cdef uint64_t rowidx[LANES]
    cdef float r1[LANES]
    cdef float r2[LANES]
    cdef float* ring = NULL
    cdef float* srow = NULL
    cdef float* arow = NULL
    cdef float* frow = NULL
    cdef double* tmp = NULL
    cdef uint8_t* bits = NULL
    cdef float* gring
    cdef float* garow
    cdef uint8_t* gbits
    cdef double* t
    cdef const char* sp
    cdef const char* srcrow
    cdef const raw_t* cell
    cdef char* op
    cdef char* outrow
    cdef char* ocell
    cdef char* outrow_next
    cdef const int64_t* dyp
    cdef double r, zero = 0.0, one = 1.0
    cdef float fv
    cdef Taps tp
    cdef Quant qt
    _check_taps(dy, dx, w)
    if (out.shape[0], out.shape[1], out.shape[2]) != (n, rows, cols):
        raise ValueError("`out` must have the shape of `src`.")
    for k in range(dy.shape[0]):
        if dy[k] < 1:
            raise ValueError("Every memory tap of a 2D kernel must have `dy` >= 1.")
    s0 = <uint64_t><int64_t>index_strides[0]
    s1 = <uint64_t><int64_t>index_strides[1]
    if n * rows * cols == 0:
        return
    tp.c1 = c1
    tp.c2 = c2
    tp.raster = not serpentine
    tp.ntap = w.shape[0]
    tp.dx = &dx[0] if tp.ntap else NULL
    tp.w = &w[0] if tp.ntap else NULL
    dyp = &dy[0] if tp.ntap else NULL
    qt.threshold = threshold
    qt.jitter = jitter
    qt.key = key
    qt.xstride = <uint64_t><int64_t>index_strides[2]
    ss, sr, sc = src.strides[0], src.strides[1], src.strides[2]
    os_, or_, oc = out.strides[0], out.strides[1], out.strides[2]
    sp = <const char*>&src[0, 0, 0]
    op = <char*>&out[0, 0, 0]
    width = cols * LANES
    # Read (write) each pixel's run of slices, or each slice's row: the shorter stride inside.
    across = _iabs(ss) < _iabs(sc)
    across_out = _iabs(os_) < _iabs(oc)
    groups = PASS if across and _iabs(ss) < _iabs(sr) else 1
    with nogil:
        _kernel_extent(&tp, dyp, ext)
        qt.t32 = _floor32(threshold)
        nring = ext[1] + 1
        ring = <float*>malloc(groups * nring * width * sizeof(float))
        srow = <float*>calloc(width, sizeof(float))
        arow = <float*>calloc(groups * width, sizeof(float))
        tmp = <double*>calloc(groups * width, sizeof(double))
        bits = <uint8_t*>calloc(groups * width, sizeof(uint8_t))
        frow = <float*>calloc(cols, sizeof(float))
        tp.offs = <int64_t*>malloc((tp.ntap + 1) * sizeof(int64_t))
        tp.tap_ok = <uint8_t*>malloc((tp.ntap + 1) * sizeof(uint8_t))
        tp.tap_far = <uint8_t*>malloc((tp.ntap + 1) * sizeof(uint8_t))
        try:
            if (ring == NULL or srow == NULL or arow == NULL or tmp == NULL or bits == NULL
                    or frow == NULL or tp.offs == NULL or tp.tap_ok == NULL or tp.tap_far == NULL):
                with gil:
                    raise MemoryError()
            s = 0
            while s < n:
                npass = n - s if n - s < groups * LANES else groups * LANES  # slices this pass
                memset(ring, 0, groups * nring * width * sizeof(float))
                memset(tmp, 0, groups * width * sizeof(double))  # lanes past the last slice read 0
                memset(arow, 0, groups * width * sizeof(float))
                for y in range(rows):
                    step = -1 if serpentine and y % 2 == 1 else 1
                    base = (y % nring) * width
                    for k in range(tp.ntap):
                        tp.offs[k] = ((y + dyp[k]) % nring) * width
                        tp.tap_ok[k] = y + dyp[k] < rows
                        tp.tap_far[k] = not tp.tap_ok[k]  # past the slice's last row
                    _inner_range(cols, step, ext[2], ext[3], y + ext[1] < rows, &lo_, &hi_)
                    _segments(cols, step, lo_, hi_, seg)
                    # Row y of the pass's slices, lane-interleaved: slice s + g * LANES + l at
                    # tmp[g * width + c * LANES + l].
                    srcrow = sp + s * ss + y * sr
                    outrow_next = op + s * os_ + (y + 1) * or_
                    if across:
                        # Each pixel's run of slices, into tmp[g * width + c * LANES + l]; then
                        # the rescale of the whole buffer in one call.
                        for c in range(cols):
                            cell = <const raw_t*>(srcrow + c * sc)
                            if y + 1 < rows and groups > 1:
                                # Each pixel's run of slices is a few cache lines of its own,
                                # too many streams for the hardware's prefetcher: fetch the
                                # next row's while this one is diffused.
                                for m in range(0, npass * item, 64):
                                    vb_prefetch(<const char*>cell + sr + m)
                                vb_prefetchw(outrow_next + c * oc)
                            for g in range(groups):
                                m = npass - g * LANES
                                if m <= 0:
                                    break
                                nl = m if m < LANES else LANES
                                t = tmp + g * width + c * LANES
                                if ss == item:
                                    cell = <const raw_t*>(srcrow + c * sc) + g * LANES
                                    for l in range(nl):
                                        t[l] = <double>cell[l]
                                else:
                                    for l in range(nl):
                                        t[l] = <double>(<const raw_t*>(srcrow + c * sc + (g * LANES + l) * ss))[0]
                        if rescale:
                            vb_rescale(tmp, arow, groups * width, lo, span)  # NaN -> 0
                        else:
                            for k in range(groups * width):
                                fv = <float>tmp[k]
                                arow[k] = fv if isfinite(fv) else <float>zero
                    else:
                        # Each slice's row: converted and rescaled as a row, then spread into its
                        # lane (lanes past the last slice keep the 0 they were given).
                        for m in range(npass):
                            cell = <const raw_t*>(srcrow + m * ss)
                            if y + 1 < rows and sc == item:
                                # LANES rows at once, one per slice: help the prefetcher.
                                for c in range(0, cols * item, 64):
                                    vb_prefetch(<const char*>cell + sr + c)
                                for c in range(0, cols, 64):
                                    vb_prefetchw(outrow_next + m * os_ + c)
                            if sc == item:
                                for c in range(cols):
                                    tmp[c] = <double>cell[c]
                            else:
                                for c in range(cols):
                                    tmp[c] = <double>(<const raw_t*>(srcrow + m * ss + c * sc))[0]
                            if rescale:
                                vb_rescale(tmp, frow, cols, lo, span)  # NaN -> 0
                            else:
                                for c in range(cols):
                                    fv = <float>tmp[c]
                                    frow[c] = fv if isfinite(fv) else <float>zero
                            garow = arow + (m // LANES) * width + m % LANES
                            for c in range(cols):
                                garow[c * LANES] = frow[c]
                    for g in range(groups):
                        if g * LANES >= npass:
                            break
                        gring = ring + g * nring * width
                        garow = arow + g * width
                        gbits = bits + g * width
                        for l in range(LANES):
                            rowidx[l] = (<uint64_t>index_base + <uint64_t>(s + g * LANES + l) * s0
                                         + <uint64_t>y * s1)
                            r1[l] = 0.0
                            r2[l] = 0.0
                        _edge_run_l(garow, gbits, gring + base, srow, &tp, seg[0], step, seg[1], cols,
                                    r1, r2, &qt, rowidx)
                        _inner_run_l(garow, gbits, gring + base, srow, seg[2], step, seg[3], c1, c2,
                                     r1, r2, &qt, rowidx)
                        _edge_run_l(garow, gbits, gring + base, srow, &tp, seg[4], step, seg[5], cols,
                                    r1, r2, &qt, rowidx)
                        _spread_l(gring, &tp, srow, step, cols)
                        memset(gring + base, 0, width * sizeof(float))
                    outrow = op + s * os_ + y * or_
                    if across_out:
                        for c in range(cols):
                            for g in range(groups):
                                m = npass - g * LANES
                                if m <= 0:
                                    break
                                nl = m if m < LANES else LANES
                                ocell = outrow + c * oc + g * LANES * os_
                                gbits = bits + g * width + c * LANES
                                if os_ == 1:
                                    memcpy(ocell, gbits, nl)
                                else:
                                    for l in range(nl):
                                        ocell[l * os_] = <char>gbits[l]
                    else:
                        for m in range(npass):
                            ocell = outrow + m * os_
                            gbits = bits + (m // LANES) * width + m % LANES
                            for c in range(cols):
                                ocell[c * oc] = <char>gbits[c * LANES]
                s += npass
        finally:
            free(ring)
            free(srow)
            free(arow)
            free(tmp)
            free(bits)
            free(frow)
            free(tp.offs)
            free(tp.tap_ok)
            free(tp.tap_far)
