/* Vector versions of the hot inner loops of volbin.kernels, chosen at run time.
 *
 * Every function here computes, lane by lane, exactly the IEEE operations of its scalar
 * version (the "_1" functions, which are the definition): vector code changes how many
 * values are done at once, never a result.  maxpd(a, b) is ``a > b ? a : b`` and minpd(a, b)
 * is ``a < b ? a : b``, as the scalar selections are written.  On x86-64 with GCC or Clang,
 * AVX2 and AVX-512 versions are compiled with target attributes and picked by `vb_init`
 * (CPUID); elsewhere the SSE2 baseline or the scalar code is used.
 */
#ifndef VOLBIN_SIMD_H
#define VOLBIN_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER) && !defined(__cplusplus)
#define inline __inline
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define VB_SSE2 1
#if defined(__GNUC__) || defined(__clang__)
#define VB_DISPATCH 1
#define VB_AVX2 __attribute__((target("avx2")))
#define VB_AVX512 __attribute__((target("avx512f,avx512dq")))
#endif
#endif

/* 0 scalar, 1 SSE2, 2 AVX2, 3 AVX-512 (F and DQ): the best the machine has (vb_best), and
 * the one in use (vb_level, lowered only by tests, to check every version on one machine). */
static int vb_best = 0;
static int vb_level = 0;

/* vb_bytes[m]: the 8 bytes 0/1 of the bits of m (a comparison mask as uint8 booleans). */
static uint64_t vb_bytes[256];

/* vb_lanes[m]: the indices of the set bits of m, ascending, one byte each; vb_nbits[m]: how
 * many (a comparison mask turned into positions without a branch per lane). */
static uint64_t vb_lanes[256];
static uint8_t vb_nbits[256];

static int vb_init(void) {
    for (int m = 0; m < 256; m++) {
        uint64_t b = 0;
        for (int j = 0; j < 8; j++)
            if (m >> j & 1) b |= (uint64_t)1 << (8 * j);
        vb_bytes[m] = b;
        uint64_t l = 0;
        int c = 0;
        for (int j = 0; j < 8; j++)
            if (m >> j & 1) l |= (uint64_t)j << (8 * c++);
        vb_lanes[m] = l;
        vb_nbits[m] = (uint8_t)c;
    }
#if defined(VB_DISPATCH)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        vb_best = 3;
    else if (__builtin_cpu_supports("avx2"))
        vb_best = 2;
    else
        vb_best = 1;
#elif defined(VB_SSE2)
    vb_best = 1;
#else
    vb_best = 0;
#endif
    vb_level = vb_best;
    return vb_level;
}

/* Use version `level` (clipped to 0 .. vb_best); returns the level now in use. */
static int vb_set_level(int level) {
    vb_level = level < 0 ? 0 : (level > vb_best ? vb_best : level);
    return vb_level;
}

/* A hint to bring the cache line of p in (for reading, or for writing): no effect on results. */
static inline void vb_prefetch(const void *p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 0, 3);
#elif defined(VB_SSE2)
    _mm_prefetch((const char *)p, _MM_HINT_T0);
#else
    (void)p;
#endif
}

/* vb_prefetch of each cache line of the row of `bytes` that starts `ahead` bytes after p,
 * where that is before `end`: row loops whose rows are too short for the hardware
 * prefetcher to run ahead (a few hundred values) ask for a later row while they count the
 * current one. */
static inline void vb_prefetch_ahead(const void *p, ptrdiff_t bytes, ptrdiff_t ahead, const void *end) {
    uintptr_t q = (uintptr_t)p + (uintptr_t)ahead, e = (uintptr_t)end;
    if (bytes > 8192 || q >= e) return;
    if ((uintptr_t)bytes > e - q) bytes = (ptrdiff_t)(e - q);
    for (ptrdiff_t o = 0; o < bytes; o += 64) vb_prefetch((const void *)(q + (uintptr_t)o));
}

/* The address `ahead` bytes after p, for a prefetch hint only: computed as an integer, since
 * it may lie past the end of the buffer (a hint there is harmless, a pointer is not). */
static inline const void *vb_ahead(const void *p, ptrdiff_t ahead) {
    return (const void *)((uintptr_t)p + (uintptr_t)ahead);
}

/* Bytes ahead of its position that a long vector loop asks the cache for (a hint only). */
#ifndef VB_AHEAD
#define VB_AHEAD 2048
#endif

static inline void vb_prefetchw(void *p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 1, 3);
#elif defined(VB_SSE2)
    _mm_prefetch((const char *)p, _MM_HINT_T0);
#else
    (void)p;
#endif
}

/* ---------------------------------------------------------------------------------------
 * Histogram bins of a row of doubles (see _histogram.pyx, _row_bins).
 * ------------------------------------------------------------------------------------- */

typedef struct {
    double a, nm, s, flast, fnb, up_ok;
} vb_bins_t;

/* np.histogram's bin of fv among the edges k * s + a, clipped to [0, flast]; fnb (the
 * number of bins) for a non-finite fv.  up_ok is 1 if s > 0, else 0.  A NaN position (a
 * non-finite fv, or s == 0 with fv - a overflowing) is taken as 0 before the conversion. */
static inline int32_t vb_bin(double fv, double a, double nm, double s, double flast, double fnb,
                             double up_ok) {
    double t = (fv - a) * nm;
    t = t > 0.0 ? t : 0.0;
    t = t < flast ? t : flast;
    double kf = (double)(int32_t)t;
    double dn = kf > 0.0 ? 1.0 : 0.0;
    dn = fv < kf * s + a ? dn : 0.0;
    double up = kf < flast ? up_ok : 0.0;
    up = fv >= (kf + 1.0) * s + a ? up : 0.0;
    kf = (kf - dn) + up;
    return (int32_t)((fv - fv) == 0.0 ? kf : fnb);
}

static inline int32_t vb_bin_1(double fv, const vb_bins_t *p) {
    return vb_bin(fv, p->a, p->nm, p->s, p->flast, p->fnb, p->up_ok);
}

/* The vector loops below first take the truncated position k of t = (fv - a) * nm as the
 * bin; vb_bin's corrections can only move it when t lies within `slack` of an integer, so
 * a vector whose every lane has t - k in [slack, 1 - slack] is stored as it is, and any
 * other (a lane near an edge, clipped, or not finite) gets vb_bin's arithmetic.  With u
 * the unit roundoff, the computed t is (fv - a) / s within 4.02u * |t| (the roundings of
 * fv - a, of the product, of nm and of s), and an edge k * s + a is k within
 * 2.01u * |k| + u * |a| / s in the same units; |t| <= fnb + 1 and |k| <= fnb where it
 * matters, so twice the sum is a safe bound.  A range so far from 0 for its width that the
 * slack reaches 1/4, or so narrow that k * s could be subnormal (where roundings are no
 * longer relative), always takes vb_bin's arithmetic. */
static inline double vb_bins_slack(const vb_bins_t *p) {
    const double u = 1.1102230246251565e-16; /* 2**-53 */
    if (!(p->s >= 1e-290)) return 1.0;
    double d = 16.0 * u * (p->fnb + 2.0) + 4.0 * u * fabs(p->a) / p->s;
    return d < 0.25 ? d : 1.0;
}

/* Loads of 2, 4 or 8 values of each input type as doubles (exact conversions). */
#if defined(VB_SSE2)
#define VB_L2_f64(p) _mm_loadu_pd(p)
#define VB_L2_f32(p) _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(p))))
#define VB_L2_i32(p) _mm_cvtepi32_pd(_mm_loadl_epi64((const __m128i *)(p)))
static inline __m128d vb_l2_16(const void *p, int is_signed) {
    uint32_t w;
    memcpy(&w, p, 4);
    __m128i v = _mm_cvtsi32_si128((int)w);
    v = is_signed ? _mm_srai_epi32(_mm_unpacklo_epi16(v, v), 16) : _mm_unpacklo_epi16(v, _mm_setzero_si128());
    return _mm_cvtepi32_pd(v);
}
static inline __m128d vb_l2_u8(const uint8_t *p) {
    return _mm_set_pd((double)p[1], (double)p[0]);
}
#define VB_L2_i16(p) vb_l2_16(p, 1)
#define VB_L2_u16(p) vb_l2_16(p, 0)
#define VB_L2_u8(p) vb_l2_u8(p)
#endif
#if defined(VB_DISPATCH)
#define VB_L4_f64(p) _mm256_loadu_pd(p)
#define VB_L4_f32(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define VB_L4_i32(p) _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i *)(p)))
#define VB_L4_i16(p) _mm256_cvtepi32_pd(_mm_cvtepi16_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define VB_L4_u16(p) _mm256_cvtepi32_pd(_mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define VB_L4_u8(p) _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(vb_load32(p))))
#define VB_L8_f64(p) _mm512_loadu_pd(p)
#define VB_L8_f32(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
#define VB_L8_i32(p) _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i *)(p)))
#define VB_L8_i16(p) _mm512_cvtepi32_pd(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define VB_L8_u16(p) _mm512_cvtepi32_pd(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define VB_L8_u8(p) _mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
static inline int vb_load32(const uint8_t *p) {
    int32_t w;
    memcpy(&w, p, 4);
    return w;
}
#endif

