/* The plane loops of conv2d_depthwise.pyx: a convolution whose every output channel reads one
 * input channel (groups == C, MobileNet's depthwise layers), so each output plane is a sum of
 * KH*KW shifted, scaled copies of one input plane, and nothing is gained from a GEMM.
 *
 * Why C: each tap is one pass over an output row, `y[ow] += w * x[ow * SW + iw0]`, which GCC
 * vectorises at stride 1; compiled for AVX-512, AVX2 and the baseline (target_clones.h), the
 * portable build runs it with the CPU's widest vectors. Each loop is written once, as a macro over
 * the element type T (float or double). Sums run in a fixed order (taps in row-major order;
 * the weight gradient's dot products in FL_DW_PARTS partial sums), so results do not depend on the
 * thread count.
 *
 * Geometry as in the conv2d spec: padding (PT, PL) top and left, stride (SH, SW), dilation
 * (DH, DW); the caller (conv2d_depthwise.pyx) passes sizes the spec validated.
 */
#ifndef FASTLAYERS_CONV2D_DEPTHWISE_LOOPS_H
#define FASTLAYERS_CONV2D_DEPTHWISE_LOOPS_H

#include <stddef.h>
#include <string.h>

#include "target_clones.h"

#define FL_DW_PARTS 8

/* The output columns [lo, hi) whose tap at column offset iw0 (= kw * DW - PL) lands inside the
 * input row of W cells. */
static inline void fl_dw_columns(ptrdiff_t iw0, ptrdiff_t SW, ptrdiff_t W, ptrdiff_t OW, ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t first = iw0 >= 0 ? 0 : (-iw0 + SW - 1) / SW;
    ptrdiff_t last = W - 1 - iw0;  /* the largest ow * SW */
    ptrdiff_t end = last >= 0 ? last / SW + 1 : 0;
    *lo = first;
    *hi = end < OW ? end : OW;
    if (*hi < *lo)
        *hi = *lo;
}

/* y[i] += a * x[i]: restrict tells GCC the rows do not overlap, so it vectorises the loop. */
#define FL_DW_AXPY(T)                                                                         \
    static inline void fl_dw_axpy_##T(T *restrict y, const T *restrict x, ptrdiff_t n, T a)   \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            y[i] += a * x[i];                                                                 \
    }

FL_DW_AXPY(float)
FL_DW_AXPY(double)

/* The sum of n values in FL_DW_PARTS partial sums (a fixed order). */
#define FL_DW_SUM(T)                                                                          \
    static inline T fl_dw_sum_##T(const T *v, ptrdiff_t n)                                    \
    {                                                                                         \
        T part[FL_DW_PARTS] = {0}, total = 0;                                                 \
        ptrdiff_t i = 0;                                                                      \
        for (; i + FL_DW_PARTS <= n; i += FL_DW_PARTS)                                        \
            for (int k = 0; k < FL_DW_PARTS; k++)                                             \
                part[k] += v[i + k];                                                          \
        for (; i < n; i++)                                                                    \
            part[0] += v[i];                                                                  \
        for (int k = 0; k < FL_DW_PARTS; k++)                                                 \
            total += part[k];                                                                 \
        return total;                                                                         \
    }

FL_DW_SUM(float)
FL_DW_SUM(double)

/* y (OH, OW) = bias + sum over the taps (kh, kw) of w[kh, kw] * x (H, W) at (oh * SH - PT + kh * DH,
 * ow * SW - PL + kw * DW); taps in the padding add nothing. */
