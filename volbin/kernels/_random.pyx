"""Counter-based uniforms: SplitMix64's output function of ``key + (index + 1) * gamma``.

`uniform01` is inline in ``_splitmix.pxd`` so that other kernels (error diffusion's jitter)
draw the very same numbers.  Indices are unsigned 64-bit: arithmetic wraps modulo 2**64.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t

from ._splitmix cimport mix64 as _mix64
from ._splitmix cimport uniform01 as _uniform01


cdef extern from "_simd.h" nogil:
    int vb_init()
    int vb_set_level(int level)
    void vb_uniforms(uint64_t key, uint64_t base, Py_ssize_t n, double* out)
    void vb_bernoulli_vb_f32(uint64_t key, uint64_t base, Py_ssize_t n, const float* p, uint8_t* out)
    void vb_bernoulli_vb_f64(uint64_t key, uint64_t base, Py_ssize_t n, const double* p,
                             uint8_t* out)


#: Vector version of the generator in use: 0 scalar, 1 SSE2, 2 AVX2, 3 AVX-512.
SIMD_LEVEL = vb_init()


def _set_simd_level(int level):
    """Use vector version `level` or the best below it (tests compare every version)."""
    global SIMD_LEVEL
    SIMD_LEVEL = vb_set_level(level)
    return SIMD_LEVEL

ctypedef fused prob_t:
    float
    double


def mix64(uint64_t z):
    """SplitMix64 output function of the 64-bit word `z`."""
    return _mix64(z)


def uniform01(uint64_t key, uint64_t index):
    """The uniform double in [0, 1) for counter `index` under `key`."""
    return _uniform01(key, index)


def uniform_block(uint64_t key, const int64_t[::1] shape4, const int64_t[::1] offset4,
                  double[:, :, :, ::1] out):
    """Fill 4D `out` with uniforms for the block at `offset4` of a C-order array `shape4`."""
    cdef Py_ssize_t n0 = out.shape[0], n1 = out.shape[1], n2 = out.shape[2], n3 = out.shape[3]
    cdef Py_ssize_t i0, i1, i2, i3
    cdef uint64_t s1 = <uint64_t>shape4[1], s2 = <uint64_t>shape4[2], s3 = <uint64_t>shape4[3]
    cdef uint64_t o0 = <uint64_t>offset4[0], o1 = <uint64_t>offset4[1]
    cdef uint64_t o2 = <uint64_t>offset4[2], o3 = <uint64_t>offset4[3]
    cdef uint64_t g1, base
    if n0 * n1 * n2 * n3 == 0:
        return
    with nogil:
        for i0 in range(n0):
            for i1 in range(n1):
                g1 = (o0 + <uint64_t>i0) * s1 + o1 + <uint64_t>i1
                for i2 in range(n2):
                    base = (g1 * s2 + o2 + <uint64_t>i2) * s3 + o3
                    vb_uniforms(key, base, n3, &out[i0, i1, i2, 0])


def bernoulli_block(const prob_t[:, :, :, ::1] p, uint64_t key, const int64_t[::1] shape4,
                    const int64_t[::1] offset4, uint8_t[:, :, :, ::1] out):
    """out = uniform < p for the 4D block `p` at `offset4` of a C-order array `shape4`.

    NaN probabilities give 0.  `out` is the uint8 view of a bool array of `p`'s shape.
    """
    cdef Py_ssize_t n0 = p.shape[0], n1 = p.shape[1], n2 = p.shape[2], n3 = p.shape[3]
    cdef Py_ssize_t i0, i1, i2, i3
    cdef uint64_t s1 = <uint64_t>shape4[1], s2 = <uint64_t>shape4[2], s3 = <uint64_t>shape4[3]
    cdef uint64_t o0 = <uint64_t>offset4[0], o1 = <uint64_t>offset4[1]
    cdef uint64_t o2 = <uint64_t>offset4[2], o3 = <uint64_t>offset4[3]
    cdef uint64_t g1, base
    cdef const prob_t* prow
    cdef uint8_t* orow
    if (out.shape[0], out.shape[1], out.shape[2], out.shape[3]) != (n0, n1, n2, n3):
        raise ValueError("`out` must have the shape of `p`.")
    if n0 * n1 * n2 * n3 == 0:
        return
    with nogil:
        for i0 in range(n0):
            for i1 in range(n1):
                g1 = (o0 + <uint64_t>i0) * s1 + o1 + <uint64_t>i1
                for i2 in range(n2):
                    base = (g1 * s2 + o2 + <uint64_t>i2) * s3 + o3
                    prow = &p[i0, i1, i2, 0]
                    orow = &out[i0, i1, i2, 0]
                    if prob_t is float:
                        vb_bernoulli_vb_f32(key, base, n3, prow, orow)
                    else:
                        vb_bernoulli_vb_f64(key, base, n3, prow, orow)