typedef double vb_t_f64;
typedef float vb_t_f32;
typedef int32_t vb_t_i32;
typedef int16_t vb_t_i16;
typedef uint16_t vb_t_u16;
typedef uint8_t vb_t_u8;

#if defined(VB_SSE2)
#define VB_BINS_SSE2(T)                                                                          \
    static void vb_bins_##T##_sse2(const vb_t_##T *x, ptrdiff_t n, const vb_bins_t *p, int32_t *idx) { \
        const __m128d A = _mm_set1_pd(p->a), NM = _mm_set1_pd(p->nm), S = _mm_set1_pd(p->s);    \
        const __m128d FL = _mm_set1_pd(p->flast), FN = _mm_set1_pd(p->fnb);                      \
        const __m128d UP = _mm_set1_pd(p->up_ok), ONE = _mm_set1_pd(1.0), Z = _mm_setzero_pd();  \
        ptrdiff_t i = 0;                                                                         \
        for (; i + 2 <= n; i += 2) {                                                             \
            __m128d v = VB_L2_##T(x + i);                                                        \
            __m128d t = _mm_min_pd(_mm_max_pd(_mm_mul_pd(_mm_sub_pd(v, A), NM), Z), FL);         \
            __m128d kf = _mm_cvtepi32_pd(_mm_cvttpd_epi32(t));                                   \
            __m128d e0 = _mm_add_pd(_mm_mul_pd(kf, S), A);                                       \
            __m128d e1 = _mm_add_pd(_mm_mul_pd(_mm_add_pd(kf, ONE), S), A);                      \
            __m128d dn = _mm_and_pd(_mm_and_pd(_mm_cmplt_pd(v, e0), _mm_cmpgt_pd(kf, Z)), ONE);  \
            __m128d up = _mm_and_pd(_mm_and_pd(_mm_cmpge_pd(v, e1), _mm_cmplt_pd(kf, FL)), UP);  \
            kf = _mm_add_pd(_mm_sub_pd(kf, dn), up);                                             \
            __m128d fin = _mm_cmpeq_pd(_mm_sub_pd(v, v), Z);                                     \
            kf = _mm_or_pd(_mm_and_pd(fin, kf), _mm_andnot_pd(fin, FN));                         \
            _mm_storel_epi64((__m128i *)(idx + i), _mm_cvttpd_epi32(kf));                        \
        }                                                                                        \
        for (; i < n; i++) idx[i] = vb_bin_1((double)x[i], p);                                   \
    }
#else
#define VB_BINS_SSE2(T)
#endif

#if defined(VB_DISPATCH)
#define VB_BINS_VEC(T)                                                                           \
    VB_AVX2 static void vb_bins_##T##_avx2(const vb_t_##T *x, ptrdiff_t n, const vb_bins_t *p,   \
                                           int32_t *idx) {                                       \
        const __m256d A = _mm256_set1_pd(p->a), NM = _mm256_set1_pd(p->nm);                     \
        const __m256d S = _mm256_set1_pd(p->s), FL = _mm256_set1_pd(p->flast);                   \
        const __m256d FN = _mm256_set1_pd(p->fnb), UP = _mm256_set1_pd(p->up_ok);                \
        const __m256d ONE = _mm256_set1_pd(1.0), Z = _mm256_setzero_pd();                        \
        const double slack = vb_bins_slack(p);                                                   \
        const __m256d D0 = _mm256_set1_pd(slack), D1 = _mm256_set1_pd(1.0 - slack);             \
        ptrdiff_t i = 0;                                                                         \
        for (; i + 4 <= n; i += 4) {                                                             \
            __m256d v = VB_L4_##T(x + i);                                                        \
            __m256d tu = _mm256_mul_pd(_mm256_sub_pd(v, A), NM);                                 \
            __m256d t = _mm256_min_pd(_mm256_max_pd(tu, Z), FL);                                 \
            __m128i ki = _mm256_cvttpd_epi32(t);                                                 \
            __m256d kf = _mm256_cvtepi32_pd(ki);                                                 \
            __m256d fr = _mm256_sub_pd(tu, kf);                                                  \
            if (_mm256_movemask_pd(_mm256_and_pd(_mm256_cmp_pd(fr, D0, _CMP_GE_OQ),              \
                                                 _mm256_cmp_pd(fr, D1, _CMP_LE_OQ))) == 15) {    \
                _mm_storeu_si128((__m128i *)(idx + i), ki);                                      \
                continue;                                                                        \
            }                                                                                    \
            __m256d e0 = _mm256_add_pd(_mm256_mul_pd(kf, S), A);                                 \
            __m256d e1 = _mm256_add_pd(_mm256_mul_pd(_mm256_add_pd(kf, ONE), S), A);             \
            __m256d dn = _mm256_and_pd(                                                          \
                _mm256_and_pd(_mm256_cmp_pd(v, e0, _CMP_LT_OQ), _mm256_cmp_pd(kf, Z, _CMP_GT_OQ)), ONE); \
            __m256d up = _mm256_and_pd(                                                          \
                _mm256_and_pd(_mm256_cmp_pd(v, e1, _CMP_GE_OQ), _mm256_cmp_pd(kf, FL, _CMP_LT_OQ)), UP); \
            kf = _mm256_add_pd(_mm256_sub_pd(kf, dn), up);                                       \
            __m256d fin = _mm256_cmp_pd(_mm256_sub_pd(v, v), Z, _CMP_EQ_OQ);                     \
            kf = _mm256_blendv_pd(FN, kf, fin);                                                  \
            _mm_storeu_si128((__m128i *)(idx + i), _mm256_cvttpd_epi32(kf));                     \
        }                                                                                        \
        for (; i < n; i++) idx[i] = vb_bin_1((double)x[i], p);                                   \
    }                                                                                            \
    VB_AVX512 static void vb_bins_##T##_avx512(const vb_t_##T *x, ptrdiff_t n, const vb_bins_t *p, \
                                               int32_t *idx) {                                   \
        const __m512d A = _mm512_set1_pd(p->a), NM = _mm512_set1_pd(p->nm);                     \
        const __m512d S = _mm512_set1_pd(p->s), FL = _mm512_set1_pd(p->flast);                   \
        const __m512d FN = _mm512_set1_pd(p->fnb), UP = _mm512_set1_pd(p->up_ok);                \
        const __m512d ONE = _mm512_set1_pd(1.0), Z = _mm512_setzero_pd();                        \
        const double slack = vb_bins_slack(p);                                                   \
        const __m512d D0 = _mm512_set1_pd(slack), D1 = _mm512_set1_pd(1.0 - slack);             \
        ptrdiff_t i = 0;                                                                         \
        for (; i + 8 <= n; i += 8) {                                                             \
            __m512d v = VB_L8_##T(x + i);                                                        \
            __m512d tu = _mm512_mul_pd(_mm512_sub_pd(v, A), NM);                                 \
            __m512d t = _mm512_min_pd(_mm512_max_pd(tu, Z), FL);                                 \
            __m256i ki = _mm512_cvttpd_epi32(t);                                                 \
            __m512d kf = _mm512_cvtepi32_pd(ki);                                                 \
            __m512d fr = _mm512_sub_pd(tu, kf);                                                  \
            if ((__mmask8)(_mm512_cmp_pd_mask(fr, D0, _CMP_GE_OQ) & _mm512_cmp_pd_mask(fr, D1, _CMP_LE_OQ)) \
                == 0xFF) {                                                                       \
                _mm256_storeu_si256((__m256i *)(idx + i), ki);                                   \
                continue;                                                                        \
            }                                                                                    \
            __m512d e0 = _mm512_add_pd(_mm512_mul_pd(kf, S), A);                                 \
            __m512d e1 = _mm512_add_pd(_mm512_mul_pd(_mm512_add_pd(kf, ONE), S), A);             \
            __mmask8 dn = _mm512_cmp_pd_mask(v, e0, _CMP_LT_OQ) & _mm512_cmp_pd_mask(kf, Z, _CMP_GT_OQ); \
            __mmask8 up = _mm512_cmp_pd_mask(v, e1, _CMP_GE_OQ) & _mm512_cmp_pd_mask(kf, FL, _CMP_LT_OQ); \
            kf = _mm512_add_pd(_mm512_sub_pd(kf, _mm512_maskz_mov_pd(dn, ONE)), _mm512_maskz_mov_pd(up, UP)); \
            __mmask8 fin = _mm512_cmp_pd_mask(_mm512_sub_pd(v, v), Z, _CMP_EQ_OQ);               \
            kf = _mm512_mask_blend_pd(fin, FN, kf);                                              \
            _mm256_storeu_si256((__m256i *)(idx + i), _mm512_cvttpd_epi32(kf));                  \
        }                                                                                        \
        for (; i < n; i++) idx[i] = vb_bin_1((double)x[i], p);                                   \
    }