#define FL_DW_FORWARD(T)                                                                      \
    FL_CLONES static void fl_dw_forward_##T(const T *x, const T *w, T bias, T *y, ptrdiff_t H,    \
                                            ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t KH, \
                                            ptrdiff_t KW, ptrdiff_t SH, ptrdiff_t SW, ptrdiff_t PT, \
                                            ptrdiff_t PL, ptrdiff_t DH, ptrdiff_t DW)            \
    {                                                                                         \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                               \
            T *yr = y + oh * OW;                                                              \
            for (ptrdiff_t ow = 0; ow < OW; ow++)                                             \
                yr[ow] = bias;                                                                \
            for (ptrdiff_t kh = 0; kh < KH; kh++) {                                           \
                ptrdiff_t ih = oh * SH - PT + kh * DH;                                        \
                if (ih < 0 || ih >= H)                                                        \
                    continue;                                                                 \
                const T *xr = x + ih * W;                                                     \
                for (ptrdiff_t kw = 0; kw < KW; kw++) {                                       \
                    ptrdiff_t iw0 = kw * DW - PL, lo, hi;                                     \
                    const T wv = w[kh * KW + kw];                                             \
                    fl_dw_columns(iw0, SW, W, OW, &lo, &hi);                                  \
                    if (SW == 1)                                                              \
                        fl_dw_axpy_##T(yr + lo, xr + lo + iw0, hi - lo, wv);                  \
                    else                                                                      \
                        for (ptrdiff_t ow = lo; ow < hi; ow++)                                \
                            yr[ow] += wv * xr[ow * SW + iw0];                                 \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

/* dx (H, W) += the adjoint of FL_DW_FORWARD (without bias) applied to dy (OH, OW): every output
 * gradient sent back to the input cells its taps read. */
#define FL_DW_BACKWARD_INPUT(T)                                                               \
    FL_CLONES static void fl_dw_backward_input_##T(const T *dy, const T *w, T *dx, ptrdiff_t H,   \
                                                   ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,     \
                                                   ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t SH,    \
                                                   ptrdiff_t SW, ptrdiff_t PT, ptrdiff_t PL,    \
                                                   ptrdiff_t DH, ptrdiff_t DW)                  \
    {                                                                                         \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                               \
            const T *gr = dy + oh * OW;                                                       \
            for (ptrdiff_t kh = 0; kh < KH; kh++) {                                           \
                ptrdiff_t ih = oh * SH - PT + kh * DH;                                        \
                if (ih < 0 || ih >= H)                                                        \
                    continue;                                                                 \
                T *xr = dx + ih * W;                                                          \
                for (ptrdiff_t kw = 0; kw < KW; kw++) {                                       \
                    ptrdiff_t iw0 = kw * DW - PL, lo, hi;                                     \
                    const T wv = w[kh * KW + kw];                                             \
                    fl_dw_columns(iw0, SW, W, OW, &lo, &hi);                                  \
                    if (SW == 1)                                                              \
                        fl_dw_axpy_##T(xr + lo + iw0, gr + lo, hi - lo, wv);                  \
                    else                                                                      \
                        for (ptrdiff_t ow = lo; ow < hi; ow++)                                \
                            xr[ow * SW + iw0] += wv * gr[ow];                                 \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

/* dw (KH, KW) += sum over the outputs of dy (OH, OW) times the input cell each tap reads;
 * db += sum of dy. Each tap's sum over a row is a dot product in FL_DW_PARTS partial sums. */
#define FL_DW_BACKWARD_WEIGHT(T)                                                              \
    FL_CLONES static void fl_dw_backward_weight_##T(const T *dy, const T *x, T *dw, T *db,        \
                                                    ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH,      \
                                                    ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW,    \
                                                    ptrdiff_t SH, ptrdiff_t SW, ptrdiff_t PT,    \
                                                    ptrdiff_t PL, ptrdiff_t DH, ptrdiff_t DW)    \
    {                                                                                         \
        ptrdiff_t k;                                                                          \
        *db += fl_dw_sum_##T(dy, OH * OW);                                                    \
        for (ptrdiff_t kh = 0; kh < KH; kh++)                                                 \
            for (ptrdiff_t kw = 0; kw < KW; kw++) {                                           \
                ptrdiff_t iw0 = kw * DW - PL, lo, hi;                                         \
                T part[FL_DW_PARTS] = {0};                                                    \
                fl_dw_columns(iw0, SW, W, OW, &lo, &hi);                                      \
                for (ptrdiff_t oh = 0; oh < OH; oh++) {                                       \
                    ptrdiff_t ih = oh * SH - PT + kh * DH;                                    \
                    if (ih < 0 || ih >= H)                                                    \
                        continue;                                                             \
                    const T *gr = dy + oh * OW, *xr = x + ih * W;                       \
                    ptrdiff_t ow = lo;                                                        \
                    if (SW == 1) {                                                            \
                        for (; ow + FL_DW_PARTS <= hi; ow += FL_DW_PARTS)                     \
                            for (k = 0; k < FL_DW_PARTS; k++)                                 \
                                part[k] += gr[ow + k] * xr[ow + k + iw0];                           \
                    }                                                                         \
                    for (; ow < hi; ow++)                                                     \
                        part[0] += gr[ow] * xr[ow * SW + iw0];                                      \
                }                                                                             \
                T total = 0;                                                                  \
                for (k = 0; k < FL_DW_PARTS; k++)                                             \
                    total += part[k];                                                         \
                dw[kh * KW + kw] += total;                                                    \
            }                                                                                 \
    }

/* Stride 1, the padded-plane forward: on planes too narrow for the blocked loops' vectors
 * (conv2d_depthwise_blocked.h) the row loops above make KH*KW short passes per output row. Here
 * the input plane is first copied, zero-padded, into a plane of Wp = OW + DW*(KW-1) columns and
 * Hp = OH + DH*(KH-1) rows, so that every output row is as wide as the padded one: a tap is then
 * one pass of n = (OH-1)*Wp + OW cells over the whole plane, y[i] += w * xp[i + kh*DH*Wp + kw*DW],
 * with i = oh*Wp + ow; the cells at ow >= OW are scratch, dropped when the rows are copied out.
 * Padding taps add w * 0 (the caller takes im2col when w is not finite, so 0 * inf never
 * arises). The scratch, from the caller: Hp*Wp + OH*Wp values. */
/* The padded plane's width Wp and height Hp and the cells n of a tap's pass, from the loop's
 * arguments OH, OW, KH, KW, DH, DW. */
#define FL_DW_PADDED_SIZES                                                                    \
    const ptrdiff_t Wp = OW + DW * (KW - 1), Hp = OH + DH * (KH - 1), n = (OH - 1) * Wp + OW

/* xp (Hp, Wp) = x (H, W) placed at (PT, PL), zero elsewhere; rows and columns past the padded
 * plane (bottom and right padding smaller than the taps' reach) are not read by any output. */
#define FL_DW_PAD(T)                                                                          \
    static void fl_dw_pad_##T(const T *x, T *xp, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Hp, ptrdiff_t Wp, \
                              ptrdiff_t PT, ptrdiff_t PL)                                     \
    {                                                                                         \
        const ptrdiff_t cols = W < Wp - PL ? W : Wp - PL;                                     \
        memset(xp, 0, Hp * Wp * sizeof(T));                                                   \
        for (ptrdiff_t ih = 0; ih < H && ih + PT < Hp; ih++)                                  \
            if (cols > 0)                                                                     \
                memcpy(xp + (ih + PT) * Wp + PL, x + ih * W, cols * sizeof(T));               \
    }

/* FL_DW_FORWARD at stride 1 through the padded plane. */
#define FL_DW_PADDED_FORWARD(T)                                                               \
    FL_CLONES static void fl_dw_padded_forward_##T(const T *x, const T *w, T bias, T *y, ptrdiff_t H, \
                                                   ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,     \
                                                   ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t PT,    \
                                                   ptrdiff_t PL, ptrdiff_t DH, ptrdiff_t DW, T *scratch) \
    {                                                                                         \
        FL_DW_PADDED_SIZES;                                                                   \
        T *xp = scratch, *yp = scratch + Hp * Wp;                                             \
        fl_dw_pad_##T(x, xp, H, W, Hp, Wp, PT, PL);                                           \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            yp[i] = bias;                                                                     \
        for (ptrdiff_t kh = 0; kh < KH; kh++)                                                 \
            for (ptrdiff_t kw = 0; kw < KW; kw++)                                             \
                fl_dw_axpy_##T(yp, xp + kh * DH * Wp + kw * DW, n, w[kh * KW + kw]);          \
        for (ptrdiff_t oh = 0; oh < OH; oh++)                                                 \
            memcpy(y + oh * OW, yp + oh * Wp, OW * sizeof(T));                                \
    }

FL_DW_FORWARD(float)
FL_DW_FORWARD(double)
FL_DW_BACKWARD_INPUT(float)
FL_DW_BACKWARD_INPUT(double)
FL_DW_BACKWARD_WEIGHT(float)
FL_DW_BACKWARD_WEIGHT(double)
FL_DW_PAD(float)
FL_DW_PAD(double)
FL_DW_PADDED_FORWARD(float)
FL_DW_PADDED_FORWARD(double)

#endif
