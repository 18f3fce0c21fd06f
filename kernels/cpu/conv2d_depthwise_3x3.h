/* MobileNet's depthwise layer, for conv2d_depthwise.pyx: a 3x3 filter at stride 1, dilation 1,
 * padding 1 on every side (so the output plane is the input's size, H x W, W at least one
 * vector), forward, data gradient (the forward of dy with the filter mirrored) and weight
 * gradient, read straight from the planes with no padded copy. Rows narrower than that (at least
 * half a vector, e.g. MobileNet's 7x7 planes of floats) take the same loops on 16-byte vectors
 * (the *_narrow kernels).
 *
 * Each vector column of the plane (a strip of L lanes of the vector, L columns, at ow = 0, L, 2L, ...,
 * the last at W - L, overlapping its neighbour when L does not divide W, as in
 * conv2d_depthwise_blocked.h) is swept down the rows. An input row's three vectors, at columns
 * ow - 1, ow and ow + 1, are loaded once and multiplied into the three output rows that read
 * them, with the nine weights held in registers: 3 loads and 9 multiply-adds per output vector,
 * where the blocked loops' tap loop does 9 and 9 plus the padded copy. At the plane's left and
 * right edges the vector at ow - 1 (ow + 1) is the one at ow shifted by a lane, the padding's zero
 * shifted in: the loads never leave the plane. The rows above the first and below the last (the
 * padding) add nothing and are skipped.
 *
 * Sums in a fixed order: an output is bias + its taps of row kh = 0, 1, 2 (kw = 0, 1, 2 within a
 * row); a weight-gradient sum runs over the strips, then the rows, in order, its lanes added in
 * order at the end. Results do not depend on the thread count.
 */
#ifndef FASTLAYERS_CONV2D_DEPTHWISE_3X3_H
#define FASTLAYERS_CONV2D_DEPTHWISE_3X3_H

#include <stddef.h>

#include "conv2d_depthwise_blocked.h"
#include "target_clones.h"

/* The vectors fl_dwb_v##K of conv2d_depthwise_blocked.h, by kind K, and their lanes' indices
 * fl_dwb_i##K. */

/* v moved one lane up (lane l takes lane l - 1, lane 0 a zero) or down (lane l takes l + 1, the
 * top lane a zero): the vector one column left (right) of v at the plane's edge. */
#define FL_DW3_SHIFT(K, v, ...) __builtin_shuffle((v), (fl_dwb_v##K){0}, (fl_dwb_i##K){__VA_ARGS__})
#define FL_DW3_UP_float(v) FL_DW3_SHIFT(float, v, 8, 0, 1, 2, 3, 4, 5, 6)
#define FL_DW3_DOWN_float(v) FL_DW3_SHIFT(float, v, 1, 2, 3, 4, 5, 6, 7, 8)
#define FL_DW3_UP_double(v) FL_DW3_SHIFT(double, v, 4, 0, 1, 2)
#define FL_DW3_DOWN_double(v) FL_DW3_SHIFT(double, v, 1, 2, 3, 4)
#define FL_DW3_UP_float_narrow(v) FL_DW3_SHIFT(float_narrow, v, 4, 0, 1, 2)
#define FL_DW3_DOWN_float_narrow(v) FL_DW3_SHIFT(float_narrow, v, 1, 2, 3, 4)
#define FL_DW3_UP_double_narrow(v) FL_DW3_SHIFT(double_narrow, v, 2, 0)
#define FL_DW3_DOWN_double_narrow(v) FL_DW3_SHIFT(double_narrow, v, 1, 2)

/* The vectors left (x0) and right (x2) of x1, the one at p: loaded, or shifted at an edge. */
#define FL_DW3_LEFT_LOADED(K, p, v) (*(const VT *)((p) - 1))
#define FL_DW3_LEFT_EDGE(K, p, v) FL_DW3_UP_##K(v)
#define FL_DW3_RIGHT_LOADED(K, p, v) (*(const VT *)((p) + 1))
#define FL_DW3_RIGHT_EDGE(K, p, v) FL_DW3_DOWN_##K(v)

/* x0, x1, x2 = the three vectors of the row at p seen by the strip. */
#define FL_DW3_ROW(K, LEFT, RIGHT, p)                                                         \
    do {                                                                                      \
        x1 = *(const VT *)(p);                                                                \
        x0 = LEFT(K, p, x1);                                                                  \
        x2 = RIGHT(K, p, x1);                                                                 \
    } while (0)

/* One strip of the forward (at column ow) over the band of output rows [r0, r1): output row r - 1
 * is finished by input row r, row r gets its middle taps, row r + 1 starts with its top taps
 * (above and below: the rows in progress). */