#define VB_BINS_DISPATCH(T)                                                                      \
    if (vb_level >= 3) { vb_bins_##T##_avx512(x, n, p, idx); return; }                           \
    if (vb_level == 2) { vb_bins_##T##_avx2(x, n, p, idx); return; }
#else
#define VB_BINS_VEC(T)
#define VB_BINS_DISPATCH(T)
#endif
#if defined(VB_SSE2)
#define VB_BINS_DISPATCH_SSE2(T)                                                                 \
    if (vb_level == 1) { vb_bins_##T##_sse2(x, n, p, idx); return; }
#else
#define VB_BINS_DISPATCH_SSE2(T)
#endif

/* idx[i] = vb_bin_1(x[i], p) for i < n, for x of type T. */
#define VB_BINS(T)                                                                               \
    VB_BINS_SSE2(T)                                                                              \
    VB_BINS_VEC(T)                                                                               \
    static inline void vb_bins_##T(const vb_t_##T *x, ptrdiff_t n, const vb_bins_t *p, int32_t *idx) { \
        VB_BINS_DISPATCH(T)                                                                      \
        VB_BINS_DISPATCH_SSE2(T)                                                                 \
        for (ptrdiff_t i = 0; i < n; i++) idx[i] = vb_bin_1((double)x[i], p);                    \
    }
VB_BINS(f64)
VB_BINS(f32)
VB_BINS(i32)
VB_BINS(i16)
VB_BINS(u16)
VB_BINS(u8)

/* ---------------------------------------------------------------------------------------
 * Histograms of equalised values (see _tone.pyx).
 *
 * The curve is linear between equally spaced knots: a value's knot interval is
 * k = (int)clamp((fv - e0) * scale, 0, last), NaN taken as 0, and its equalised value
 * float32(a + frac * (b - a)) with a, b the curve's values at knots k and k + 1 and
 * frac = clamp(s - k, 0, 1).  table[k] is the bin of every value of interval k when the
 * interval's image lies in one bin, else -1, and bit k of `bits` is set iff table[k] < 0.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    double e0, scale, last;        /* the knots */
    const double *values;          /* the curve at the knots (last + 2 of them) */
    const int32_t *table;          /* per knot interval: its values' bin, or -1 */
    const uint32_t *bits;          /* per knot interval: table[k] < 0, a bit each */
    double lo, step, norm, flast, up_ok;  /* the equalised histogram's bins, as vb_bin's */
    int32_t sink;                  /* the number of bins: an index that counts nothing */
} vb_eq_t;

/* The bin of the equalised value at position frac (in [0, 1]) of knot interval k:
 * np.histogram's assignment (vb_bin's arithmetic; the floor of the clamped position, >= 0,
 * is its truncation); vb_eq_bin_1 is that of the value fv in interval k. */
static inline int32_t vb_eq_bin_at(double frac, int32_t k, const vb_eq_t *q) {
    double a = q->values[k];
    double r = (double)(float)(a + frac * (q->values[k + 1] - a));
    double t = (r - q->lo) * q->norm;
    /* Clamped as vb_bin clamps, so that a NaN position (r == lo with norm overflowing to
     * inf, or an infinite lo) is taken as 0 there too: ``0.0 > t ? 0.0 : t`` would keep
     * it, and its conversion would give a bin far outside the counts. */
    t = t > 0.0 ? t : 0.0;
    t = t < q->flast ? t : q->flast;
    double kf = (double)(int32_t)t;
    double dn = (r < kf * q->step + q->lo && kf > 0.0) ? 1.0 : 0.0;
    double up = (r >= (kf + 1.0) * q->step + q->lo && kf < q->flast) ? 1.0 : 0.0;
    return (int32_t)(kf - dn + up * q->up_ok);
}

static inline int32_t vb_eq_bin_1(double fv, int32_t k, const vb_eq_t *q) {
    double s = (fv - q->e0) * q->scale;
    s = s != s ? 0.0 : s;
    double frac = s - (double)k;
    frac = 0.0 > frac ? 0.0 : frac;
    frac = 1.0 < frac ? 1.0 : frac;
    return vb_eq_bin_at(frac, k, q);
}

/* The knot interval of fv. */
static inline int32_t vb_eq_knot_1(double fv, const vb_eq_t *q) {
    double u = (fv - q->e0) * q->scale;
    u = u > 0.0 ? u : 0.0;
    u = u < q->last ? u : q->last;
    return (int32_t)u;
}

/* Values a fine histogram does not settle (_tone.pyx, equalized_corrections).
 *
 * p gives the fine histogram's bins (as vb_bin_1 assigns them, over the same number of
 * intervals as the knots).  A value is settled when it is finite, the np.histogram
 * corrections of vb_bin_1 do not move it, its truncated fine position is its knot interval
 * k and table[k] >= 0: its fine bin then counts it in the right bin.  For the i-th other
 * value of the row, add[i] gets the bin of its equalised value (sink for NaN) and sub[i] the
 * bin its fine bin counted it in (sink if none: a non-finite value, or table < 0); the count
 * is returned.  add and sub have room for n + 8 entries (the vector versions store a vector
 * of positions at a time); every version writes the same entries. */
static inline int vb_eq_unsettled_1(double fv, const vb_bins_t *p, const vb_eq_t *q) {
    double t = (fv - p->a) * p->nm;
    t = t > 0.0 ? t : 0.0;
    t = t < p->flast ? t : p->flast;
    int32_t kt = (int32_t)t;
    double kf = (double)kt;
    int32_t k = vb_eq_knot_1(fv, q);
    int dn = kf > 0.0 && fv < kf * p->s + p->a;
    int up = kf < p->flast && p->up_ok != 0.0 && fv >= (kf + 1.0) * p->s + p->a;
    int bad = !((fv - fv) == 0.0);
    return dn | up | bad | (kt != k) | (int)((q->bits[k >> 5] >> (k & 31)) & 1u);
}

/* The entries of an unsettled value: its bin, and its fine bin's. */
static inline void vb_eq_entries_1(double fv, const vb_bins_t *p, const vb_eq_t *q, int32_t *add,
                                   int32_t *sub) {
    int32_t k = vb_eq_knot_1(fv, q), b = q->table[k];
    *add = fv != fv ? q->sink : (b >= 0 ? b : vb_eq_bin_1(fv, k, q));
    if ((fv - fv) == 0.0) {
        int32_t kh = vb_bin_1(fv, p);
        *sub = q->table[kh] >= 0 ? q->table[kh] : q->sink;
    } else {
        *sub = q->sink;
    }
}

/* add[i], sub[i] for the unsettled values at positions add[i] (i < c) of x, in place. */
#define VB_EQ_ENTRIES(T)                                                                         \
    static inline void vb_eq_entries_##T(const vb_t_##T *x, ptrdiff_t c, const vb_bins_t *p,    \
                                         const vb_eq_t *q, int32_t *add, int32_t *sub) {         \
        for (ptrdiff_t j = 0; j < c; j++) vb_eq_entries_1((double)x[add[j]], p, q, add + j, sub + j); \
    }

