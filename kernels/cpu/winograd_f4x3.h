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
 * 6x6 transformed tile (the caller runs them). Here: the filter transform, in double, the
 * input transform of a block of P tiles into V (36, Cg, P) and the output transform of M
 * (36, Fg, P) into y, for one group, with the input's zero padding applied as the tiles are
 * read. The transforms run as vector loops along the block's tiles (which span tile rows and
 * images), so that small planes (2 or 4 tiles a row) vectorise as well as large ones. Each loop
 * is written once, as a macro over the element type T (float or double), and compiled for
 * AVX-512, AVX2 and the baseline (target_clones.h).
 */
#ifndef FASTLAYERS_WINOGRAD_F4X3_H
#define FASTLAYERS_WINOGRAD_F4X3_H

#include <stddef.h>

#include "target_clones.h"

/* The transforms' vector loops run along the block's P tiles of several channels (filters) at
 * once, at least FL_WINO_LANES values a loop: a batch-1 small plane has 4 or 16 tiles a block,
 * too few for a loop of 16-lane vectors; channel-major, tile-fastest, the layout of V and M's
 * rows, so that the last step writes V whole. Channels (filters) a pass: */
#define FL_WINO_LANES 64
static inline ptrdiff_t fl_wino_channels(ptrdiff_t P) { return (FL_WINO_LANES + P - 1) / P; }

/* Values of the transforms' scratch for a block of P tiles: the 6x6 input patches of a pass's
 * tiles and their B^T combination (36 x P x fl_wino_channels(P) each); the output transforms
 * use less. */
static inline ptrdiff_t fl_wino_scratch(ptrdiff_t P) { return 72 * P * fl_wino_channels(P); }

/* The tile loops' pointers (rows of one scratch or V/M array) never overlap, but GCC
 * versions a loop for aliasing only up to 10 pointer pairs and leaves the 12-pointer transform
 * loops scalar without this. */
#define FL_WINO_SIMD _Pragma("GCC ivdep")

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

/* G^T applied to six vectors, in double: the adjoint of FL_WINO_G, 3 values from 6. */
#define FL_WINO_GT(s0, s1, s2, s3, s4, s5, o0, o1, o2)                                        \
    do {                                                                                      \
        const double p_ = (s1) + (s2), m_ = (s2) - (s1), q_ = (s3) + (s4), n_ = (s3) - (s4); \
        o0 = (s0) * 0.25 - p_ * (1.0 / 6) + q_ * (1.0 / 24);                                  \
        o1 = m_ * (1.0 / 6) + n_ * (1.0 / 12);                                                \
        o2 = (q_ - p_) * (1.0 / 6) + (s5);                                                    \
    } while (0)

/* dw[c] (3 x 3, for the Cg channels of one filter, contiguous) = G^T dU[c] G, dU summed over
 * ``runs`` partials (``stride`` values apart; ``plane`` values between positions, dU at the
 * filter's row of position 0): the sums and the transform in double, in a fixed order, rounded
 * once to T; vector loops over blocks of channels, as in fl_wino_filter. */
#define FL_WINO_FILTER_GRAD(T)                                                                \
    FL_CLONES static void fl_wino_filter_grad_##T(const T *dU, ptrdiff_t runs, ptrdiff_t stride, ptrdiff_t plane, \
                                                  ptrdiff_t Cg, T *dw)                        \
    {                                                                                         \
        double u[36][FL_WINO_FILTER_BLOCK], t[18][FL_WINO_FILTER_BLOCK];                     \
        for (ptrdiff_t c0 = 0; c0 < Cg; c0 += FL_WINO_FILTER_BLOCK) {                         \
            const ptrdiff_t nc = Cg - c0 < FL_WINO_FILTER_BLOCK ? Cg - c0 : FL_WINO_FILTER_BLOCK; \
            for (int xi = 0; xi < 36; xi++) {                                                 \
                const T *src = dU + xi * plane + c0;                                          \
                for (ptrdiff_t c = 0; c < nc; c++)                                            \
                    u[xi][c] = (double)src[c];                                                \
                for (ptrdiff_t q = 1; q < runs; q++)                                          \
                    for (ptrdiff_t c = 0; c < nc; c++)                                        \
                        u[xi][c] += (double)src[q * stride + c];                              \
            }                                                                                 \
            for (int r = 0; r < 6; r++) /* t = dU G: row r, t[3r + b] */                     \
                for (ptrdiff_t c = 0; c < nc; c++)                                            \
                    FL_WINO_GT(u[6 * r][c], u[6 * r + 1][c], u[6 * r + 2][c], u[6 * r + 3][c], u[6 * r + 4][c], \
                               u[6 * r + 5][c], t[3 * r][c], t[3 * r + 1][c], t[3 * r + 2][c]); \
            for (int b = 0; b < 3; b++) /* G^T t: column b */                                 \
                for (ptrdiff_t c = 0; c < nc; c++) {                                          \
                    double o0, o1, o2;                                                        \
                    FL_WINO_GT(t[b][c], t[3 + b][c], t[6 + b][c], t[9 + b][c], t[12 + b][c], t[15 + b][c], \
                               o0, o1, o2);                                                   \
                    T *g = dw + 9 * (c0 + c);                                                 \
                    g[b] = (T)o0;                                                             \
                    g[3 + b] = (T)o1;                                                         \
                    g[6 + b] = (T)o2;                                                         \
                }                                                                             \
        }                                                                                     \
    }

