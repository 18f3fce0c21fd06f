/* The transforms of Winograd's minimal filtering F(4x4, 3x3) for conv2d_winograd.pyx: a 3x3,
 * stride-1 convolution computed on 6x6 input tiles, each giving a 4x4 output tile with 36
 * multiplications per (filter, channel) instead of 144 (Lavin and Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2016; interpolation points 0, 1, -1, 2, -2 and infinity):
 *
 *     Y = A^T [ (G g G^T) .* (B^T d B) ] A
 *
 * with d a 6x6 input tile, g a 3x3 filter and
 *
 *     B^T = [4  0 -5  0  1  0]    G = [ 1/4     0     0  ]    A^T = [1  1  1  1  1  0]
 *           [0 -4 -4  1  1  0]        [-1/6  -1/6  -1/6  ]          [0  1 -1  2 -2  0]
 *           [0  4 -4 -1  1  0]        [-1/6   1/6  -1/6  ]          [0  1  1  4  4  0]
 *           [0 -2 -1  2  1  0]        [1/24  1/12   1/6  ]          [0  1 -1  8 -8  1]
 *           [0  2 -1 -2  1  0]        [1/24 -1/12   1/6  ]
 *           [0  4  0 -5  0  1]        [  0     0     1   ]
 *
 * The elementwise products summed over the channels are 36 GEMMs, one per position xi of the
 * 6x6 transformed tile (the caller runs them).
 * Here: the filter transform, in double, and the input transform of one row of tiles into its columns of V (36, Cg, P) and the output
 * transform of its columns of M (36, Fg, P) into y, for one image and one group, with the input's
 * zero padding applied as the tiles are read. Both are vectorised along the tile row: tile j
 * reads input columns 4j .. 4j + 5, so the rows are kept split into their 4 column phases
 * (phase q holds columns 4j + q at index j), and every step is an elementwise pass over
 * contiguous arrays. Each loop is written once, as a macro over the element type T (float or
 * double), and compiled for AVX-512, AVX2 and the baseline (target_clones.h).
 */
#ifndef FASTLAYERS_WINOGRAD_F4X3_H
#define FASTLAYERS_WINOGRAD_F4X3_H

#include <stddef.h>

#include "target_clones.h"

/* Values of the transforms' row scratch for ``tiles_w`` tiles: 6 phase-split input rows and
 * their B^T combination (6 x 4 x (tiles_w + 1) each); the output transform uses less. */
static inline ptrdiff_t fl_wino_scratch(ptrdiff_t tiles_w) { return 48 * (tiles_w + 1); }

/* G applied to three vectors (a column or a row of a filter), in double: 1/6, 1/12 and 1/24
 * are rounded there, far below a float32 result's rounding. */
#define FL_WINO_G(a, b, c, t0, t1, t2, t3, t4, t5)                                            \
    do {                                                                                      \
        const double p_ = (a) + (c), q_ = (a) * (1.0 / 24) + (c) * (1.0 / 6);                 \
        t0 = (a) * 0.25;                                                                      \
        t1 = (p_ + (b)) * (-1.0 / 6);                                                         \
        t2 = (p_ - (b)) * (-1.0 / 6);                                                         \
        t3 = q_ + (b) * (1.0 / 12);                                                           \
        t4 = q_ - (b) * (1.0 / 12);                                                           \
        t5 = (c);                                                                             \
    } while (0)

/* U[xi][c] = (G w[c] G^T)[xi] for the Cg channels of one filter w (Cg x 3 x 3, contiguous), U
 * at the filter's row of position 0, ``plane`` values between positions: in double, rounded
 * once to T. Blocks of channels are first transposed to tap-major doubles, so that every step
 * is a vector loop over channels. */