#if defined(VB_DISPATCH)
#define VB_EQ_UNSETTLED_VEC(T)                                                                   \
    VB_AVX2 static ptrdiff_t vb_eq_unsettled_##T##_avx2(const vb_t_##T *x, ptrdiff_t n,         \
                                                        const vb_bins_t *p, const vb_eq_t *q,    \
                                                        int32_t *pos) {                          \
        const __m256d A = _mm256_set1_pd(p->a), NM = _mm256_set1_pd(p->nm);                     \
        const __m256d KA = _mm256_set1_pd(q->e0), KS = _mm256_set1_pd(q->scale);                 \
        const __m256d S = _mm256_set1_pd(p->s), FL = _mm256_set1_pd(p->flast);                   \
        const __m256d ONE = _mm256_set1_pd(1.0), Z = _mm256_setzero_pd();                        \
        const __m256d UP = p->up_ok != 0.0 ? _mm256_castsi256_pd(_mm256_set1_epi32(-1)) : Z;     \
        const __m128i LOW = _mm_set1_epi32(31), BIT = _mm_set1_epi32(1);                         \
        ptrdiff_t i = 0, c = 0;                                                                  \
        for (; i + 4 <= n; i += 4) {                                                             \
            __m256d v = VB_L4_##T(x + i);                                                        \
            __m256d t = _mm256_min_pd(_mm256_max_pd(_mm256_mul_pd(_mm256_sub_pd(v, A), NM), Z), FL); \
            __m256d u = _mm256_min_pd(_mm256_max_pd(_mm256_mul_pd(_mm256_sub_pd(v, KA), KS), Z), FL); \
            __m128i kt = _mm256_cvttpd_epi32(t), ki = _mm256_cvttpd_epi32(u);                    \
            __m256d kf = _mm256_cvtepi32_pd(kt);                                                 \
            __m256d e0 = _mm256_add_pd(_mm256_mul_pd(kf, S), A);                                 \
            __m256d e1 = _mm256_add_pd(_mm256_mul_pd(_mm256_add_pd(kf, ONE), S), A);             \
            __m256d dn = _mm256_and_pd(_mm256_cmp_pd(v, e0, _CMP_LT_OQ), _mm256_cmp_pd(kf, Z, _CMP_GT_OQ)); \
            __m256d up = _mm256_and_pd(_mm256_and_pd(_mm256_cmp_pd(v, e1, _CMP_GE_OQ),           \
                                                     _mm256_cmp_pd(kf, FL, _CMP_LT_OQ)), UP);    \
            __m256d bad = _mm256_cmp_pd(_mm256_sub_pd(v, v), Z, _CMP_NEQ_UQ);                    \
            __m128i w = _mm_i32gather_epi32((const int *)q->bits, _mm_srli_epi32(ki, 5), 4);     \
            __m128i b = _mm_and_si128(_mm_srlv_epi32(w, _mm_and_si128(ki, LOW)), BIT);           \
            __m128i other = _mm_xor_si128(_mm_cmpeq_epi32(kt, ki), _mm_set1_epi32(-1));          \
            int m = _mm256_movemask_pd(_mm256_or_pd(_mm256_or_pd(dn, up), bad))                  \
                    | _mm_movemask_ps(_mm_castsi128_ps(_mm_or_si128(_mm_slli_epi32(b, 31), other))); \
            __m128i at = _mm_cvtepu8_epi32(_mm_cvtsi32_si128((int)(uint32_t)vb_lanes[m]));      \
            _mm_storeu_si128((__m128i *)(pos + c), _mm_add_epi32(at, _mm_set1_epi32((int)i)));  \
            c += vb_nbits[m];                                                                    \
        }                                                                                        \
        for (; i < n; i++)                                                                       \
            if (vb_eq_unsettled_1((double)x[i], p, q)) pos[c++] = (int32_t)i;                    \
        return c;                                                                                \
    }                                                                                            \
    VB_AVX512 static ptrdiff_t vb_eq_unsettled_##T##_avx512(const vb_t_##T *x, ptrdiff_t n,     \
                                                            const vb_bins_t *p, const vb_eq_t *q, \
                                                            int32_t *pos) {                      \
        const __m512d A = _mm512_set1_pd(p->a), NM = _mm512_set1_pd(p->nm);                     \
        const __m512d KA = _mm512_set1_pd(q->e0), KS = _mm512_set1_pd(q->scale);                 \
        const __m512d S = _mm512_set1_pd(p->s), FL = _mm512_set1_pd(p->flast);                   \
        const __m512d ONE = _mm512_set1_pd(1.0), Z = _mm512_setzero_pd();                        \
        const __mmask8 UP = p->up_ok != 0.0 ? 0xFF : 0;                                          \
        const __m256i LOW = _mm256_set1_epi32(31), BIT = _mm256_set1_epi32(1);                   \
        const __m256i ALL = _mm256_set1_epi32(-1);                                               \
        ptrdiff_t i = 0, c = 0;                                                                  \
        for (; i + 8 <= n; i += 8) {                                                             \
            __m512d v = VB_L8_##T(x + i);                                                        \
            __m512d t = _mm512_min_pd(_mm512_max_pd(_mm512_mul_pd(_mm512_sub_pd(v, A), NM), Z), FL); \
            __m512d u = _mm512_min_pd(_mm512_max_pd(_mm512_mul_pd(_mm512_sub_pd(v, KA), KS), Z), FL); \
            __m256i kt = _mm512_cvttpd_epi32(t), ki = _mm512_cvttpd_epi32(u);                    \
            __m512d kf = _mm512_cvtepi32_pd(kt);                                                 \
            __m512d e0 = _mm512_add_pd(_mm512_mul_pd(kf, S), A);                                 \
            __m512d e1 = _mm512_add_pd(_mm512_mul_pd(_mm512_add_pd(kf, ONE), S), A);             \
            __mmask8 dn = _mm512_cmp_pd_mask(v, e0, _CMP_LT_OQ) & _mm512_cmp_pd_mask(kf, Z, _CMP_GT_OQ); \
            __mmask8 up = _mm512_cmp_pd_mask(v, e1, _CMP_GE_OQ) & _mm512_cmp_pd_mask(kf, FL, _CMP_LT_OQ) & UP; \
            __mmask8 bad = _mm512_cmp_pd_mask(_mm512_sub_pd(v, v), Z, _CMP_NEQ_UQ);              \
            __m256i w = _mm256_i32gather_epi32((const int *)q->bits, _mm256_srli_epi32(ki, 5), 4); \
            __m256i b = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_and_si256(ki, LOW)), BIT);  \
            __m256i other = _mm256_xor_si256(_mm256_cmpeq_epi32(kt, ki), ALL);                   \
            unsigned m = (unsigned)(dn | up | bad)                                               \
                         | (unsigned)_mm256_movemask_ps(                                         \
                             _mm256_castsi256_ps(_mm256_or_si256(_mm256_slli_epi32(b, 31), other))); \
            __m256i at = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)vb_lanes[m]));       \
            _mm256_storeu_si256((__m256i *)(pos + c), _mm256_add_epi32(at, _mm256_set1_epi32((int)i))); \
            c += vb_nbits[m];                                                                    \
        }                                                                                        \
        for (; i < n; i++)                                                                       \
            if (vb_eq_unsettled_1((double)x[i], p, q)) pos[c++] = (int32_t)i;                    \
        return c;                                                                                \
    }
/* When the knots are the fine bins' edges (same origin, scale and last interval: the fine
 * path of equalized_histograms), a value's knot interval is its truncated fine position,
 * and the rounding bound of vb_bins_slack shows which values vb_bin_1 cannot move: the
 * positions of the others and of those in a straddling interval are stored.  That is a
 * superset of the values vb_eq_unsettled_1 selects (a settled value among them gets the same
 * bin as its fine bin's, so that its entries cancel), found with fewer operations. */
#define VB_EQ_CANDIDATES_VEC(T)                                                                  \
    VB_AVX2 static ptrdiff_t vb_eq_candidates_##T##_avx2(const vb_t_##T *x, ptrdiff_t n,        \
                                                         const vb_bins_t *p, const vb_eq_t *q,   \
                                                         int32_t *pos) {                         \
        const __m256d A = _mm256_set1_pd(p->a), NM = _mm256_set1_pd(p->nm);                     \
        const __m256d FL = _mm256_set1_pd(p->flast), Z = _mm256_setzero_pd();                   \
        const double slack = vb_bins_slack(p);                                                   \
        const __m256d D0 = _mm256_set1_pd(slack), D1 = _mm256_set1_pd(1.0 - slack);             \
        const __m128i LOW = _mm_set1_epi32(31), BIT = _mm_set1_epi32(1);                         \
        ptrdiff_t i = 0, c = 0;                                                                  \
        for (; i + 4 <= n; i += 4) {                                                             \
            vb_prefetch(vb_ahead(x + i, VB_AHEAD));                                             \
            __m256d v = VB_L4_##T(x + i);                                                        \
            __m256d tu = _mm256_mul_pd(_mm256_sub_pd(v, A), NM);                                 \
            __m128i kt = _mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(tu, Z), FL));           \
            __m256d fr = _mm256_sub_pd(tu, _mm256_cvtepi32_pd(kt));                              \
            __m256d ok = _mm256_and_pd(_mm256_cmp_pd(fr, D0, _CMP_GE_OQ), _mm256_cmp_pd(fr, D1, _CMP_LE_OQ)); \
            __m128i w = _mm_i32gather_epi32((const int *)q->bits, _mm_srli_epi32(kt, 5), 4);     \
            __m128i b = _mm_and_si128(_mm_srlv_epi32(w, _mm_and_si128(kt, LOW)), BIT);           \
            int m = (_mm256_movemask_pd(ok) ^ 15) | _mm_movemask_ps(_mm_castsi128_ps(_mm_slli_epi32(b, 31))); \
            __m128i at = _mm_cvtepu8_epi32(_mm_cvtsi32_si128((int)(uint32_t)vb_lanes[m]));      \
            _mm_storeu_si128((__m128i *)(pos + c), _mm_add_epi32(at, _mm_set1_epi32((int)i)));  \
            c += vb_nbits[m];                                                                    \
        }                                                                                        \
        for (; i < n; i++)                                                                       \
            if (vb_eq_unsettled_1((double)x[i], p, q)) pos[c++] = (int32_t)i;                    \
        return c;                                                                                \
    }                                                                                            \
    VB_AVX512 static ptrdiff_t vb_eq_candidates_##T##_avx512(const vb_t_##T *x, ptrdiff_t n,    \
                                                             const vb_bins_t *p, const vb_eq_t *q, \
                                                             int32_t *pos) {                     \
        const __m512d A = _mm512_set1_pd(p->a), NM = _mm512_set1_pd(p->nm);                     \
        const __m512d FL = _mm512_set1_pd(p->flast), Z = _mm512_setzero_pd();                   \
        const double slack = vb_bins_slack(p);                                                   \
        const __m512d D0 = _mm512_set1_pd(slack), D1 = _mm512_set1_pd(1.0 - slack);             \
        const __m256i LOW = _mm256_set1_epi32(31), BIT = _mm256_set1_epi32(1);                   \
        ptrdiff_t i = 0, c = 0;                                                                  \
        for (; i + 8 <= n; i += 8) {                                                             \
            vb_prefetch(vb_ahead(x + i, VB_AHEAD));                                             \
            __m512d v = VB_L8_##T(x + i);                                                        \
            __m512d tu = _mm512_mul_pd(_mm512_sub_pd(v, A), NM);                                 \
            __m256i kt = _mm512_cvttpd_epi32(_mm512_min_pd(_mm512_max_pd(tu, Z), FL));           \
            __m512d fr = _mm512_sub_pd(tu, _mm512_cvtepi32_pd(kt));                              \
            __mmask8 ok = _mm512_cmp_pd_mask(fr, D0, _CMP_GE_OQ) & _mm512_cmp_pd_mask(fr, D1, _CMP_LE_OQ); \
            __m256i w = _mm256_i32gather_epi32((const int *)q->bits, _mm256_srli_epi32(kt, 5), 4); \
            __m256i b = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_and_si256(kt, LOW)), BIT);  \
            unsigned m = (unsigned)(ok ^ 0xFF)                                                   \
                         | (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(b, 31))); \
            __m256i at = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)vb_lanes[m]));       \
            _mm256_storeu_si256((__m256i *)(pos + c), _mm256_add_epi32(at, _mm256_set1_epi32((int)i))); \
            c += vb_nbits[m];                                                                    \
        }                                                                                        \
        for (; i < n; i++)                                                                       \
            if (vb_eq_unsettled_1((double)x[i], p, q)) pos[c++] = (int32_t)i;                    \
        return c;                                                                                \
    }

