/* Threshold masks of a row, written as uint8 booleans and counted in the same pass (see
 * _threshold.pyx, group_above).
 *
 * The definition is the scalar loop below: a value is converted to double and compared, so
 * a vector version, which the compiler makes of the same loop for the target of its
 * attribute (AVX2 also where AVX-512 is there: byte stores of AVX-512 need its BW part),
 * gives the same bytes.  The flags are constants in each loop (one loop per
 * combination), so the compiler sees a plain compare-store-add.
 */
#ifndef VOLBIN_ABOVE_H
#define VOLBIN_ABOVE_H

#include "_simd.h"

#if defined(_MSC_VER)
#define VB_RESTRICT __restrict
#else
#define VB_RESTRICT restrict
#endif

#define VB_ABOVE_INCLUSIVE 1
#define VB_ABOVE_UPPER 2
#define VB_ABOVE_INVERT 4
#define VB_ABOVE_FINITE 8

#define VB_ABOVE_LOOP_AT(FL, TV, UV)                                                             \
    {                                                                                            \
        int64_t s = 0;                                                                           \
        for (ptrdiff_t i = 0; i < n; i++) {                                                      \
            double fv = (double)x[i];                                                            \
            uint8_t f = ((FL) & VB_ABOVE_INCLUSIVE) ? (fv >= (TV)) : (fv > (TV));                \
            if ((FL) & VB_ABOVE_UPPER) f &= (uint8_t)(fv <= (UV));                               \
            if ((FL) & VB_ABOVE_INVERT) f ^= 1;                                                  \
            if ((FL) & VB_ABOVE_FINITE) f &= (uint8_t)((fv - fv) == 0.0);                        \
            o[i] = f;                                                                            \
            s += f;                                                                              \
        }                                                                                        \
        return s;                                                                                \
    }
#define VB_ABOVE_LOOP(FL) VB_ABOVE_LOOP_AT(FL, t, u)
#define VB_ABOVE_LANES_LOOP(FL) VB_ABOVE_LOOP_AT(FL, t[i], u[i])

#define VB_ABOVE_SWITCH(LOOP)                                                                    \
    switch (flags & 15) {                                                                        \
    case 0: LOOP(0)                                                                              \
    case 1: LOOP(1)                                                                              \
    case 2: LOOP(2)                                                                              \
    case 3: LOOP(3)                                                                              \
    case 4: LOOP(4)                                                                              \
    case 5: LOOP(5)                                                                              \
    case 6: LOOP(6)                                                                              \
    case 7: LOOP(7)                                                                              \
    case 8: LOOP(8)                                                                              \
    case 9: LOOP(9)                                                                              \
    case 10: LOOP(10)                                                                            \
    case 11: LOOP(11)                                                                            \
    case 12: LOOP(12)                                                                            \
    case 13: LOOP(13)                                                                            \
    case 14: LOOP(14)                                                                            \
    default: LOOP(15)                                                                            \
    }

/* vb_above_T: one threshold t (and upper bound u) for the row; vb_above_lanes_T: t[i]
 * (and u[i]) for value i (a threshold per position along the rows). */
#define VB_ABOVE_FN(T, SUFFIX, ATTR)                                                             \
    ATTR static int64_t vb_above_##T##SUFFIX(const vb_t_##T *VB_RESTRICT x, ptrdiff_t n, double t, \
                                             double u, int flags, uint8_t *VB_RESTRICT o) {     \
        VB_ABOVE_SWITCH(VB_ABOVE_LOOP)                                                           \
    }                                                                                            \
    ATTR static int64_t vb_above_lanes_##T##SUFFIX(const vb_t_##T *VB_RESTRICT x, ptrdiff_t n,  \
                                                   const double *VB_RESTRICT t,                  \
                                                   const double *VB_RESTRICT u, int flags,       \
                                                   uint8_t *VB_RESTRICT o) {                     \
        VB_ABOVE_SWITCH(VB_ABOVE_LANES_LOOP)                                                     \
    }

#if defined(VB_DISPATCH)
#define VB_ABOVE(T)                                                                              \
    VB_ABOVE_FN(T, _base, )                                                                      \
    VB_ABOVE_FN(T, _avx2, VB_AVX2)                                                               \
    /* o[i] = foreground of x[i] for i < n; returns how many are foreground. */                  \
    static inline int64_t vb_above_##T(const vb_t_##T *x, ptrdiff_t n, double t, double u,      \
                                       int flags, uint8_t *o) {                                  \
        if (vb_level >= 2) return vb_above_##T##_avx2(x, n, t, u, flags, o);                     \
        return vb_above_##T##_base(x, n, t, u, flags, o);                                        \
    }                                                                                            \
    static inline int64_t vb_above_lanes_##T(const vb_t_##T *x, ptrdiff_t n, const double *t,   \
                                             const double *u, int flags, uint8_t *o) {           \
        if (vb_level >= 2) return vb_above_lanes_##T##_avx2(x, n, t, u, flags, o);               \
        return vb_above_lanes_##T##_base(x, n, t, u, flags, o);                                  \
    }
#else
#define VB_ABOVE(T)                                                                              \
    VB_ABOVE_FN(T, _base, )                                                                      \
    static inline int64_t vb_above_##T(const vb_t_##T *x, ptrdiff_t n, double t, double u,      \
                                       int flags, uint8_t *o) {                                  \
        return vb_above_##T##_base(x, n, t, u, flags, o);                                        \
    }                                                                                            \
    static inline int64_t vb_above_lanes_##T(const vb_t_##T *x, ptrdiff_t n, const double *t,   \
                                             const double *u, int flags, uint8_t *o) {           \
        return vb_above_lanes_##T##_base(x, n, t, u, flags, o);                                  \
    }
#endif

VB_ABOVE(f64)
VB_ABOVE(f32)
VB_ABOVE(i32)
VB_ABOVE(i16)
VB_ABOVE(u16)
VB_ABOVE(u8)

#endif