/* Planes q = 0..3 of `out` (``stride`` apart) = columns q of a line of n interleaved 4-wide
 * tiles: out[q * stride + p] = line[4 p + q]. */
#define FL_WINO_DEINTERLEAVE4(T, line, out, n, stride)                                        \
    do {                                                                                      \
        const T *restrict in_ = (line);                                                       \
        T *restrict o0_ = (out), *restrict o1_ = o0_ + (stride), *restrict o2_ = o1_ + (stride); \
        T *restrict o3_ = o2_ + (stride);                                                     \
        FL_WINO_SIMD                                                                          \
        for (ptrdiff_t p_ = 0; p_ < (n); p_++) {                                              \
            o0_[p_] = in_[4 * p_];                                                            \
            o1_[p_] = in_[4 * p_ + 1];                                                        \
            o2_[p_] = in_[4 * p_ + 2];                                                        \
            o3_[p_] = in_[4 * p_ + 3];                                                        \
        }                                                                                     \
    } while (0)

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

/* V[xi][c][p] = (B^T d B)[xi] for the P = rows x tiles_w tiles of tile rows first ..
 * first + rows - 1 of the batch (row R: image R / tiles_h, tile row R % tiles_h; ``image``
 * values between x's images, x at the group's first channel), d the 6x6 patch of channel c at
 * input rows 4i - PT .., columns 4j - PL .. (zero outside the H x W input). A pass takes ``cb``
 * channels (fl_wino_channels), its L = cb x P lanes channel-major: for each channel and patch
 * row a, the tile rows' input rows are copied (zero-padded) into one line, 4 values a tile,
 * which is deinterleaved along the P tiles into ``d`` (36 x L: row a, column k of every tile;
 * columns 4 and 5 are the next tile's 0 and 1, but for a tile row's last tile); B^T combines d
 * row against row into ``t`` (the same), and B each row's 6 columns into the 36 positions, each
 * a vector loop along all L lanes. */