/* The knots are the fine bins' edges (vb_eq_candidates_* apply). */
static inline int vb_eq_same_grid(const vb_bins_t *p, const vb_eq_t *q) {
    return q->e0 == p->a && q->scale == p->nm && q->last == p->flast;
}

#define VB_EQ_UNSETTLED_DISPATCH(T)                                                              \
    if (vb_level >= 3 && vb_eq_same_grid(p, q)) c = vb_eq_candidates_##T##_avx512(x, n, p, q, add); \
    else if (vb_level == 2 && vb_eq_same_grid(p, q)) c = vb_eq_candidates_##T##_avx2(x, n, p, q, add); \
    else if (vb_level >= 3) c = vb_eq_unsettled_##T##_avx512(x, n, p, q, add);                   \
    else if (vb_level == 2) c = vb_eq_unsettled_##T##_avx2(x, n, p, q, add);                     \
    else
#else
#define VB_EQ_UNSETTLED_VEC(T)
#define VB_EQ_CANDIDATES_VEC(T)
#define VB_EQ_UNSETTLED_DISPATCH(T)
#endif

#define VB_EQ_UNSETTLED(T)                                                                       \
    VB_EQ_UNSETTLED_VEC(T)                                                                       \
    VB_EQ_CANDIDATES_VEC(T)                                                                      \
    VB_EQ_ENTRIES(T)                                                                             \
    static inline ptrdiff_t vb_eq_unsettled_##T(const vb_t_##T *x, ptrdiff_t n, const vb_bins_t *p, \
                                                const vb_eq_t *q, int32_t *add, int32_t *sub) {  \
        ptrdiff_t c = 0;                                                                         \
        VB_EQ_UNSETTLED_DISPATCH(T)                                                              \
        for (ptrdiff_t i = 0; i < n; i++)                                                        \
            if (vb_eq_unsettled_1((double)x[i], p, q)) add[c++] = (int32_t)i;                    \
        vb_eq_entries_##T(x, c, p, q, add, sub);                                                 \
        return c;                                                                                \
    }
VB_EQ_UNSETTLED(f64)
VB_EQ_UNSETTLED(f32)
VB_EQ_UNSETTLED(i32)
VB_EQ_UNSETTLED(i16)
VB_EQ_UNSETTLED(u16)
VB_EQ_UNSETTLED(u8)

/* ---------------------------------------------------------------------------------------
 * Finite range of a row of doubles (see _histogram.pyx, group_minmax).
 *
 * The definition is the sequential loop of vb_minmax_1: lo = fv < lo ? fv : lo over the
 * finite values (and hi likewise), so the result is numerically the least value and, among
 * values equal to it, the first (only 0.0 and -0.0 are equal with different bits).  The
 * vector versions take the numeric minimum in any order, then, if it is zero, the first
 * zero: the initial lo if it is zero, else the row's first zero.
 * ------------------------------------------------------------------------------------- */

static inline void vb_minmax_1(const double *x, ptrdiff_t n, double *lo_p, double *hi_p, int64_t *bad_p) {
    double lo = *lo_p, hi = *hi_p;
    int64_t bad = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double fv = x[i];
        if (fv - fv == 0.0) {
            lo = fv < lo ? fv : lo;
            hi = fv > hi ? fv : hi;
        } else {
            bad++;
        }
    }
    *lo_p = lo;
    *hi_p = hi;
    *bad_p += bad;
}

/* The sequential result from the numeric extremes m (min) and M (max) of the finite x[i]. */
static inline void vb_minmax_finish(const double *x, ptrdiff_t n, double m, double M, double *lo_p,
                                    double *hi_p) {
    double lo = *lo_p, hi = *hi_p;
    double nlo = m < lo ? m : lo, nhi = M > hi ? M : hi;
    if (nlo == 0.0 && lo != 0.0) {
        for (ptrdiff_t i = 0; i < n; i++) if (x[i] == 0.0) { nlo = x[i]; break; }
    } else if (nlo == 0.0) {
        nlo = lo;
    }
    if (nhi == 0.0 && hi != 0.0) {
        for (ptrdiff_t i = 0; i < n; i++) if (x[i] == 0.0) { nhi = x[i]; break; }
    } else if (nhi == 0.0) {
        nhi = hi;
    }
    *lo_p = nlo;
    *hi_p = nhi;
}

#if defined(VB_SSE2)
static void vb_minmax_sse2(const double *x, ptrdiff_t n, double *lo_p, double *hi_p, int64_t *bad_p) {
    const __m128d Z = _mm_setzero_pd(), PINF = _mm_set1_pd(INFINITY), NINF = _mm_set1_pd(-INFINITY);
    __m128d vlo = PINF, vhi = NINF;
    int64_t bad = 0;
    ptrdiff_t i = 0;
    for (; i + 2 <= n; i += 2) {
        __m128d v = _mm_loadu_pd(x + i);
        __m128d fin = _mm_cmpeq_pd(_mm_sub_pd(v, v), Z);
        vlo = _mm_min_pd(vlo, _mm_or_pd(_mm_and_pd(fin, v), _mm_andnot_pd(fin, PINF)));
        vhi = _mm_max_pd(vhi, _mm_or_pd(_mm_and_pd(fin, v), _mm_andnot_pd(fin, NINF)));
        int m = _mm_movemask_pd(fin);
        bad += 2 - (m & 1) - (m >> 1);
    }
    double l[2], h[2];
    _mm_storeu_pd(l, vlo);
    _mm_storeu_pd(h, vhi);
    double m = l[1] < l[0] ? l[1] : l[0], M = h[1] > h[0] ? h[1] : h[0];
    for (; i < n; i++) {
        double fv = x[i];
        if (fv - fv == 0.0) { m = fv < m ? fv : m; M = fv > M ? fv : M; } else bad++;
    }
    vb_minmax_finish(x, n, m, M, lo_p, hi_p);
    *bad_p += bad;
}
#endif

#if defined(VB_DISPATCH)
VB_AVX2 static void vb_minmax_avx2(const double *x, ptrdiff_t n, double *lo_p, double *hi_p, int64_t *bad_p) {
    const __m256d Z = _mm256_setzero_pd(), PINF = _mm256_set1_pd(INFINITY), NINF = _mm256_set1_pd(-INFINITY);
    __m256d vlo = PINF, vhi = NINF, vlo2 = PINF, vhi2 = NINF;
    int64_t bad = 0;
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d v = _mm256_loadu_pd(x + i), w = _mm256_loadu_pd(x + i + 4);
        __m256d fin = _mm256_cmp_pd(_mm256_sub_pd(v, v), Z, _CMP_EQ_OQ);
        __m256d fin2 = _mm256_cmp_pd(_mm256_sub_pd(w, w), Z, _CMP_EQ_OQ);
        vlo = _mm256_min_pd(vlo, _mm256_blendv_pd(PINF, v, fin));
        vhi = _mm256_max_pd(vhi, _mm256_blendv_pd(NINF, v, fin));
        vlo2 = _mm256_min_pd(vlo2, _mm256_blendv_pd(PINF, w, fin2));
        vhi2 = _mm256_max_pd(vhi2, _mm256_blendv_pd(NINF, w, fin2));
        bad += 8 - __builtin_popcount((unsigned)(_mm256_movemask_pd(fin) | _mm256_movemask_pd(fin2) << 4));
    }
    vlo = _mm256_min_pd(vlo, vlo2);
    vhi = _mm256_max_pd(vhi, vhi2);
    double l[4], h[4];
    _mm256_storeu_pd(l, vlo);
    _mm256_storeu_pd(h, vhi);
    double m = l[0], M = h[0];
    for (int j = 1; j < 4; j++) { m = l[j] < m ? l[j] : m; M = h[j] > M ? h[j] : M; }
    for (; i < n; i++) {
        double fv = x[i];
        if (fv - fv == 0.0) { m = fv < m ? fv : m; M = fv > M ? fv : M; } else bad++;
    }
    vb_minmax_finish(x, n, m, M, lo_p, hi_p);
    *bad_p += bad;
}