#define FL_DW3_FORWARD_STRIP(K, LEFT, RIGHT)                                                  \
    do {                                                                                      \
        const ST *s = x + ow;                                                                 \
        ST *o = out + ow;                                                                      \
        VT x0, x1, x2, above = (VT){0} + bias;                                                \
        if (r0 > 0) {                                                                         \
            FL_DW3_ROW(K, LEFT, RIGHT, s + (r0 - 1) * W);                                     \
            above = bias + w00 * x0 + w01 * x1 + w02 * x2;                                    \
        }                                                                                     \
        FL_DW3_ROW(K, LEFT, RIGHT, s + r0 * W);                                               \
        above = above + w10 * x0 + w11 * x1 + w12 * x2;                                       \
        VT below = bias + w00 * x0 + w01 * x1 + w02 * x2;                                     \
        for (ptrdiff_t r = r0 + 1; r <= r1 && r < H; r++) {                                   \
            FL_DW3_ROW(K, LEFT, RIGHT, s + r * W);                                            \
            *(VT *)(o + (r - 1) * W) = above + w20 * x0 + w21 * x1 + w22 * x2;                \
            above = below + w10 * x0 + w11 * x1 + w12 * x2;                                   \
            below = bias + w00 * x0 + w01 * x1 + w02 * x2;                                    \
        }                                                                                     \
        if (r1 == H)                                                                          \
            *(VT *)(o + (H - 1) * W) = above;                                                 \
    } while (0)

/* The rows of a band: about FL_DW3_BAND_BYTES of a plane's rows, which stay in L1 while every
 * strip sweeps them (a whole 112-wide plane does not). */
#define FL_DW3_BAND_BYTES 1024
#define FL_DW3_BAND_ROWS(W) (FL_DW3_BAND_BYTES / ((W) * (ptrdiff_t)sizeof(ST)) > 2 ? FL_DW3_BAND_BYTES / ((W) * (ptrdiff_t)sizeof(ST)) : 2)

/* The bands [r0, r1) of the plane's H rows, and in each its strips, each with its edge loads:
 * STRIP(K, LEFT, RIGHT) at column ow. */
#define FL_DW3_STRIPS(K, STRIP)                                                               \
    for (ptrdiff_t r0 = 0, band = FL_DW3_BAND_ROWS(W)    ; r0 < H; r0 += band) {               \
        const ptrdiff_t r1 = r0 + band < H ? r0 + band : H;                                   \
        for (ptrdiff_t ow = 0;; ow = ow + 2 * L <= W ? ow + L : W - L) {                      \
            const int first = ow == 0, last = ow + L == W;                                    \
            if (first && last)                                                                \
                STRIP(K, FL_DW3_LEFT_EDGE, FL_DW3_RIGHT_EDGE);                                \
            else if (first)                                                                   \
                STRIP(K, FL_DW3_LEFT_EDGE, FL_DW3_RIGHT_LOADED);                              \
            else if (last)                                                                    \
                STRIP(K, FL_DW3_LEFT_LOADED, FL_DW3_RIGHT_EDGE);                              \
            else                                                                              \
                STRIP(K, FL_DW3_LEFT_LOADED, FL_DW3_RIGHT_LOADED);                            \
            if (last)                                                                         \
                break;                                                                        \
        }                                                                                     \
    }

/* out (H, W) = bias + the 3x3 filter tw (row-major) over x (H, W) padded by 1; W >= L. */
#define FL_DW3_FORWARD(K, T)                                                                  \
    FL_CLONES static void fl_dw3_forward_##K(const T *x, const T *tw, T bias, T *out, ptrdiff_t H, \
                                             ptrdiff_t W)                                     \
    {                                                                                         \
        typedef T ST;                                                                         \
        typedef fl_dwb_v##K VT;                                                               \
        const ptrdiff_t L = sizeof(VT) / sizeof(T);                                           \
        const VT w00 = (VT){0} + tw[0], w01 = (VT){0} + tw[1], w02 = (VT){0} + tw[2];         \
        const VT w10 = (VT){0} + tw[3], w11 = (VT){0} + tw[4], w12 = (VT){0} + tw[5];         \
        const VT w20 = (VT){0} + tw[6], w21 = (VT){0} + tw[7], w22 = (VT){0} + tw[8];         \
        FL_DW3_STRIPS(K, FL_DW3_FORWARD_STRIP)                                                 \
    }

/* Input row r of a weight-gradient strip: it meets dy rows r + 1, r and r - 1 (gn, gc, gp)
 * through the filter rows 0, 1, 2, where those rows exist (NEXT, PREV: a missing row is no term,
 * not zero times the input, which may be infinite). A strip that overlaps its neighbour keeps
 * only its new lanes of the input (and of dy for db). */