#define FL_WINO_FILTER_BLOCK 64
#define FL_WINO_FILTER(T)                                                                     \
    FL_CLONES static void fl_wino_filter_##T(const T *w, T *U, ptrdiff_t plane, ptrdiff_t Cg) \
    {                                                                                         \
        double g[9][FL_WINO_FILTER_BLOCK], t[18][FL_WINO_FILTER_BLOCK];                      \
        for (ptrdiff_t c0 = 0; c0 < Cg; c0 += FL_WINO_FILTER_BLOCK) {                         \
            const ptrdiff_t nc = Cg - c0 < FL_WINO_FILTER_BLOCK ? Cg - c0 : FL_WINO_FILTER_BLOCK; \
            for (ptrdiff_t c = 0; c < nc; c++)                                                \
                for (int k = 0; k < 9; k++)                                                   \
                    g[k][c] = (double)w[9 * (c0 + c) + k];                                    \
            for (int k = 0; k < 3; k++) /* t = G g, column k: t[3r + k] */                    \
                for (ptrdiff_t c = 0; c < nc; c++)                                            \
                    FL_WINO_G(g[k][c], g[3 + k][c], g[6 + k][c], t[k][c], t[3 + k][c], t[6 + k][c], \
                              t[9 + k][c], t[12 + k][c], t[15 + k][c]);                       \
            for (int r = 0; r < 6; r++) { /* (G g) G^T, row r */                              \
                T *u0 = U + 6 * r * plane + c0, *u1 = u0 + plane, *u2 = u1 + plane;           \
                T *u3 = u2 + plane, *u4 = u3 + plane, *u5 = u4 + plane;                       \
                for (ptrdiff_t c = 0; c < nc; c++) {                                          \
                    double o0, o1, o2, o3, o4, o5;                                            \
                    FL_WINO_G(t[3 * r][c], t[3 * r + 1][c], t[3 * r + 2][c], o0, o1, o2, o3, o4, o5); \
                    u0[c] = (T)o0;                                                            \
                    u1[c] = (T)o1;                                                            \
                    u2[c] = (T)o2;                                                            \
                    u3[c] = (T)o3;                                                            \
                    u4[c] = (T)o4;                                                            \
                    u5[c] = (T)o5;                                                            \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

/* B^T applied to six vectors (rows of a tile, or its columns): the 36 products' input side. */
#define FL_WINO_BT(T, d0, d1, d2, d3, d4, d5, t0, t1, t2, t3, t4, t5)                         \
    do {                                                                                      \
        const T s1_ = (d4) - 4 * (d2), s2_ = (d3) - 4 * (d1);                                 \
        const T s3_ = (d4) - (d2), s4_ = 2 * ((d3) - (d1));                                   \
        t0 = 4 * (d0) - 5 * (d2) + (d4);                                                      \
        t1 = s1_ + s2_;                                                                       \
        t2 = s1_ - s2_;                                                                       \
        t3 = s3_ + s4_;                                                                       \
        t4 = s3_ - s4_;                                                                       \
        t5 = 4 * (d1) - 5 * (d3) + (d5);                                                      \
    } while (0)

/* V[xi][c][j] = (B^T d B)[xi] for the tiles j of tile row i of one image (V at the row's first
 * tile, ``plane`` values between positions xi, ``P`` between channels), d the 6x6 patch of
 * channel c at input rows 4i - PT .., columns 4j - PL .. (zero outside the H x W input). Each
 * of the 6 input rows is copied, zero-padded and split into its column phases, into ``d``
 * (6 x 4 x (tiles_w + 1)); B^T combines them row against row into ``t`` (the same size); B then
 * combines phases 0-3 at j and 0-1 at j + 1 (columns 4j .. 4j + 5) of each row of t. */
#define FL_WINO_INPUT(T)                                                                      \
    FL_CLONES static void fl_wino_input_##T(const T *x, T *V, ptrdiff_t P, ptrdiff_t plane, T *scratch, \
                                            ptrdiff_t Cg, ptrdiff_t H, ptrdiff_t W, ptrdiff_t i,  \
                                            ptrdiff_t tiles_w, ptrdiff_t PT, ptrdiff_t PL)    \
    {                                                                                         \
        const ptrdiff_t n = tiles_w + 1, row = 4 * n; /* a phase's and a row's length */      \
        T *d = scratch, *t = scratch + 6 * row;                                               \
        /* phase q, index j reads input column 4j + q - PL: inside for j in [lo[q], hi[q]) */ \
        ptrdiff_t lo[4], hi[4];                                                               \
        for (int q = 0; q < 4; q++) {                                                         \
            ptrdiff_t a = PL - q > 0 ? (PL - q + 3) / 4 : 0;                                  \
            ptrdiff_t b = W + PL - q > 0 ? (W + PL - q + 3) / 4 : 0;                          \
            lo[q] = a < n ? a : n;                                                            \
            hi[q] = b < n ? b : n;                                                            \
            if (hi[q] < lo[q])                                                                \
                hi[q] = lo[q];                                                                \
        }                                                                                     \
        /* where all four phases read inside, one interleaved pass (vectorised) splits them */ \
        ptrdiff_t in_lo = lo[0], in_hi = hi[0];                                               \
        for (int q = 1; q < 4; q++) {                                                         \
            in_lo = lo[q] > in_lo ? lo[q] : in_lo;                                            \
            in_hi = hi[q] < in_hi ? hi[q] : in_hi;                                            \
        }                                                                                     \
        if (in_hi < in_lo)                                                                    \
            in_hi = in_lo;                                                                    \
        for (ptrdiff_t c = 0; c < Cg; c++) {                                                  \
            const T *xc = x + c * H * W;                                                      \
            for (int r = 0; r < 6; r++) {                                                     \
                const ptrdiff_t ih = 4 * i - PT + r;                                          \
                T *restrict d0 = d + r * row, *restrict d1 = d0 + n, *restrict d2 = d1 + n, *restrict d3 = d2 + n; \
                if (ih < 0 || ih >= H) {                                                      \
                    for (ptrdiff_t k = 0; k < row; k++)                                       \
                        d0[k] = 0;                                                            \
                    continue;                                                                 \
                }                                                                             \
                const T *restrict xr = xc + ih * W;                                           \
                for (int q = 0; q < 4; q++) { /* the edges, phase by phase */                 \
                    T *dq = d0 + q * n;                                                       \
                    for (ptrdiff_t j = 0; j < lo[q]; j++)                                     \
                        dq[j] = 0;                                                            \
                    for (ptrdiff_t j = lo[q]; j < hi[q] && j < in_lo; j++)                    \
                        dq[j] = xr[4 * j + q - PL];                                           \
                    for (ptrdiff_t j = in_hi > lo[q] ? in_hi : lo[q]; j < hi[q]; j++)         \
                        dq[j] = xr[4 * j + q - PL];                                           \
                    for (ptrdiff_t j = hi[q]; j < n; j++)                                     \
                        dq[j] = 0;                                                            \
                }                                                                             \
                const T *restrict xs = xr - PL;                                               \
                for (ptrdiff_t j = in_lo; j < in_hi; j++) {                                   \
                    d0[j] = xs[4 * j];                                                        \
                    d1[j] = xs[4 * j + 1];                                                    \
                    d2[j] = xs[4 * j + 2];                                                    \
                    d3[j] = xs[4 * j + 3];                                                    \
                }                                                                             \
            }                                                                                 \
            {                                                                                 \
                const T *restrict e0 = d, *restrict e1 = d + row, *restrict e2 = d + 2 * row; \
                const T *restrict e3 = d + 3 * row, *restrict e4 = d + 4 * row, *restrict e5 = d + 5 * row; \
                T *restrict t0 = t, *restrict t1 = t + row, *restrict t2 = t + 2 * row;       \
                T *restrict t3 = t + 3 * row, *restrict t4 = t + 4 * row, *restrict t5 = t + 5 * row; \
                for (ptrdiff_t k = 0; k < row; k++) /* t = B^T d */                           \
                    FL_WINO_BT(T, e0[k], e1[k], e2[k], e3[k], e4[k], e5[k], t0[k], t1[k], t2[k], t3[k], \
                               t4[k], t5[k]);                                                 \
            }                                                                                 \
            T *v = V + c * P;                                                                 \
            for (int r = 0; r < 6; r++) { /* (B^T d) B, row r of every tile */                \
                const T *restrict p0 = t + r * row, *restrict p1 = p0 + n, *restrict p2 = p1 + n; \
                const T *restrict p3 = p2 + n;                                                \
                T *restrict v0 = v + (6 * r) * plane, *restrict v1 = v0 + plane, *restrict v2 = v1 + plane; \
                T *restrict v3 = v2 + plane, *restrict v4 = v3 + plane, *restrict v5 = v4 + plane; \
                for (ptrdiff_t j = 0; j < tiles_w; j++)                                       \
                    FL_WINO_BT(T, p0[j], p1[j], p2[j], p3[j], p0[j + 1], p1[j + 1],           \
                               v0[j], v1[j], v2[j], v3[j], v4[j], v5[j]);                     \
            }                                                                                 \
        }                                                                                     \
    }

/* A^T applied to six vectors: the 4 outputs of a row or column of a tile. */
#define FL_WINO_AT(T, m0, m1, m2, m3, m4, m5, o0, o1, o2, o3)                                 \
    do {                                                                                      \
        const T a_ = (m1) + (m2), b_ = (m1) - (m2), c_ = (m3) + (m4), e_ = (m3) - (m4);       \
        o0 = (m0) + a_ + c_;                                                                  \
        o1 = b_ + 2 * e_;                                                                     \
        o2 = a_ + 4 * c_;                                                                     \
        o3 = b_ + 8 * e_ + (m5);                                                              \
    } while (0)

/* y[f] over the output rows of tile row i of one image = A^T M[.][f][j] A (+ bias[f]) (M at the
 * row's first tile, ``plane`` values between positions, ``P`` between filters): A^T combines
 * the 36 positions into 4 rows of 6 (``u``, 24 x tiles_w), then A gives each output row's 4
 * column phases, stored interleaved. The columns of a last tile past OW and the rows past OH
 * are cut. */
#define FL_WINO_OUTPUT(T)                                                                     \
    FL_CLONES static void fl_wino_output_##T(const T *M, ptrdiff_t P, ptrdiff_t plane, T *y, const T *bias, \
                                             T *scratch, ptrdiff_t Fg, ptrdiff_t OH, ptrdiff_t OW, \
                                             ptrdiff_t i, ptrdiff_t tiles_w)                  \
    {                                                                                         \
        const ptrdiff_t full = OW / 4; /* tiles whose 4 columns all lie inside */             \
        T *u = scratch;                                                                       \
        for (ptrdiff_t f = 0; f < Fg; f++) {                                                  \
            T *yf = y + f * OH * OW;                                                          \
            const T b = bias ? bias[f] : (T)0;                                                \
            const T *m = M + f * P;                                                           \
            for (int k = 0; k < 6; k++) { /* u = A^T m: column k of the tiles' 4 rows */      \
                const T *restrict m0 = m + k * plane, *restrict m1 = m0 + 6 * plane;          \
                const T *restrict m2 = m1 + 6 * plane, *restrict m3 = m2 + 6 * plane;         \
                const T *restrict m4 = m3 + 6 * plane, *restrict m5 = m4 + 6 * plane;         \
                T *restrict u0 = u + k * tiles_w, *restrict u1 = u0 + 6 * tiles_w;            \
                T *restrict u2 = u1 + 6 * tiles_w, *restrict u3 = u2 + 6 * tiles_w;           \
                for (ptrdiff_t j = 0; j < tiles_w; j++)                                       \
                    FL_WINO_AT(T, m0[j], m1[j], m2[j], m3[j], m4[j], m5[j], u0[j], u1[j], u2[j], u3[j]); \
            }                                                                                 \
            const ptrdiff_t oh = 4 * i;                                                       \
            for (int r = 0; r < 4 && oh + r < OH; r++) { /* (A^T m) A */                      \
                const T *restrict a0 = u + 6 * r * tiles_w, *restrict a1 = a0 + tiles_w;      \
                const T *restrict a2 = a1 + tiles_w, *restrict a3 = a2 + tiles_w;             \
                const T *restrict a4 = a3 + tiles_w, *restrict a5 = a4 + tiles_w;             \
                T *restrict yr = yf + (oh + r) * OW;                                          \
                for (ptrdiff_t j = 0; j < full; j++) {                                        \
                    T o0, o1, o2, o3;                                                         \
                    FL_WINO_AT(T, a0[j], a1[j], a2[j], a3[j], a4[j], a5[j], o0, o1, o2, o3);  \
                    yr[4 * j] = o0 + b;                                                       \
                    yr[4 * j + 1] = o1 + b;                                                   \
                    yr[4 * j + 2] = o2 + b;                                                   \
                    yr[4 * j + 3] = o3 + b;                                                   \
                }                                                                             \
                if (full < tiles_w) { /* the last tile, cut at OW */                          \
                    T o[4];                                                                   \
                    const ptrdiff_t j = full;                                                 \
                    FL_WINO_AT(T, a0[j], a1[j], a2[j], a3[j], a4[j], a5[j], o[0], o[1], o[2], o[3]); \
                    for (ptrdiff_t q = 0; q < OW - 4 * j; q++)                                \
                        yr[4 * j + q] = o[q] + b;                                             \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

FL_WINO_FILTER(float)
FL_WINO_FILTER(double)
FL_WINO_INPUT(float)
FL_WINO_INPUT(double)
FL_WINO_OUTPUT(float)
FL_WINO_OUTPUT(double)

#endif
