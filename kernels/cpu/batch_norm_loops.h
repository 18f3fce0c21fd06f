/* The loops of batch_norm.pyx over one (image, channel) plane of S contiguous values.
 *
 * Why C: the sums run in double with eight partial accumulators, which GCC vectorises (one
 * accumulator would chain every addition on the last one's latency, and GCC may not reorder a
 * floating-point sum by itself). The order of the additions is fixed by the code, so results do
 * not depend on the thread count. Each loop is written once, as a macro over the element type T
 * (float or double), and compiled for AVX-512, AVX2 and the baseline (target_clones.h).
 */
#ifndef FASTLAYERS_BATCH_NORM_LOOPS_H
#define FASTLAYERS_BATCH_NORM_LOOPS_H

#include <stddef.h>

#include "target_clones.h"

#define FL_BN_PARTS 8
/* conv2d_winograd.pyx takes the plane sum alone (its bias gradient). */
#define FL_BN_MAYBE_UNUSED __attribute__((unused))

/* sum of x[i] - shift: with shift the channel's mean, the sum of squares of deviations (square=1). */
#define FL_BN_SUM(T)                                                                          \
    FL_CLONES FL_BN_MAYBE_UNUSED static double fl_bn_sum_##T(const T *x, ptrdiff_t n, double shift, int square)  \
    {                                                                                         \
        double part[FL_BN_PARTS] = {0};                                                       \
        ptrdiff_t i = 0, k;                                                                   \
        if (square) {                                                                         \
            for (; i + FL_BN_PARTS <= n; i += FL_BN_PARTS)                                    \
                for (k = 0; k < FL_BN_PARTS; k++) {                                           \
                    double d = (double)x[i + k] - shift;                                      \
                    part[k] += d * d;                                                         \
                }                                                                             \
        } else {                                                                              \
            for (; i + FL_BN_PARTS <= n; i += FL_BN_PARTS)                                    \
                for (k = 0; k < FL_BN_PARTS; k++)                                             \
                    part[k] += (double)x[i + k] - shift;                                      \
        }                                                                                     \
        for (; i < n; i++) {                                                                  \
            double d = (double)x[i] - shift;                                                  \
            part[0] += square ? d * d : d;                                                    \
        }                                                                                     \
        double total = 0;                                                                     \
        for (k = 0; k < FL_BN_PARTS; k++)                                                     \
            total += part[k];                                                                 \
        return total;                                                                         \
    }

/* sums[0] += sum of dy, sums[1] += sum of dy * (x - mean). */
#define FL_BN_GRAD_SUMS(T)                                                                    \
    FL_CLONES FL_BN_MAYBE_UNUSED static void fl_bn_grad_sums_##T(const T *dy, const T *x, ptrdiff_t n, double mean, \
                                              double *sums)                                   \
    {                                                                                         \
        double s0[FL_BN_PARTS] = {0}, s1[FL_BN_PARTS] = {0};                                  \
        ptrdiff_t i = 0, k;                                                                   \
        for (; i + FL_BN_PARTS <= n; i += FL_BN_PARTS)                                        \
            for (k = 0; k < FL_BN_PARTS; k++) {                                               \
                s0[k] += dy[i + k];                                                           \
                s1[k] += (double)dy[i + k] * ((double)x[i + k] - mean);                       \
            }                                                                                 \
        for (; i < n; i++) {                                                                  \
            s0[0] += dy[i];                                                                   \
            s1[0] += (double)dy[i] * ((double)x[i] - mean);                                   \
        }                                                                                     \
        for (k = 0; k < FL_BN_PARTS; k++) {                                                   \
            sums[0] += s0[k];                                                                 \
            sums[1] += s1[k];                                                                 \
        }                                                                                     \
    }

/* y = (x - mean) * scale + shift, elementwise in T: the forward, and (mean 0, shift 0) the
 * backward's input gradient in eval mode. */
#define FL_BN_AFFINE(T)                                                                       \
    FL_CLONES FL_BN_MAYBE_UNUSED static void fl_bn_affine_##T(const T *x, T *y, ptrdiff_t n, T mean, T scale, T shift) \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            y[i] = (x[i] - mean) * scale + shift;                                             \
    }

/* dx = a * dy + b * (x - mean) + c, elementwise in T: the input gradient in training mode. */
#define FL_BN_GRAD_INPUT(T)                                                                   \
    FL_CLONES FL_BN_MAYBE_UNUSED static void fl_bn_grad_input_##T(const T *dy, const T *x, T *dx, ptrdiff_t n, T mean, \
                                               T a, T b, T c)                                 \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            dx[i] = a * dy[i] + b * (x[i] - mean) + c;                                        \
    }

FL_BN_SUM(float)
FL_BN_SUM(double)
FL_BN_GRAD_SUMS(float)
FL_BN_GRAD_SUMS(double)
FL_BN_AFFINE(float)
FL_BN_AFFINE(double)
FL_BN_GRAD_INPUT(float)
FL_BN_GRAD_INPUT(double)

#endif