#define FL_DW3_WEIGHT_ROW(K, LEFT, RIGHT, r, NEXT, PREV)                                      \
    do {                                                                                      \
        VT x0, x1, x2, gn = {0}, counted = gc;                                                \
        FL_DW3_ROW(K, LEFT, RIGHT, s + (r) * W);                                              \
        if (partial) {                                                                        \
            x0 = FL_DWB_KEEP(K, x0, keep), x1 = FL_DWB_KEEP(K, x1, keep);                     \
            x2 = FL_DWB_KEEP(K, x2, keep), counted = FL_DWB_KEEP(K, gc, keep);                \
        }                                                                                     \
        if (NEXT) {                                                                           \
            gn = *(const VT *)(g + ((r) + 1) * W);                                            \
            a00 += gn * x0, a01 += gn * x1, a02 += gn * x2;                                   \
        }                                                                                     \
        a10 += gc * x0, a11 += gc * x1, a12 += gc * x2;                                       \
        if (PREV)                                                                             \
            a20 += gp * x0, a21 += gp * x1, a22 += gp * x2;                                   \
        ab += counted;                                                                        \
        gp = gc, gc = gn;                                                                     \
    } while (0)

/* One strip of the weight gradient over the band of input rows [r0, r1): the plane's first and
 * last rows apart, the rows between with all three dy rows. */
#define FL_DW3_WEIGHT_STRIP(K, LEFT, RIGHT)                                                   \
    do {                                                                                      \
        const int partial = ow + L == W && full != W;                                         \
        const ST *s = x + ow, *g = dy + ow;                                                   \
        VT gp = {0}, gc = *(const VT *)(g + r0 * W);                                          \
        ptrdiff_t r = r0;                                                                     \
        if (r0 > 0)                                                                           \
            gp = *(const VT *)(g + (r0 - 1) * W);                                             \
        else {                                                                                \
            FL_DW3_WEIGHT_ROW(K, LEFT, RIGHT, 0, H > 1, 0);                                   \
            r = 1;                                                                            \
        }                                                                                     \
        for (; r < r1 && r < H - 1; r++)                                                      \
            FL_DW3_WEIGHT_ROW(K, LEFT, RIGHT, r, 1, 1);                                       \
        if (r < r1)                                                                           \
            FL_DW3_WEIGHT_ROW(K, LEFT, RIGHT, r, 0, 1);                                       \
    } while (0)

/* dw (3, 3) += sum over the cells of dy (H, W) of dy times the input cell each tap reads in
 * x (H, W) padded by 1, and db += sum of dy; W >= L, dy finite (the padding's zeros, shifted
 * into the edge vectors, are multiplied by dy). */
#define FL_DW3_WEIGHT(K, T)                                                                   \
    FL_CLONES static void fl_dw3_weight_##K(const T *dy, const T *x, T *dw, T *db, ptrdiff_t H, \
                                            ptrdiff_t W)                                      \
    {                                                                                         \
        typedef T ST;                                                                         \
        typedef fl_dwb_v##K VT;                                                               \
        const ptrdiff_t L = sizeof(VT) / sizeof(T), full = W / L * L;                         \
        VT a00 = {0}, a01 = {0}, a02 = {0}, a10 = {0}, a11 = {0}, a12 = {0};                  \
        VT a20 = {0}, a21 = {0}, a22 = {0}, ab = {0};                                         \
        fl_dwb_i##K keep;                                                                     \
        for (ptrdiff_t l = 0; l < L; l++)                                                     \
            keep[l] = W - L + l >= full ? -1 : 0;                                             \
        FL_DW3_STRIPS(K, FL_DW3_WEIGHT_STRIP)                                                   \
        const VT acc[10] = {a00, a01, a02, a10, a11, a12, a20, a21, a22, ab};                 \
        for (int k = 0; k < 10; k++) {                                                        \
            T total = 0;                                                                      \
            for (ptrdiff_t l = 0; l < L; l++)                                                 \
                total += acc[k][l];                                                           \
            if (k < 9)                                                                        \
                dw[k] += total;                                                               \
            else                                                                              \
                *db += total;                                                                 \
        }                                                                                     \
    }

FL_DW3_FORWARD(float, float)
FL_DW3_FORWARD(double, double)
FL_DW3_FORWARD(float_narrow, float)
FL_DW3_FORWARD(double_narrow, double)
FL_DW3_WEIGHT(float, float)
FL_DW3_WEIGHT(double, double)
FL_DW3_WEIGHT(float_narrow, float)
FL_DW3_WEIGHT(double_narrow, double)

#endif