VB_AVX512 static void vb_minmax_avx512(const double *x, ptrdiff_t n, double *lo_p, double *hi_p, int64_t *bad_p) {
    const __m512d Z = _mm512_setzero_pd(), PINF = _mm512_set1_pd(INFINITY), NINF = _mm512_set1_pd(-INFINITY);
    __m512d vlo = PINF, vhi = NINF;
    int64_t bad = 0;
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512d v = _mm512_loadu_pd(x + i);
        __mmask8 fin = _mm512_cmp_pd_mask(_mm512_sub_pd(v, v), Z, _CMP_EQ_OQ);
        vlo = _mm512_mask_min_pd(vlo, fin, vlo, v);
        vhi = _mm512_mask_max_pd(vhi, fin, vhi, v);
        bad += 8 - __builtin_popcount((unsigned)fin);
    }
    double l[8], h[8];
    _mm512_storeu_pd(l, vlo);
    _mm512_storeu_pd(h, vhi);
    double m = l[0], M = h[0];
    for (int j = 1; j < 8; j++) { m = l[j] < m ? l[j] : m; M = h[j] > M ? h[j] : M; }
    for (; i < n; i++) {
        double fv = x[i];
        if (fv - fv == 0.0) { m = fv < m ? fv : m; M = fv > M ? fv : M; } else bad++;
    }
    vb_minmax_finish(x, n, m, M, lo_p, hi_p);
    *bad_p += bad;
}
#endif

/* *lo_p, *hi_p: the finite range of x[:n] joined to theirs; *bad_p += non-finite count. */
static inline void vb_minmax(const double *x, ptrdiff_t n, double *lo_p, double *hi_p, int64_t *bad_p) {
#if defined(VB_DISPATCH)
    if (vb_level >= 3) { vb_minmax_avx512(x, n, lo_p, hi_p, bad_p); return; }
    if (vb_level == 2) { vb_minmax_avx2(x, n, lo_p, hi_p, bad_p); return; }
#endif
#if defined(VB_SSE2)
    if (vb_level == 1) { vb_minmax_sse2(x, n, lo_p, hi_p, bad_p); return; }
#endif
    vb_minmax_1(x, n, lo_p, hi_p, bad_p);
}

/* ---------------------------------------------------------------------------------------
 * Integer helpers of void-and-cluster (see _void_cluster.pyx): exact in any order, so
 * these are plain loops compiled for each instruction set and vectorised by the compiler.
 * ------------------------------------------------------------------------------------- */

#define VB_INT_HELPERS(SUF, ATTR)                                                                \
    ATTR static void vb_range64_##SUF(const int64_t *v, ptrdiff_t n, int64_t *lo_p, int64_t *hi_p) { \
        int64_t lo = v[0], hi = v[0];                                                            \
        for (ptrdiff_t i = 0; i < n; i++) {                                                      \
            lo = v[i] < lo ? v[i] : lo;                                                          \
            hi = v[i] > hi ? v[i] : hi;                                                          \
        }                                                                                        \
        *lo_p = lo;                                                                              \
        *hi_p = hi;                                                                              \
    }                                                                                            \
    ATTR static int64_t vb_min64_##SUF(const int64_t *v, ptrdiff_t n) {                          \
        int64_t lo = v[0];                                                                       \
        for (ptrdiff_t i = 0; i < n; i++) lo = v[i] < lo ? v[i] : lo;                            \
        return lo;                                                                               \
    }                                                                                            \
    ATTR static int64_t vb_max64_##SUF(const int64_t *v, ptrdiff_t n) {                          \
        int64_t hi = v[0];                                                                       \
        for (ptrdiff_t i = 0; i < n; i++) hi = v[i] > hi ? v[i] : hi;                            \
        return hi;                                                                               \
    }                                                                                            \
    ATTR static void vb_toggle_row_##SUF(int64_t *row, const int64_t *g, ptrdiff_t nx, ptrdiff_t px, \
                                         int64_t sign, int64_t *lo_p, int64_t *hi_p) {          \
        int64_t *tail = row + px;                                                                \
        const int64_t *g_head = g + (nx - px);                                                   \
        int64_t lo = INT64_MAX, hi = INT64_MIN, v;                                               \
        if (sign > 0) {                                                                          \
            for (ptrdiff_t i = 0; i < nx - px; i++) {                                            \
                v = tail[i] + g[i]; tail[i] = v;                                                 \
                lo = v < lo ? v : lo; hi = v > hi ? v : hi;                                      \
            }                                                                                    \
            for (ptrdiff_t i = 0; i < px; i++) {                                                 \
                v = row[i] + g_head[i]; row[i] = v;                                              \
                lo = v < lo ? v : lo; hi = v > hi ? v : hi;                                      \
            }                                                                                    \
        } else {                                                                                 \
            for (ptrdiff_t i = 0; i < nx - px; i++) {                                            \
                v = tail[i] - g[i]; tail[i] = v;                                                 \
                lo = v < lo ? v : lo; hi = v > hi ? v : hi;                                      \
            }                                                                                    \
            for (ptrdiff_t i = 0; i < px; i++) {                                                 \
                v = row[i] - g_head[i]; row[i] = v;                                              \
                lo = v < lo ? v : lo; hi = v > hi ? v : hi;                                      \
            }                                                                                    \
        }                                                                                        \
        *lo_p = lo;                                                                              \
        *hi_p = hi;                                                                              \
    }

VB_INT_HELPERS(base, )
#if defined(VB_DISPATCH)
VB_INT_HELPERS(avx2, VB_AVX2)
VB_INT_HELPERS(avx512, __attribute__((target("avx512f,avx512dq,avx512vl"))))
#define VB_INT_CALL(NAME, ...)                                                                   \
    (vb_level >= 3 ? NAME##_avx512(__VA_ARGS__) : vb_level == 2 ? NAME##_avx2(__VA_ARGS__) : NAME##_base(__VA_ARGS__))
#else
#define VB_INT_CALL(NAME, ...) NAME##_base(__VA_ARGS__)
#endif

/* Least and largest of v[:n] (n >= 1). */
static inline void vb_range64(const int64_t *v, ptrdiff_t n, int64_t *lo, int64_t *hi) {
    VB_INT_CALL(vb_range64, v, n, lo, hi);
}

/* Lowest index of the least (largest) of v[:n] (n >= 1). */
static inline ptrdiff_t vb_argmin64(const int64_t *v, ptrdiff_t n) {
    int64_t m = VB_INT_CALL(vb_min64, v, n);
    ptrdiff_t i = 0;
    while (v[i] != m) i++;
    return i;
}

static inline ptrdiff_t vb_argmax64(const int64_t *v, ptrdiff_t n) {
    int64_t m = VB_INT_CALL(vb_max64, v, n);
    ptrdiff_t i = 0;
    while (v[i] != m) i++;
    return i;
}

/* row += sign * g shifted right by px (toroidally), sign +-1; *lo, *hi: the row's new range. */
static inline void vb_toggle_row(int64_t *row, const int64_t *g, ptrdiff_t nx, ptrdiff_t px,
                                 int64_t sign, int64_t *lo, int64_t *hi) {
    VB_INT_CALL(vb_toggle_row, row, g, nx, px, sign, lo, hi);
}

/* ---------------------------------------------------------------------------------------
 * SplitMix64 uniforms of consecutive counters (see _splitmix.pxd).
 * ------------------------------------------------------------------------------------- */

#define VB_GAMMA 0x9E3779B97F4A7C15ULL
#define VB_M1 0xBF58476D1CE4E5B9ULL
#define VB_M2 0x94D049BB133111EBULL
#define VB_INV53 (1.0 / 9007199254740992.0)

static inline double vb_uniform_1(uint64_t key, uint64_t index) {
    uint64_t z = key + (index + 1) * VB_GAMMA;
    z = (z ^ (z >> 30)) * VB_M1;
    z = (z ^ (z >> 27)) * VB_M2;
    z ^= z >> 31;
    return (double)(int64_t)(z >> 11) * VB_INV53;
}

#if defined(VB_DISPATCH)
/* Low 64 bits of a * b, lane by lane, from 32-bit products (b_hi = b >> 32). */
VB_AVX2 static inline __m256i vb_mul64_avx2(__m256i a, __m256i b, __m256i b_hi) {
    __m256i ll = _mm256_mul_epu32(a, b);
    __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b), _mm256_mul_epu32(a, b_hi));
    return _mm256_add_epi64(ll, _mm256_slli_epi64(cross, 32));
}