#define FL_WINO_INPUT(T)                                                                      \
    FL_CLONES static void fl_wino_input_##T(const T *x, ptrdiff_t image, T *V, ptrdiff_t P, T *scratch, \
                                            ptrdiff_t Cg, ptrdiff_t H, ptrdiff_t W, ptrdiff_t first, \
                                            ptrdiff_t rows, ptrdiff_t tiles_h, ptrdiff_t tiles_w, \
                                            ptrdiff_t PT, ptrdiff_t PL)                       \
    {                                                                                         \
        const ptrdiff_t cb_max = fl_wino_channels(P);                                         \
        T *restrict d = scratch, *restrict t = scratch + 36 * P * cb_max;                     \
        /* line[4p + m] (in t's place) = input column 4j + m - PL of tile p = (r, j): inside for \
         * m in [m_lo, m_hi) of the tile row's 4 tiles_w values */                            \
        const ptrdiff_t n4 = 4 * tiles_w, m_lo = PL < n4 ? PL : n4;                           \
        const ptrdiff_t m_hi = W + PL < n4 ? (W + PL > m_lo ? W + PL : m_lo) : n4;            \
        for (ptrdiff_t c0 = 0; c0 < Cg; c0 += cb_max) {                                       \
            const ptrdiff_t cb = Cg - c0 < cb_max ? Cg - c0 : cb_max, L = cb * P;             \
            for (ptrdiff_t c = c0; c < c0 + cb; c++) {                                        \
                for (int a = 0; a < 6; a++) { /* input row a of every tile: d[6a + k][lane] */ \
                    T *restrict line = t;                                                     \
                    for (ptrdiff_t r = 0; r < rows; r++) {                                    \
                        const ptrdiff_t R = first + r, ih = 4 * (R % tiles_h) - PT + a;       \
                        T *restrict ln = line + r * n4;                                       \
                        if (ih < 0 || ih >= H) {                                              \
                            for (ptrdiff_t m = 0; m < n4; m++)                                \
                                ln[m] = 0;                                                    \
                            continue;                                                         \
                        }                                                                     \
                        const T *restrict xr = x + (R / tiles_h) * image + c * H * W + ih * W; \
                        for (ptrdiff_t m = 0; m < m_lo; m++)                                  \
                            ln[m] = 0;                                                        \
                        for (ptrdiff_t m = m_lo; m < m_hi; m++)                               \
                            ln[m] = xr[m - PL];                                               \
                        for (ptrdiff_t m = m_hi; m < n4; m++)                                 \
                            ln[m] = 0;                                                        \
                    }                                                                         \
                    T *restrict d0 = d + 6 * a * L + (c - c0) * P, *restrict d1 = d0 + L;     \
                    T *restrict d4 = d0 + 4 * L, *restrict d5 = d4 + L;                       \
                    FL_WINO_DEINTERLEAVE4(T, line, d0, P, L);                                 \
                    FL_WINO_SIMD                                                              \
                    for (ptrdiff_t p = 0; p + 1 < P; p++) { /* columns 4 and 5: the next tile's 0 and 1 */ \
                        d4[p] = d0[p + 1];                                                    \
                        d5[p] = d1[p + 1];                                                    \
                    }                                                                         \
                    for (ptrdiff_t r = 0; r < rows; r++) { /* but a row's last tile's lie past its line */ \
                        const ptrdiff_t R = first + r, ih = 4 * (R % tiles_h) - PT + a, p = (r + 1) * tiles_w - 1; \
                        const T *xr = x + (R / tiles_h) * image + c * H * W;                  \
                        const ptrdiff_t col = n4 - PL, in_row = ih >= 0 && ih < H;            \
                        d4[p] = in_row && col >= 0 && col < W ? xr[ih * W + col] : (T)0;      \
                        d5[p] = in_row && col + 1 >= 0 && col + 1 < W ? xr[ih * W + col + 1] : (T)0; \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            {                                                                                 \
                const T *restrict e0 = d, *restrict e1 = d + 6 * L, *restrict e2 = d + 12 * L; \
                const T *restrict e3 = d + 18 * L, *restrict e4 = d + 24 * L, *restrict e5 = d + 30 * L; \
                T *restrict t0 = t, *restrict t1 = t + 6 * L, *restrict t2 = t + 12 * L;      \
                T *restrict t3 = t + 18 * L, *restrict t4 = t + 24 * L, *restrict t5 = t + 30 * L; \
                FL_WINO_SIMD                                                                  \
                for (ptrdiff_t q = 0; q < 6 * L; q++) /* t = B^T d, every column of every tile */ \
                    FL_WINO_BT(T, e0[q], e1[q], e2[q], e3[q], e4[q], e5[q], t0[q], t1[q], t2[q], t3[q], \
                               t4[q], t5[q]);                                                 \
            }                                                                                 \
            for (int a = 0; a < 6; a++) { /* (B^T d) B, row a of every tile */                \
                const T *restrict s0 = t + 6 * a * L, *restrict s1 = s0 + L, *restrict s2 = s1 + L; \
                const T *restrict s3 = s2 + L, *restrict s4 = s3 + L, *restrict s5 = s4 + L;  \
                T *restrict v0 = V + (6 * a * Cg + c0) * P, *restrict v1 = v0 + Cg * P;       \
                T *restrict v2 = v1 + Cg * P, *restrict v3 = v2 + Cg * P, *restrict v4 = v3 + Cg * P; \
                T *restrict v5 = v4 + Cg * P;                                                 \
                FL_WINO_SIMD                                                                  \
                for (ptrdiff_t q = 0; q < L; q++)                                             \
                    FL_WINO_BT(T, s0[q], s1[q], s2[q], s3[q], s4[q], s5[q], v0[q], v1[q], v2[q], v3[q], \
                               v4[q], v5[q]);                                                 \
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

/* y[f] over the output rows of the block's tiles (as in fl_wino_input; ``image`` values
 * between y's images, y at the group's first filter) = A^T M[.][f][p] A (+ bias[f]), M (36, Fg,
 * P): a pass takes ``fb`` filters (fl_wino_channels), whose L = fb x P lanes are contiguous in
 * every position's row of M; A^T combines the 36 positions into 4 rows of 6 (``u``, 24 x L),
 * along all L lanes; then for each filter and output row s, A each tile's 6 columns into its 4
 * outputs, the bias added, written interleaved into one line (``o``, 4 x P) whose tile rows are
 * copied into y: the columns of a last tile past OW and the rows past OH are cut. */
#define FL_WINO_OUTPUT(T)                                                                     \
    FL_CLONES static void fl_wino_output_##T(const T *M, ptrdiff_t P, T *y, ptrdiff_t image, const T *bias, \
                                             T *scratch, ptrdiff_t Fg, ptrdiff_t OH, ptrdiff_t OW, \
                                             ptrdiff_t first, ptrdiff_t rows, ptrdiff_t tiles_h, \
                                             ptrdiff_t tiles_w)                               \
    {                                                                                         \
        const ptrdiff_t plane = Fg * P, fb_max = fl_wino_channels(P);                         \
        T *restrict u = scratch, *restrict o = scratch + 24 * P * fb_max;                     \
        for (ptrdiff_t f0 = 0; f0 < Fg; f0 += fb_max) {                                       \
            const ptrdiff_t fb = Fg - f0 < fb_max ? Fg - f0 : fb_max, L = fb * P;             \
            for (int k = 0; k < 6; k++) { /* u = A^T m: column k of the tiles' 4 rows */      \
                const T *restrict m0 = M + k * plane + f0 * P, *restrict m1 = m0 + 6 * plane; \
                const T *restrict m2 = m1 + 6 * plane, *restrict m3 = m2 + 6 * plane;         \
                const T *restrict m4 = m3 + 6 * plane, *restrict m5 = m4 + 6 * plane;         \
                T *restrict u0 = u + k * L, *restrict u1 = u0 + 6 * L, *restrict u2 = u1 + 6 * L; \
                T *restrict u3 = u2 + 6 * L;                                                  \
                FL_WINO_SIMD                                                                  \
                for (ptrdiff_t q = 0; q < L; q++)                                             \
                    FL_WINO_AT(T, m0[q], m1[q], m2[q], m3[q], m4[q], m5[q], u0[q], u1[q], u2[q], u3[q]); \
            }                                                                                 \
            for (ptrdiff_t f = f0; f < f0 + fb; f++) {                                        \
                const T b = bias ? bias[f] : (T)0;                                            \
                for (int s = 0; s < 4; s++) { /* output row s of every tile, + b: o[4p + q] = column q */ \
                    const T *restrict a0 = u + 6 * s * L + (f - f0) * P, *restrict a1 = a0 + L; \
                    const T *restrict a2 = a1 + L, *restrict a3 = a2 + L, *restrict a4 = a3 + L; \
                    const T *restrict a5 = a4 + L;                                            \
                    FL_WINO_SIMD                                                              \
                    for (ptrdiff_t p = 0; p < P; p++) {                                       \
                        T o0, o1, o2, o3;                                                     \
                        FL_WINO_AT(T, a0[p], a1[p], a2[p], a3[p], a4[p], a5[p], o0, o1, o2, o3); \
                        o[4 * p] = o0 + b;                                                    \
                        o[4 * p + 1] = o1 + b;                                                \
                        o[4 * p + 2] = o2 + b;                                                \
                        o[4 * p + 3] = o3 + b;                                                \
                    }                                                                         \
                    for (ptrdiff_t r = 0; r < rows; r++) { /* a tile row's outputs, cut at OW */ \
                        const ptrdiff_t R = first + r, oh = 4 * (R % tiles_h) + s;            \
                        if (oh >= OH)                                                         \
                            continue;                                                         \
                        T *restrict yr = y + (R / tiles_h) * image + f * OH * OW + oh * OW;   \
                        const T *restrict orow = o + 4 * r * tiles_w;                         \
                        for (ptrdiff_t q = 0; q < OW; q++)                                    \
                            yr[q] = orow[q];                                                  \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

/* A applied to four vectors (a row or a column of an output tile's gradient): the adjoint of
 * A^T, 6 values from 4. */
#define FL_WINO_A(T, d0, d1, d2, d3, o0, o1, o2, o3, o4, o5)                                  \
    do {                                                                                      \
        const T e_ = (d0) + (d2), f_ = (d1) + (d3), g_ = (d0) + 4 * (d2), h_ = 2 * (d1) + 8 * (d3); \
        o0 = (d0);                                                                            \
        o1 = e_ + f_;                                                                         \
        o2 = e_ - f_;                                                                         \
        o3 = g_ + h_;                                                                         \
        o4 = g_ - h_;                                                                         \
        o5 = (d3);                                                                            \
    } while (0)

/* dM[xi][f][p] = (A dY A^T)[xi] for the block's tiles (as in fl_wino_input; ``image`` values
 * between dy's images, dy at the group's first filter), dY the 4x4 block of dy[f] at rows 4i ..,
 * columns 4j .. (zero past OH x OW): the gradient of the output transform, for the weight
 * gradient's GEMMs dU[xi] += dM[xi] V[xi]^T. The blocks are gathered into ``d`` (16 x P) as in
 * fl_wino_input (a line of each row s over the tile rows, deinterleaved along the tiles), A
 * combines their rows into ``t`` (24 x P) and their columns into dM, along the tiles. */
#define FL_WINO_GRAD_OUTPUT(T)                                                                \
    FL_CLONES static void fl_wino_grad_output_##T(const T *dy, ptrdiff_t image, T *dM, ptrdiff_t P, T *scratch, \
                                                  ptrdiff_t Fg, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t first, \
                                                  ptrdiff_t rows, ptrdiff_t tiles_h, ptrdiff_t tiles_w) \
    {                                                                                         \
        T *restrict d = scratch, *restrict t = scratch + 16 * P, *restrict line = scratch + 40 * P; \
        const ptrdiff_t plane = Fg * P, n4 = 4 * tiles_w;                                     \
        for (ptrdiff_t f = 0; f < Fg; f++) {                                                  \
            for (int s = 0; s < 4; s++) { /* row s of every tile: line[4p + q] = column q, then d */ \
                for (ptrdiff_t r = 0; r < rows; r++) {                                        \
                    const ptrdiff_t R = first + r, oh = 4 * (R % tiles_h) + s;                \
                    T *restrict ln = line + r * n4;                                           \
                    ptrdiff_t m = 0;                                                          \
                    if (oh < OH) {                                                            \
                        const T *restrict yr = dy + (R / tiles_h) * image + f * OH * OW + oh * OW; \
                        for (; m < OW; m++)                                                   \
                            ln[m] = yr[m];                                                    \
                    }                                                                         \
                    for (; m < n4; m++)                                                       \
                        ln[m] = 0;                                                            \
                }                                                                             \
                FL_WINO_DEINTERLEAVE4(T, line, d + 4 * s * P, P, P);                             \
            }                                                                                 \
            for (int q = 0; q < 4; q++) { /* t = A dY: column q of every tile */              \
                const T *restrict d0 = d + q * P, *restrict d1 = d0 + 4 * P, *restrict d2 = d1 + 4 * P; \
                const T *restrict d3 = d2 + 4 * P;                                            \
                T *restrict t0 = t + q * P, *restrict t1 = t0 + 4 * P, *restrict t2 = t1 + 4 * P; \
                T *restrict t3 = t2 + 4 * P, *restrict t4 = t3 + 4 * P, *restrict t5 = t4 + 4 * P; \
                FL_WINO_SIMD                                                                  \
                for (ptrdiff_t p = 0; p < P; p++)                                             \
                    FL_WINO_A(T, d0[p], d1[p], d2[p], d3[p], t0[p], t1[p], t2[p], t3[p], t4[p], t5[p]); \
            }                                                                                 \
            for (int r = 0; r < 6; r++) { /* (A dY) A^T, row r */                             \
                const T *restrict a0 = t + 4 * r * P, *restrict a1 = a0 + P, *restrict a2 = a1 + P; \
                const T *restrict a3 = a2 + P;                                                \
                T *restrict m0 = dM + 6 * r * plane + f * P, *restrict m1 = m0 + plane;       \
                T *restrict m2 = m1 + plane, *restrict m3 = m2 + plane, *restrict m4 = m3 + plane; \
                T *restrict m5 = m4 + plane;                                                  \
                FL_WINO_SIMD                                                                  \
                for (ptrdiff_t p = 0; p < P; p++)                                             \
                    FL_WINO_A(T, a0[p], a1[p], a2[p], a3[p], m0[p], m1[p], m2[p], m3[p], m4[p], m5[p]); \
            }                                                                                 \
        }                                                                                     \
    }

FL_WINO_FILTER(float)
FL_WINO_FILTER(double)
FL_WINO_FILTER_GRAD(float)
FL_WINO_FILTER_GRAD(double)
FL_WINO_INPUT(float)
FL_WINO_INPUT(double)
FL_WINO_OUTPUT(float)
FL_WINO_OUTPUT(double)
FL_WINO_GRAD_OUTPUT(float)
FL_WINO_GRAD_OUTPUT(double)

#endif
