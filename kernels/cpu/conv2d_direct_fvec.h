/* The direct forward's second inner kernel (conv2d_direct.pyx, _conv_fvec): vectors along the
 * filters instead of along the output columns, for planes too narrow to fill a vector of
 * columns (7x7 and 8x8 planes fill 44-50% of a 16-float vector; a block of filters always fills
 * it) and for strided layers (whose row kernel reads phase-split copies). One call computes NP
 * consecutive output positions of one row by two vectors (2L values) of filters, 32 floats or
 * 16 doubles, at column stride SW, over nruns runs of run_taps consecutive taps, run_stride
 * taps apart (the taps of a range of channels, those rows of the kernel that read inside the
 * input), continuing the sums in init (position p's at init + p * init_step: the block's
 * biases with init_step 0, or an earlier call's tmp with 2L):
 *
 *   tmp[p * 2L + i] = init[p * init_step + i] + sum_r sum_t<run_taps  wp[k * 2L + i] * base[toff[k] + p * SW],
 *                     k = r * run_stride + t,   p < NP, i < 2L
 *
 * base + toff[k] points at the input value tap k reads for the first position, in the caller's
 * zero-padded copy of the input (the NP positions' values SW apart, always inside it), and
 * wp + k * 2L at that tap's 2L weights, packed filter-fastest (two vector loads). Each tap costs
 * 2 loads, NP broadcasts (folded into the multiply-adds' memory operand) and 2 * NP
 * multiply-adds into accumulators that stay in registers: 2 * 12 + 2 of the 32 AVX-512
 * registers at NP = 12; the caller gives each call all of a row's columns up to 12 and splits
 * wider rows evenly, so no lane and no position is wasted. Every output is its init plus its
 * taps in list order (the caller's calls over ranges of channels continue one sum), as in the
 * row kernel (conv2d_direct_simd.h): the two kernels give the same values for the same tap list
 * where both run the same instruction set (the taps this one skips add a weight times a
 * padding zero there, which changes no value, at most the sign of a zero one).
 *
 * Only AVX-512 (and the baseline's slow, correct build) runs it: with AVX2's 16 registers the
 * accumulators of a useful block do not fit, and the backend never picks it there. */
#ifndef FASTLAYERS_CONV2D_DIRECT_FVEC_H
#define FASTLAYERS_CONV2D_DIRECT_FVEC_H

#include <stddef.h>

#include "conv2d_direct_simd.h" /* FL_WIDE_CLONES, fl_vfloat, fl_vdouble */

#define FL_FVEC_MAX_POSITIONS 12

#define FL_FVEC_KERNEL(T, VT, SW, NP)                                                          \
    FL_WIDE_CLONES static void fl_fvec_##T##_s##SW##_##NP(const T *base, const ptrdiff_t *toff,\
                                                          const T *wp, ptrdiff_t nruns,        \
                                                          ptrdiff_t run_taps,                  \
                                                          ptrdiff_t run_stride, const T *init, \
                                                          ptrdiff_t init_step, T *tmp)         \
    {                                                                                          \
        const int L = (int)(64 / sizeof(T));                                                   \
        VT acc[NP][2];                                                                         \
        _Pragma("GCC unroll 12") for (int p = 0; p < (NP); p++) {                              \
            acc[p][0] = *(const VT *)(init + p * init_step);                                   \
            acc[p][1] = *(const VT *)(init + p * init_step + L);                               \
        }                                                                                      \
        /* one loop over the taps (nested loops over runs and taps cost the accumulators their \
         * registers): k steps to the next run after run_taps of them */                       \
        ptrdiff_t k = 0, j = 0;                                                                \
        for (ptrdiff_t t = nruns * run_taps; t > 0; t--) {                                     \
            const T *s = base + toff[k];                                                       \
            const VT w0 = *(const VT *)(wp + k * 2 * L), w1 = *(const VT *)(wp + k * 2 * L + L); \
            _Pragma("GCC unroll 12") for (int p = 0; p < (NP); p++) {                          \
                acc[p][0] += s[p * (SW)] * w0;                                                 \
                acc[p][1] += s[p * (SW)] * w1;                                                 \
            }                                                                                  \
            k++;                                                                               \
            if (++j == run_taps) {                                                             \
                j = 0;                                                                         \
                k += run_stride - run_taps;                                                    \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 12") for (int p = 0; p < (NP); p++) {                              \
            *(VT *)(tmp + p * 2 * L) = acc[p][0];                                              \
            *(VT *)(tmp + p * 2 * L + L) = acc[p][1];                                          \
        }                                                                                      \
    }

#define FL_FVEC_KERNELS(T, VT, SW)                                                             \
    FL_FVEC_KERNEL(T, VT, SW, 1) FL_FVEC_KERNEL(T, VT, SW, 2) FL_FVEC_KERNEL(T, VT, SW, 3)     \
    FL_FVEC_KERNEL(T, VT, SW, 4) FL_FVEC_KERNEL(T, VT, SW, 5) FL_FVEC_KERNEL(T, VT, SW, 6)     \
    FL_FVEC_KERNEL(T, VT, SW, 7) FL_FVEC_KERNEL(T, VT, SW, 8) FL_FVEC_KERNEL(T, VT, SW, 9)     \
    FL_FVEC_KERNEL(T, VT, SW, 10) FL_FVEC_KERNEL(T, VT, SW, 11) FL_FVEC_KERNEL(T, VT, SW, 12)

#define FL_FVEC_TABLE(T, SW)                                                                   \
    {fl_fvec_##T##_s##SW##_1, fl_fvec_##T##_s##SW##_2, fl_fvec_##T##_s##SW##_3,                \
     fl_fvec_##T##_s##SW##_4, fl_fvec_##T##_s##SW##_5, fl_fvec_##T##_s##SW##_6,                \
     fl_fvec_##T##_s##SW##_7, fl_fvec_##T##_s##SW##_8, fl_fvec_##T##_s##SW##_9,                \
     fl_fvec_##T##_s##SW##_10, fl_fvec_##T##_s##SW##_11, fl_fvec_##T##_s##SW##_12}

/* np positions (1 <= np <= FL_FVEC_MAX_POSITIONS) sw input columns apart (sw = 1 or 2: the
 * column stride, a constant in each kernel so the broadcasts' addresses are immediate offsets;
 * the caller's bounds). */
#define FL_FVEC_DISPATCH(T, VT)                                                                \
    FL_FVEC_KERNELS(T, VT, 1)                                                                  \
    FL_FVEC_KERNELS(T, VT, 2)                                                                  \
    static inline void fl_fvec_block_##T(const T *base, const ptrdiff_t *toff, const T *wp,     \
                                         ptrdiff_t nruns, ptrdiff_t run_taps,                  \
                                         ptrdiff_t run_stride, const T *init,                  \
                                         ptrdiff_t init_step, T *tmp, int np, int sw)          \
    {                                                                                          \
        typedef void (*kernel)(const T *, const ptrdiff_t *, const T *, ptrdiff_t, ptrdiff_t,  \
                               ptrdiff_t, const T *, ptrdiff_t, T *);                          \
        static const kernel kernels[2][FL_FVEC_MAX_POSITIONS] = {FL_FVEC_TABLE(T, 1),          \
                                                                 FL_FVEC_TABLE(T, 2)};         \
        kernels[sw - 1][np - 1](base, toff, wp, nruns, run_taps, run_stride, init, init_step, tmp); \
    }

FL_FVEC_DISPATCH(float, fl_vfloat)
FL_FVEC_DISPATCH(double, fl_vdouble)

#endif