/* Uniforms of the 4 states z (already key + (index + 1) * gamma). */
VB_AVX2 static inline __m256d vb_uniform_avx2(__m256i z) {
    const __m256i m1 = _mm256_set1_epi64x((long long)VB_M1), m1h = _mm256_srli_epi64(m1, 32);
    const __m256i m2 = _mm256_set1_epi64x((long long)VB_M2), m2h = _mm256_srli_epi64(m2, 32);
    z = vb_mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), m1, m1h);
    z = vb_mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), m2, m2h);
    z = _mm256_srli_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 31)), 11);
    /* Exact conversion of the 53-bit z: (2**84 + hi * 2**32 - 2**84 - 2**52) + (2**52 + lo). */
    __m256i hi = _mm256_or_si256(_mm256_srli_epi64(z, 32), _mm256_castpd_si256(_mm256_set1_pd(19342813113834066795298816.0)));
    __m256i lo = _mm256_blend_epi32(z, _mm256_castpd_si256(_mm256_set1_pd(4503599627370496.0)), 0xAA);
    __m256d f = _mm256_sub_pd(_mm256_castsi256_pd(hi), _mm256_set1_pd(19342813113834066795298816.0 + 4503599627370496.0));
    f = _mm256_add_pd(f, _mm256_castsi256_pd(lo));
    return _mm256_mul_pd(f, _mm256_set1_pd(VB_INV53));
}

VB_AVX512 static inline __m512d vb_uniform_avx512(__m512i z) {
    const __m512i m1 = _mm512_set1_epi64((long long)VB_M1), m2 = _mm512_set1_epi64((long long)VB_M2);
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), m1);
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), m2);
    z = _mm512_srli_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 31)), 11);
    return _mm512_mul_pd(_mm512_cvtepi64_pd(z), _mm512_set1_pd(VB_INV53));
}

VB_AVX2 static void vb_uniforms_avx2(uint64_t key, uint64_t base, ptrdiff_t n, double *out) {
    ptrdiff_t i = 0;
    __m256i z = _mm256_add_epi64(
        _mm256_set1_epi64x((long long)(key + (base + 1) * VB_GAMMA)),
        _mm256_set_epi64x((long long)(3 * VB_GAMMA), (long long)(2 * VB_GAMMA), (long long)VB_GAMMA, 0));
    const __m256i step = _mm256_set1_epi64x((long long)(4 * VB_GAMMA));
    for (; i + 4 <= n; i += 4) {
        _mm256_storeu_pd(out + i, vb_uniform_avx2(z));
        z = _mm256_add_epi64(z, step);
    }
    for (; i < n; i++) out[i] = vb_uniform_1(key, base + (uint64_t)i);
}

VB_AVX512 static void vb_uniforms_avx512(uint64_t key, uint64_t base, ptrdiff_t n, double *out) {
    ptrdiff_t i = 0;
    __m512i z = _mm512_add_epi64(
        _mm512_set1_epi64((long long)(key + (base + 1) * VB_GAMMA)),
        _mm512_mullo_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi64((long long)VB_GAMMA)));
    const __m512i step = _mm512_set1_epi64((long long)(8 * VB_GAMMA));
    for (; i + 8 <= n; i += 8) {
        _mm512_storeu_pd(out + i, vb_uniform_avx512(z));
        z = _mm512_add_epi64(z, step);
    }
    for (; i < n; i++) out[i] = vb_uniform_1(key, base + (uint64_t)i);
}
#endif

/* Bernoulli draws: out[i] = uniform(key, base + i) < p[i] (0 for a NaN p), p float or double. */
#define VB_BERNOULLI_1(T)                                                                       \
    static inline void vb_bernoulli_##T##_1(uint64_t key, uint64_t base, ptrdiff_t i, ptrdiff_t n, \
                                            const T *p, uint8_t *out) {                         \
        for (; i < n; i++) out[i] = vb_uniform_1(key, base + (uint64_t)i) < (double)p[i];         \
    }
typedef float vb_f32;
typedef double vb_f64;
VB_BERNOULLI_1(vb_f32)
VB_BERNOULLI_1(vb_f64)

#if defined(VB_DISPATCH)
VB_AVX2 static inline __m256d vb_load4_f32(const float *p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
VB_AVX2 static inline __m256d vb_load4_f64(const double *p) { return _mm256_loadu_pd(p); }
VB_AVX512 static inline __m512d vb_load8_f32(const float *p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
VB_AVX512 static inline __m512d vb_load8_f64(const double *p) { return _mm512_loadu_pd(p); }

#define VB_BERNOULLI_VEC(T, SUF)                                                                 \
    VB_AVX2 static void vb_bernoulli_##T##_avx2(uint64_t key, uint64_t base, ptrdiff_t n, const T *p, \
                                                uint8_t *out) {                                  \
        ptrdiff_t i = 0;                                                                         \
        __m256i z = _mm256_add_epi64(                                                            \
            _mm256_set1_epi64x((long long)(key + (base + 1) * VB_GAMMA)),                        \
            _mm256_set_epi64x((long long)(3 * VB_GAMMA), (long long)(2 * VB_GAMMA),              \
                              (long long)VB_GAMMA, 0));                                          \
        const __m256i step = _mm256_set1_epi64x((long long)(4 * VB_GAMMA));                      \
        for (; i + 4 <= n; i += 4) {                                                             \
            int m = _mm256_movemask_pd(_mm256_cmp_pd(vb_uniform_avx2(z), vb_load4_##SUF(p + i), _CMP_LT_OQ)); \
            uint32_t b = (uint32_t)vb_bytes[m];                                                  \
            memcpy(out + i, &b, 4);                                                              \
            z = _mm256_add_epi64(z, step);                                                       \
        }                                                                                        \
        vb_bernoulli_##T##_1(key, base, i, n, p, out);                                           \
    }                                                                                            \
    VB_AVX512 static void vb_bernoulli_##T##_avx512(uint64_t key, uint64_t base, ptrdiff_t n,    \
                                                    const T *p, uint8_t *out) {                  \
        ptrdiff_t i = 0;                                                                         \
        __m512i z = _mm512_add_epi64(                                                            \
            _mm512_set1_epi64((long long)(key + (base + 1) * VB_GAMMA)),                         \
            _mm512_mullo_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0),                         \
                               _mm512_set1_epi64((long long)VB_GAMMA)));                         \
        const __m512i step = _mm512_set1_epi64((long long)(8 * VB_GAMMA));                       \
        for (; i + 8 <= n; i += 8) {                                                             \
            __mmask8 m = _mm512_cmp_pd_mask(vb_uniform_avx512(z), vb_load8_##SUF(p + i), _CMP_LT_OQ); \
            memcpy(out + i, &vb_bytes[m], 8);                                                    \
            z = _mm512_add_epi64(z, step);                                                       \
        }                                                                                        \
        vb_bernoulli_##T##_1(key, base, i, n, p, out);                                           \
    }
VB_BERNOULLI_VEC(vb_f32, f32)
VB_BERNOULLI_VEC(vb_f64, f64)
#endif

#define VB_BERNOULLI(T)                                                                          \
    static inline void vb_bernoulli_##T(uint64_t key, uint64_t base, ptrdiff_t n, const T *p,   \
                                        uint8_t *out) {                                          \
        VB_BERNOULLI_DISPATCH(T)                                                                 \
        vb_bernoulli_##T##_1(key, base, 0, n, p, out);                                           \
    }
