/* The transforms of Winograd's minimal filtering F(2x2, 3x3) for conv2d_winograd.pyx: a 3x3,
 * stride-1 convolution computed on 4x4 input tiles, each giving a 2x2 output tile with 16
 * multiplications per (filter, channel) instead of 36 (Lavin and Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2016):
 *
 *     Y = A^T [ (G g G^T) .* (B^T d B) ] A
 *
 * with d a 4x4 input tile, g a 3x3 filter and
 *
 *     B^T = [1  0 -1  0]    G = [ 1    0    0 ]    A^T = [1 1  1  0]
 *           [0  1  1  0]        [1/2  1/2  1/2]          [0 1 -1 -1]
 *           [0 -1  1  0]        [1/2 -1/2  1/2]
 *           [0  1  0 -1]        [ 0    0    1 ]
 *
 * The elementwise products summed over the channels are 16 GEMMs, one per position xi of the
 * 4x4 transformed tile (the caller runs them). B and A hold only 0 and +-1, so the input and
 * output transforms add and subtract; G's halves are exact in binary. Here: the input transform
 * of one row of tiles into its columns of V (16, Cg, P) and the output transform of its columns
 * of M (16, Fg, P) into y, for one image and one group, with the input's zero padding applied as
 * the tiles are read. Each loop is
 * written once, as a macro over the element type T (float or double), and compiled for AVX-512,
 * AVX2 and the baseline (target_clones.h).
 */
#ifndef FASTLAYERS_WINOGRAD_F2X3_H
#define FASTLAYERS_WINOGRAD_F2X3_H

#include <stddef.h>
#include <string.h>

#include "target_clones.h"

/* V[xi][c][j] = (B^T d B)[xi] for the tiles j of tile row i of one image (V at the row's first
 * tile, ``plane`` values between positions xi, ``P`` between channels), d the 4x4 patch of
 * channel c at input rows 2i - PT .., columns 2j - PL .. (zero outside the H x W input).
 * Vectorised along the tile row:
 * its 4 input rows are copied, zero-padded, into ``rows4`` (4 x (2 tiles_w + 2)), B^T combines
 * them row against row into ``t`` (the same size), and B then combines columns 2j .. 2j + 3 of
 * each row of t into the 16 positions, stored contiguously along the tile row. */