#if defined(VB_DISPATCH)
#define VB_BERNOULLI_DISPATCH(T)                                                                 \
    if (vb_level >= 3) { vb_bernoulli_##T##_avx512(key, base, n, p, out); return; }              \
    if (vb_level == 2) { vb_bernoulli_##T##_avx2(key, base, n, p, out); return; }
#else
#define VB_BERNOULLI_DISPATCH(T)
#endif
VB_BERNOULLI(vb_f32)
VB_BERNOULLI(vb_f64)

/* out[i] = uniform(key, base + i) for i < n. */
static inline void vb_uniforms(uint64_t key, uint64_t base, ptrdiff_t n, double *out) {
#if defined(VB_DISPATCH)
    if (vb_level >= 3) { vb_uniforms_avx512(key, base, n, out); return; }
    if (vb_level == 2) { vb_uniforms_avx2(key, base, n, out); return; }
#endif
    for (ptrdiff_t i = 0; i < n; i++) out[i] = vb_uniform_1(key, base + (uint64_t)i);
}

/* ---------------------------------------------------------------------------------------
 * Error diffusion of VB_LANES slices in lockstep (see _diffusion.pyx, diffuse_lanes).
 *
 * Buffers hold VB_LANES values per pixel, lane l being slice l.  vb_lanes_inner is the inner
 * run of _diffusion.pyx's _inner_run without jitter, lane by lane: v = (a + cur) + r1, the
 * bit v > t32, e = v - bit, srow = e, r1 = r2 + c1 * e, r2 = c2 * e (float32, no fused
 * multiply-add); vb_axpy the spread of a row's error to a target row, y + w * x.
 * vb_rescale is the linear rescale of Transform.apply: r = (x - lo) / span in double,
 * ``r > 0 ? r : 0`` (NaN -> 0), ``r < 1 ? r : 1``, rounded once to float.
 * ------------------------------------------------------------------------------------- */

#define VB_LANES 16

static inline void vb_lanes_inner_1(const float *a, uint8_t *bits, const float *cur, float *srow,
                                    ptrdiff_t x0, ptrdiff_t step, ptrdiff_t count, float c1, float c2,
                                    float *r1, float *r2, float t32) {
    for (ptrdiff_t i = 0; i < count; i++) {
        ptrdiff_t xo = (x0 + step * i) * VB_LANES;
        for (int l = 0; l < VB_LANES; l++) {
            float v = (a[xo + l] + cur[xo + l]) + r1[l];
            int b = v > t32;
            bits[xo + l] = (uint8_t)b;
            float e = v - (float)b;
            srow[xo + l] = e;
            r1[l] = r2[l] + c1 * e;
            r2[l] = c2 * e;
        }
    }
}

/* y[i] = y[i] + w * x[i] in float32: a multiply, then an add (the error spread to a row). */
static inline void vb_axpy_1(float *y, const float *x, ptrdiff_t n, float w) {
    for (ptrdiff_t i = 0; i < n; i++) y[i] = y[i] + w * x[i];
}

static inline void vb_rescale_1(const double *x, float *out, ptrdiff_t n, double lo, double span) {
    for (ptrdiff_t i = 0; i < n; i++) {
        double r = (x[i] - lo) / span;
        r = r > 0.0 ? r : 0.0;
        out[i] = (float)(r < 1.0 ? r : 1.0);
    }
}

#if defined(VB_SSE2)
static void vb_lanes_inner_sse2(const float *a, uint8_t *bits, const float *cur, float *srow,
                                ptrdiff_t x0, ptrdiff_t step, ptrdiff_t count, float c1, float c2,
                                float *r1, float *r2, float t32) {
    const __m128 T = _mm_set1_ps(t32), C1 = _mm_set1_ps(c1), C2 = _mm_set1_ps(c2), ONE = _mm_set1_ps(1.0f);
    __m128 R1[VB_LANES / 4], R2[VB_LANES / 4];
    for (int j = 0; j < VB_LANES / 4; j++) {
        R1[j] = _mm_loadu_ps(r1 + 4 * j);
        R2[j] = _mm_loadu_ps(r2 + 4 * j);
    }
    for (ptrdiff_t i = 0; i < count; i++) {
        ptrdiff_t xo = (x0 + step * i) * VB_LANES;
        unsigned mask = 0;
        for (int j = 0; j < VB_LANES / 4; j++) {
            ptrdiff_t o = xo + 4 * j;
            __m128 v = _mm_add_ps(_mm_add_ps(_mm_loadu_ps(a + o), _mm_loadu_ps(cur + o)), R1[j]);
            __m128 m = _mm_cmpgt_ps(v, T);
            mask |= (unsigned)_mm_movemask_ps(m) << (4 * j);
            __m128 e = _mm_sub_ps(v, _mm_and_ps(m, ONE));
            _mm_storeu_ps(srow + o, e);
            R1[j] = _mm_add_ps(R2[j], _mm_mul_ps(C1, e));
            R2[j] = _mm_mul_ps(C2, e);
        }
        for (int j = 0; j < VB_LANES / 8; j++)
            memcpy(bits + xo + 8 * j, &vb_bytes[(mask >> (8 * j)) & 255], 8);
    }
    for (int j = 0; j < VB_LANES / 4; j++) {
        _mm_storeu_ps(r1 + 4 * j, R1[j]);
        _mm_storeu_ps(r2 + 4 * j, R2[j]);
    }
}

static void vb_axpy_sse2(float *y, const float *x, ptrdiff_t n, float w) {
    const __m128 W = _mm_set1_ps(w);
    ptrdiff_t i = 0;
    for (; i + 4 <= n; i += 4)
        _mm_storeu_ps(y + i, _mm_add_ps(_mm_loadu_ps(y + i), _mm_mul_ps(W, _mm_loadu_ps(x + i))));
    vb_axpy_1(y + i, x + i, n - i, w);
}

static void vb_rescale_sse2(const double *x, float *out, ptrdiff_t n, double lo, double span) {
    const __m128d LO = _mm_set1_pd(lo), SP = _mm_set1_pd(span), Z = _mm_setzero_pd(), ONE = _mm_set1_pd(1.0);
    ptrdiff_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m128d r = _mm_div_pd(_mm_sub_pd(_mm_loadu_pd(x + i), LO), SP);
        __m128d q = _mm_div_pd(_mm_sub_pd(_mm_loadu_pd(x + i + 2), LO), SP);
        r = _mm_min_pd(_mm_max_pd(r, Z), ONE);
        q = _mm_min_pd(_mm_max_pd(q, Z), ONE);
        _mm_storeu_ps(out + i, _mm_movelh_ps(_mm_cvtpd_ps(r), _mm_cvtpd_ps(q)));
    }
    vb_rescale_1(x + i, out + i, n - i, lo, span);
}
#endif

#if defined(VB_DISPATCH)
VB_AVX2 static void vb_lanes_inner_avx2(const float *a, uint8_t *bits, const float *cur, float *srow,
                                        ptrdiff_t x0, ptrdiff_t step, ptrdiff_t count, float c1, float c2,
                                        float *r1, float *r2, float t32) {
    const __m256 T = _mm256_set1_ps(t32), C1 = _mm256_set1_ps(c1), C2 = _mm256_set1_ps(c2),
                 ONE = _mm256_set1_ps(1.0f);
    __m256 R1[VB_LANES / 8], R2[VB_LANES / 8];
    for (int j = 0; j < VB_LANES / 8; j++) {
        R1[j] = _mm256_loadu_ps(r1 + 8 * j);
        R2[j] = _mm256_loadu_ps(r2 + 8 * j);
    }
    for (ptrdiff_t i = 0; i < count; i++) {
        ptrdiff_t xo = (x0 + step * i) * VB_LANES;
        for (int j = 0; j < VB_LANES / 8; j++) {
            ptrdiff_t o = xo + 8 * j;
            __m256 v = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(a + o), _mm256_loadu_ps(cur + o)), R1[j]);
            __m256 m = _mm256_cmp_ps(v, T, _CMP_GT_OQ);
            memcpy(bits + o, &vb_bytes[_mm256_movemask_ps(m)], 8);
            __m256 e = _mm256_sub_ps(v, _mm256_and_ps(m, ONE));
            _mm256_storeu_ps(srow + o, e);
            R1[j] = _mm256_add_ps(R2[j], _mm256_mul_ps(C1, e));
            R2[j] = _mm256_mul_ps(C2, e);
        }
    }
    for (int j = 0; j < VB_LANES / 8; j++) {
        _mm256_storeu_ps(r1 + 8 * j, R1[j]);
        _mm256_storeu_ps(r2 + 8 * j, R2[j]);
    }
}

VB_AVX2 static void vb_axpy_avx2(float *y, const float *x, ptrdiff_t n, float w) {
    const __m256 W = _mm256_set1_ps(w);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(W, _mm256_loadu_ps(x + i))));
    vb_axpy_1(y + i, x + i, n - i, w);
}

VB_AVX2 static void vb_rescale_avx2(const double *x, float *out, ptrdiff_t n, double lo, double span) {
    const __m256d LO = _mm256_set1_pd(lo), SP = _mm256_set1_pd(span), Z = _mm256_setzero_pd(),
                  ONE = _mm256_set1_pd(1.0);
    ptrdiff_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d r = _mm256_div_pd(_mm256_sub_pd(_mm256_loadu_pd(x + i), LO), SP);
        r = _mm256_min_pd(_mm256_max_pd(r, Z), ONE);
        _mm_storeu_ps(out + i, _mm256_cvtpd_ps(r));
    }
    vb_rescale_1(x + i, out + i, n - i, lo, span);
}
#endif

static inline void vb_lanes_inner(const float *a, uint8_t *bits, const float *cur, float *srow,
                                  ptrdiff_t x0, ptrdiff_t step, ptrdiff_t count, float c1, float c2,
                                  float *r1, float *r2, float t32) {
#if defined(VB_DISPATCH)
    if (vb_level >= 2) { vb_lanes_inner_avx2(a, bits, cur, srow, x0, step, count, c1, c2, r1, r2, t32); return; }
#endif
#if defined(VB_SSE2)
    if (vb_level == 1) { vb_lanes_inner_sse2(a, bits, cur, srow, x0, step, count, c1, c2, r1, r2, t32); return; }
#endif
    vb_lanes_inner_1(a, bits, cur, srow, x0, step, count, c1, c2, r1, r2, t32);
}

static inline void vb_axpy(float *y, const float *x, ptrdiff_t n, float w) {
#if defined(VB_DISPATCH)
    if (vb_level >= 2) { vb_axpy_avx2(y, x, n, w); return; }
#endif
#if defined(VB_SSE2)
    if (vb_level == 1) { vb_axpy_sse2(y, x, n, w); return; }
#endif
    vb_axpy_1(y, x, n, w);
}

static inline void vb_rescale(const double *x, float *out, ptrdiff_t n, double lo, double span) {
#if defined(VB_DISPATCH)
    if (vb_level >= 2) { vb_rescale_avx2(x, out, n, lo, span); return; }
#endif
#if defined(VB_SSE2)
    if (vb_level == 1) { vb_rescale_sse2(x, out, n, lo, span); return; }
#endif
    vb_rescale_1(x, out, n, lo, span);
}

#endif