#define FL_WINO_INPUT(T)                                                                      \
    FL_CLONES static void fl_wino_input_##T(const T *x, T *V, ptrdiff_t P, ptrdiff_t plane, T *scratch, \
                                            ptrdiff_t Cg, ptrdiff_t H, ptrdiff_t W, ptrdiff_t i,  \
                                            ptrdiff_t tiles_w, ptrdiff_t PT, ptrdiff_t PL)    \
    {                                                                                         \
        const ptrdiff_t len = 2 * tiles_w + 2;                                                \
        T *d = scratch, *t = scratch + 4 * len;                                               \
        /* the input columns a tile row reads: [-PL, -PL + len), of which [lo, hi) lie inside */ \
        const ptrdiff_t lo = PL < len ? PL : len, end = PL + W < len ? PL + W : len;          \
        const ptrdiff_t hi = end > lo ? end : lo;                                             \
        for (ptrdiff_t c = 0; c < Cg; c++) {                                                  \
            const T *xc = x + c * H * W;                                                      \
            {                                                                                 \
                for (int r = 0; r < 4; r++) {                                                 \
                    ptrdiff_t ih = 2 * i - PT + r;                                            \
                    T *dr = d + r * len;                                                      \
                    if (ih < 0 || ih >= H || hi == lo) {                                      \
                        memset(dr, 0, len * sizeof(T));                                       \
                        continue;                                                             \
                    }                                                                         \
                    memset(dr, 0, lo * sizeof(T));                                            \
                    memcpy(dr + lo, xc + ih * W + (lo - PL), (hi - lo) * sizeof(T));          \
                    memset(dr + hi, 0, (len - hi) * sizeof(T));                               \
                }                                                                             \
                const T *d0 = d, *d1 = d + len, *d2 = d + 2 * len, *d3 = d + 3 * len;         \
                T *t0 = t, *t1 = t + len, *t2 = t + 2 * len, *t3 = t + 3 * len;               \
                for (ptrdiff_t k = 0; k < len; k++) { /* t = B^T d */                         \
                    t0[k] = d0[k] - d2[k];                                                    \
                    t1[k] = d1[k] + d2[k];                                                    \
                    t2[k] = d2[k] - d1[k];                                                    \
                    t3[k] = d1[k] - d3[k];                                                    \
                }                                                                             \
                T *v = V + c * P;                                                             \
                for (int r = 0; r < 4; r++) { /* (B^T d) B, row r of every tile */            \
                    const T *tr = t + r * len;                                                \
                    T *v0 = v + (4 * r) * plane, *v1 = v0 + plane, *v2 = v1 + plane, *v3 = v2 + plane; \
                    for (ptrdiff_t j = 0; j < tiles_w; j++) {                                 \
                        v0[j] = tr[2 * j] - tr[2 * j + 2];                                    \
                        v1[j] = tr[2 * j + 1] + tr[2 * j + 2];                                \
                        v2[j] = tr[2 * j + 2] - tr[2 * j + 1];                                \
                        v3[j] = tr[2 * j + 1] - tr[2 * j + 3];                                \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

/* y[f] over the output rows of tile row i of one image = A^T M[.][f][j] A (+ bias[f]) (M at the
 * row's first tile, ``plane`` values between positions, ``P`` between filters), vectorised along
 * the tile row: A^T combines the 16 positions into two rows of 4 (``u``, 8 x tiles_w),
 * then A gives each output row's even and odd columns. The second column of a last tile past OW
 * and the second row past OH (odd output sizes) are cut. */
#define FL_WINO_OUTPUT(T)                                                                     \
    FL_CLONES static void fl_wino_output_##T(const T *M, ptrdiff_t P, ptrdiff_t plane, T *y, const T *bias, \
                                             T *scratch, ptrdiff_t Fg, ptrdiff_t OH, ptrdiff_t OW, \
                                             ptrdiff_t i, ptrdiff_t tiles_w)                  \
    {                                                                                         \
        const ptrdiff_t odd = OW / 2;                                                         \
        T *u = scratch;                                                                       \
        for (ptrdiff_t f = 0; f < Fg; f++) {                                                  \
            T *yf = y + f * OH * OW;                                                          \
            const T b = bias ? bias[f] : (T)0;                                                \
            {                                                                                 \
                const T *m = M + f * P;                                                       \
                for (int s = 0; s < 4; s++) { /* u = A^T m */                                 \
                    const T *m0 = m + s * plane, *m1 = m0 + 4 * plane, *m2 = m1 + 4 * plane, *m3 = m2 + 4 * plane; \
                    T *u0 = u + s * tiles_w, *u1 = u + (4 + s) * tiles_w;                     \
                    for (ptrdiff_t j = 0; j < tiles_w; j++) {                                 \
                        u0[j] = m0[j] + m1[j] + m2[j];                                        \
                        u1[j] = m1[j] - m2[j] - m3[j];                                        \
                    }                                                                         \
                }                                                                             \
                ptrdiff_t oh = 2 * i;                                                         \
                for (int r = 0; r < 2 && oh + r < OH; r++) { /* (A^T m) A */                  \
                    const T *a0 = u + 4 * r * tiles_w, *a1 = a0 + tiles_w, *a2 = a1 + tiles_w, *a3 = a2 + tiles_w; \
                    T *yr = yf + (oh + r) * OW;                                               \
                    for (ptrdiff_t j = 0; j < tiles_w; j++)                                   \
                        yr[2 * j] = a0[j] + a1[j] + a2[j] + b;                                \
                    for (ptrdiff_t j = 0; j < odd; j++)                                       \
                        yr[2 * j + 1] = a1[j] - a2[j] - a3[j] + b;                            \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

FL_WINO_INPUT(float)
FL_WINO_INPUT(double)
FL_WINO_OUTPUT(float)
FL_WINO_OUTPUT(double)

#endif
