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
 * 6x6 transformed tile (the caller runs them). Here: the filter transform, in double; the
 * input transform of a block of P tiles into V (36, P, Cg) and the output transform of M
 * (36, P, Fg) into y, for one group, with the input's zero padding applied as the tiles are
 * read: both put channels (filters) in the lanes of 64-byte vectors, so that every vector is
 * full however few tiles a plane has (a batch-1 8x8 plane has 4), the NCHW planes transposed in
 * registers on the way in and out (tile_transpose.h); and for the weight gradient the
 * transform of dy into dM (36, Fg, P), as vector loops along the tiles. Each is written once, as
 * a macro over the element type T (float or double), and compiled for AVX-512, AVX2 and the
 * baseline (target_clones.h).
 */
#ifndef FASTLAYERS_WINOGRAD_F4X3_H
#define FASTLAYERS_WINOGRAD_F4X3_H

#include <stddef.h>

#include "target_clones.h"
#include "tile_transpose.h"

typedef float fl_wino_vfloat __attribute__((vector_size(64), aligned(4), may_alias));
typedef double fl_wino_vdouble __attribute__((vector_size(64), aligned(8), may_alias));

/* Channels (filters) a vector of the transforms, for floats; V's and M's rows are a multiple
 * of it long (of the 8 doubles too). */
#define FL_WINO_CHANNEL_LANES 16

/* Values of the transforms' scratch for blocks of rows x tiles_w = P tiles: the input
 * transform's 13 x (4 tiles_w + 2) vectors (zeros, its gathered rows and their B^T
 * combination), the weight gradient's output transform's 44 P. */
static inline ptrdiff_t fl_wino_scratch(ptrdiff_t rows, ptrdiff_t tiles_w) {
    const ptrdiff_t input = 13 * (4 * tiles_w + 2) * FL_WINO_CHANNEL_LANES;
    return input > 44 * rows * tiles_w ? input : 44 * rows * tiles_w;
}

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

/* U[xi][i] = (G w[i] G^T)[xi] for one channel of nf <= FL_WINO_FILTER_LANES filters, w[i] the
 * 3 x 3 at w + i ld (with ``flip``, rotated 180 degrees: the data gradient's filters, read from
 * the forward's in place), U[xi][i] at U + xi plane + i: in double, rounded once to T. The block's
 * taps are gathered filter-fastest, so that every step is a vector loop over the filters; the
 * caller takes a channel's filters block by block, so that U's rows (a position and channel,
 * the filters contiguous) are written in order. */
#define FL_WINO_FILTER_LANES 16
#define FL_WINO_FILTER(T)                                                                     \
    static inline __attribute__((always_inline)) void fl_wino_filter_block_##T(                \
        const T *w, ptrdiff_t ld, ptrdiff_t nf, T *U, ptrdiff_t plane, int flip)              \
    {                                                                                         \
        enum { N = FL_WINO_FILTER_LANES };                                                    \
        double g[9][N], t[18][N];                                                             \
        for (int k = 0; k < 9; k++)                                                           \
            for (int i = 0; i < N; i++)                                                       \
                g[k][i] = i < nf ? (double)w[i * ld + (flip ? 8 - k : k)] : 0.0;              \
        for (int k = 0; k < 3; k++) /* t = G g, column k: t[3r + k] */                        \
            for (int i = 0; i < N; i++)                                                       \
                FL_WINO_G(g[k][i], g[3 + k][i], g[6 + k][i], t[k][i], t[3 + k][i], t[6 + k][i], t[9 + k][i], \
                          t[12 + k][i], t[15 + k][i]);                                        \
        for (int r = 0; r < 6; r++) { /* (G g) G^T, row r */                                  \
            double o[6][N];                                                                   \
            for (int i = 0; i < N; i++)                                                       \
                FL_WINO_G(t[3 * r][i], t[3 * r + 1][i], t[3 * r + 2][i], o[0][i], o[1][i], o[2][i], o[3][i], \
                          o[4][i], o[5][i]);                                                  \
            for (int j = 0; j < 6; j++) {                                                     \
                T *u = U + (6 * r + j) * plane;                                               \
                for (ptrdiff_t i = 0; i < nf; i++)                                            \
                    u[i] = (T)o[j][i];                                                        \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    /* A whole block with nf and flip constants: its loads and stores are vector loops (with  \
     * nf a variable GCC left the stores scalar: docs/performance.md). */                     \
    FL_CLONES static void fl_wino_filter_##T(const T *w, ptrdiff_t ld, ptrdiff_t nf, T *U, ptrdiff_t plane, \
                                             int flip)                                        \
    {                                                                                         \
        if (nf == FL_WINO_FILTER_LANES && !flip)                                              \
            fl_wino_filter_block_##T(w, ld, FL_WINO_FILTER_LANES, U, plane, 0);               \
        else if (nf == FL_WINO_FILTER_LANES)                                                  \
            fl_wino_filter_block_##T(w, ld, FL_WINO_FILTER_LANES, U, plane, 1);               \
        else                                                                                  \
            fl_wino_filter_block_##T(w, ld, nf, U, plane, flip);                              \
    }

/* G^T applied to six vectors, in double: the adjoint of FL_WINO_G, 3 values from 6. */
#define FL_WINO_GT(s0, s1, s2, s3, s4, s5, o0, o1, o2)                                        \
    do {                                                                                      \
        const double p_ = (s1) + (s2), m_ = (s2) - (s1), q_ = (s3) + (s4), n_ = (s3) - (s4); \
        o0 = (s0) * 0.25 - p_ * (1.0 / 6) + q_ * (1.0 / 24);                                  \
        o1 = m_ * (1.0 / 6) + n_ * (1.0 / 12);                                                \
        o2 = (q_ - p_) * (1.0 / 6) + (s5);                                                    \
    } while (0)

#define FL_WINO_FILTER_BLOCK 64 /* channels a block of the weight gradient's transform */
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

/* dst[m][i] = src[i * plane + m] for the m < W values of a row of L channels (i < nc; zeros for
 * the lanes i >= nc), ``readable`` values readable from src on: L x L tiles loaded a row a
 * channel, transposed in registers (tile_transpose.h), stored a column a vector; a tile's loads
 * may read past the row's W values where the array goes on, as its columns past W are not
 * stored. */
#define FL_WINO_GATHER(T, U, UV, L)                                                           \
    static inline __attribute__((always_inline)) void fl_wino_gather_##T(                      \
        const T *src, ptrdiff_t plane, ptrdiff_t nc, ptrdiff_t W, ptrdiff_t readable, T *dst)  \
    {                                                                                         \
        const U *s_ = (const U *)src;                                                         \
        for (ptrdiff_t m0 = 0; m0 < W; m0 += (L)) {                                           \
            const ptrdiff_t n = W - m0 < (L) ? W - m0 : (L);                                  \
            UV v[L];                                                                          \
            if (nc >= (L) && ((L) - 1) * plane + m0 + (L) <= readable) {                      \
                _Pragma("GCC unroll 16") for (int i = 0; i < (L); i++)                        \
                    v[i] = *(const UV *)(s_ + i * plane + m0);                                \
            } else { /* the last channels, or the array's last values */                     \
                for (int i = 0; i < (L); i++) {                                               \
                    U part[L] = {0};                                                          \
                    const ptrdiff_t at = i * plane + m0;                                      \
                    for (ptrdiff_t m = 0; i < nc && m < n; m++)                               \
                        part[m] = s_[at + m];                                                 \
                    __builtin_memcpy(&v[i], part, sizeof part);                               \
                }                                                                             \
            }                                                                                 \
            fl_tile_transpose_##U(v);                                                         \
            if (n == (L)) { /* unrolled: a loop of these became a memcpy out of the stack */  \
                _Pragma("GCC unroll 16") for (int m = 0; m < (L); m++)                        \
                    *(UV *)(dst + (m0 + m) * (L)) = v[m];                                     \
                continue;                                                                     \
            }                                                                                 \
            for (ptrdiff_t m = 0; m < n; m++)                                                 \
                *(UV *)(dst + (m0 + m) * (L)) = v[m];                                         \
        }                                                                                     \
    }

/* V[xi][p][c] = (B^T d B)[xi] for the P = rows x tiles_w tiles p of tile rows first ..
 * first + rows - 1 of the batch (row R: image R / tiles_h, tile row R % tiles_h; ``image``
 * values between x's images, x at the group's first channel, ``readable`` values readable from
 * x on), d the 6x6 patch of channel c at input rows 4i - PT .., columns 4j - PL .. (zero outside
 * the H x W input); V's rows ``ldv`` values apart (a multiple of L >= Cg; the products read
 * none of the lanes past Cg). Channels go in the lanes of a vector, L at a time, so every vector is full whatever
 * the plane's size: for each tile row, the 6 input rows its patches read are gathered
 * channel-fastest into ``X`` (6 x cols vectors, a column of L channels each; zeros around, the
 * padding), B^T combines them row against row into ``t``, and B each tile's 6 columns of t into
 * its 36 positions, vector by vector. */
#define FL_WINO_INPUT(T, VT, L)                                                               \
    FL_CLONES static void fl_wino_input_##T(const T *x, ptrdiff_t image, ptrdiff_t readable, T *V, ptrdiff_t ldv, \
                                            T *scratch, ptrdiff_t Cg, ptrdiff_t H, ptrdiff_t W, ptrdiff_t first, \
                                            ptrdiff_t rows, ptrdiff_t tiles_h, ptrdiff_t tiles_w, \
                                            ptrdiff_t PT, ptrdiff_t PL)                       \
    {                                                                                         \
        /* the patches' columns, PL + W <= cols (4 tiles_w >= the output's width W + PL + PR - 2) */ \
        const ptrdiff_t P = rows * tiles_w, cols = 4 * tiles_w + 2;                           \
        T *restrict zero = scratch, *restrict X = zero + cols * (L), *restrict t = X + 6 * cols * (L); \
        for (ptrdiff_t m = 0; m < 7 * cols * (L); m++) /* a row outside the input; X's padding */ \
            zero[m] = 0;                                                                      \
        for (ptrdiff_t c0 = 0; c0 < Cg; c0 += (L)) {                                          \
            for (ptrdiff_t r = 0; r < rows; r++) {                                            \
                const ptrdiff_t R = first + r, top = 4 * (R % tiles_h) - PT;                  \
                const ptrdiff_t at = (R / tiles_h) * image + c0 * H * W;                      \
                const T *row[6];                                                              \
                for (int a = 0; a < 6; a++) {                                                 \
                    if (top + a < 0 || top + a >= H) {                                        \
                        row[a] = zero;                                                        \
                        continue;                                                             \
                    }                                                                         \
                    row[a] = X + a * cols * (L);                                              \
                    fl_wino_gather_##T(x + at + (top + a) * W, H * W, Cg - c0, W,             \
                                       readable - at - (top + a) * W, X + (a * cols + PL) * (L)); \
                }                                                                             \
                for (ptrdiff_t m = 0; m < cols; m++) { /* t = B^T d, column m */              \
                    const ptrdiff_t o = m * (L);                                              \
                    VT t0, t1, t2, t3, t4, t5;                                                \
                    FL_WINO_BT(VT, *(const VT *)(row[0] + o), *(const VT *)(row[1] + o),      \
                               *(const VT *)(row[2] + o), *(const VT *)(row[3] + o),          \
                               *(const VT *)(row[4] + o), *(const VT *)(row[5] + o), t0, t1, t2, t3, t4, t5); \
                    *(VT *)(t + o) = t0;                                                      \
                    *(VT *)(t + cols * (L) + o) = t1;                                         \
                    *(VT *)(t + 2 * cols * (L) + o) = t2;                                     \
                    *(VT *)(t + 3 * cols * (L) + o) = t3;                                     \
                    *(VT *)(t + 4 * cols * (L) + o) = t4;                                     \
                    *(VT *)(t + 5 * cols * (L) + o) = t5;                                     \
                }                                                                             \
                for (ptrdiff_t j = 0; j < tiles_w; j++) { /* (B^T d) B: row a, tile j */      \
                    T *v = V + (r * tiles_w + j) * ldv + c0;                                  \
                    for (int a = 0; a < 6; a++) {                                             \
                        const T *s = t + (a * cols + 4 * j) * (L);                            \
                        VT v0, v1, v2, v3, v4, v5;                                            \
                        FL_WINO_BT(VT, *(const VT *)s, *(const VT *)(s + (L)), *(const VT *)(s + 2 * (L)), \
                                   *(const VT *)(s + 3 * (L)), *(const VT *)(s + 4 * (L)),    \
                                   *(const VT *)(s + 5 * (L)), v0, v1, v2, v3, v4, v5);       \
                        T *o = v + 6 * a * P * ldv;                                           \
                        *(VT *)o = v0;                                                        \
                        *(VT *)(o + P * ldv) = v1;                                            \
                        *(VT *)(o + 2 * P * ldv) = v2;                                        \
                        *(VT *)(o + 3 * P * ldv) = v3;                                        \
                        *(VT *)(o + 4 * P * ldv) = v4;                                        \
                        *(VT *)(o + 5 * P * ldv) = v5;                                        \
                    }                                                                         \
                }                                                                             \
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

/* relu.pyx's ReLU of a vector (``zero`` in scope): x < 0 -> 0; NaN and -0.0 kept. */
#define FL_WINO_RELU(VT, UV, v) ((VT)(~(UV)((v) < zero) & (UV)(v)))

/* m = v where v wins against m (v > m, or v is NaN): max_pool2d's rule. */
#define FL_WINO_CHALLENGE(VT, UV, m, v)                                                       \
    do {                                                                                      \
        const UV wins_ = (UV)((v) > (m)) | (UV)((v) != (v));                                  \
        m = (VT)((wins_ & (UV)(v)) | (~wins_ & (UV)(m)));                                     \
    } while (0)

/* FL_WINO_OUTPUT's pooled store of a tile (o: its 16 outputs row-major, L filters a vector):
 * window (a, c) covers the tile's rows 2a, 2a + 1 and columns 2c, 2c + 1, pooled output row
 * top / 2 + a and column 2j + c; the four maxima are transposed as the outputs are (the other
 * vectors zero), and each filter's 2 x 2 stored cut at POH and POW. */
#define FL_WINO_POOL_STORE(T, U, UV, VT, L)                                                   \
    do {                                                                                      \
        UV v[L];                                                                              \
        for (int a = 0; a < 2; a++)                                                           \
            for (int c = 0; c < 2; c++) {                                                     \
                const int at = 8 * a + 2 * c;                                                 \
                VT m_ = o[at];                                                                \
                FL_WINO_CHALLENGE(VT, UV, m_, o[at + 1]);                                     \
                FL_WINO_CHALLENGE(VT, UV, m_, o[at + 4]);                                     \
                FL_WINO_CHALLENGE(VT, UV, m_, o[at + 5]);                                     \
                v[2 * a + c] = relu ? (UV)FL_WINO_RELU(VT, UV, m_) : (UV)m_;                  \
            }                                                                                 \
        _Pragma("GCC unroll 16") for (int i = 4; i < (L); i++)                                \
            v[i] = (UV){0};                                                                   \
        fl_tile_transpose_##U(v);                                                             \
        const ptrdiff_t prow = top / 2, pcol = 2 * j;                                         \
        const ptrdiff_t nprow = POH - prow < 2 ? POH - prow : 2;                              \
        const ptrdiff_t npcol = POW - pcol < 2 ? POW - pcol : 2;                              \
        T *yp = y + (R / tiles_h) * image + f0 * POH * POW + prow * POW + pcol;               \
        for (ptrdiff_t i = 0; i < nb; i++) { /* filter f0 + i */                              \
            const VT out = (VT)v[i];                                                          \
            for (ptrdiff_t a = 0; a < nprow; a++)                                             \
                for (ptrdiff_t c = 0; c < npcol; c++)                                         \
                    yp[i * POH * POW + a * POW + c] = out[2 * a + c];                         \
        }                                                                                     \
    } while (0)

/* y[f] over the output rows of the block's tiles (as in fl_wino_input; ``image`` values
 * between y's images, y at the block's first filter) = A^T M[.][p][f] A (+ bias[f]) for the
 * nf filters, M (36, P, ldm): filters go in the lanes of a vector, L at a time. For each tile,
 * A^T combines its 36 positions into 4 rows of 6 and A each row into its 4 outputs, the bias
 * added; the 16 outputs (vectors of L filters) are transposed in registers (L x L tiles,
 * tile_transpose.h) into each filter's 4 rows of 4, stored cut at OH and OW. (Keeping 4 tiles'
 * outputs to store whole rows of 16 ran slower but on 56x56 planes: docs/performance.md.)
 * ``relu``: each output through a ReLU (relu.pyx's rule: x < 0 -> 0, NaN and -0.0 kept) before
 * the store. ``pool``: y is instead the 2x2 stride-2 max-pool of the OH x OW output (OH / 2 x
 * OW / 2, an odd last row or column dropped; ``image`` values of that y between images), then
 * the ReLU: a tile's four windows are pooled in the filters' lanes before the transpose, by
 * max_pool2d's order and rule (row-major, v replaces the maximum m where v > m or v is NaN), so
 * the values are those of the separate pool bit for bit. */
#define FL_WINO_OUTPUT(T, U, UV, VT, L)                                                       \
    FL_CLONES static void fl_wino_output_##T(const T *M, ptrdiff_t P, ptrdiff_t ldm, T *y, ptrdiff_t image, \
                                             const T *bias, ptrdiff_t nf, ptrdiff_t OH, ptrdiff_t OW, \
                                             ptrdiff_t first, ptrdiff_t rows, ptrdiff_t tiles_h, \
                                             ptrdiff_t tiles_w, int pool, int relu)           \
    {                                                                                         \
        const ptrdiff_t plane = P * ldm, POH = OH / 2, POW = OW / 2;                          \
        const VT zero = {0};                                                                  \
        for (ptrdiff_t f0 = 0; f0 < nf; f0 += (L)) {                                          \
            const ptrdiff_t nb = nf - f0 < (L) ? nf - f0 : (L);                               \
            VT b = {0};                                                                       \
            for (ptrdiff_t i = 0; bias && i < nb; i++)                                        \
                b[i] = bias[f0 + i];                                                          \
            for (ptrdiff_t r = 0; r < rows; r++) {                                            \
                const ptrdiff_t R = first + r, top = 4 * (R % tiles_h);                       \
                const ptrdiff_t nrow = OH - top < 4 ? OH - top : 4;                           \
                T *yr = y + (R / tiles_h) * image + f0 * OH * OW + top * OW;                  \
                for (ptrdiff_t j = 0; j < tiles_w; j++) {                                     \
                    const T *m = M + (r * tiles_w + j) * ldm + f0;                            \
                    VT u[4][6], o[16];                                                        \
                    _Pragma("GCC unroll 6") for (int k = 0; k < 6; k++) /* A^T m: column k */ \
                        FL_WINO_AT(VT, *(const VT *)(m + k * plane), *(const VT *)(m + (6 + k) * plane), \
                                   *(const VT *)(m + (12 + k) * plane), *(const VT *)(m + (18 + k) * plane), \
                                   *(const VT *)(m + (24 + k) * plane), *(const VT *)(m + (30 + k) * plane), \
                                   u[0][k], u[1][k], u[2][k], u[3][k]);                       \
                    _Pragma("GCC unroll 4") for (int s = 0; s < 4; s++) { /* then A: row s */ \
                        FL_WINO_AT(VT, u[s][0], u[s][1], u[s][2], u[s][3], u[s][4], u[s][5], o[4 * s], \
                                   o[4 * s + 1], o[4 * s + 2], o[4 * s + 3]);                 \
                        o[4 * s] += b;                                                        \
                        o[4 * s + 1] += b;                                                    \
                        o[4 * s + 2] += b;                                                    \
                        o[4 * s + 3] += b;                                                    \
                    }                                                                         \
                    if (pool) {                                                               \
                        FL_WINO_POOL_STORE(T, U, UV, VT, L);                                  \
                        continue;                                                             \
                    }                                                                         \
                    for (int q = 0; relu && q < 16; q++)                                      \
                        o[q] = FL_WINO_RELU(VT, UV, o[q]);                                    \
                    const ptrdiff_t ncol = OW - 4 * j < 4 ? OW - 4 * j : 4;                   \
                    _Pragma("GCC unroll 2") for (int h = 0; h < 16 / (L); h++) { /* rows 4 h L / 16 .. */ \
                        UV v[L];                                                              \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (L); i++)                \
                            v[i] = (UV)o[h * (L) + i];                                        \
                        fl_tile_transpose_##U(v);                                             \
                        for (ptrdiff_t i = 0; i < nb; i++) { /* filter f0 + i: L outputs */   \
                            T *yf = yr + i * OH * OW + 4 * j;                                 \
                            const VT out = (VT)v[i];                                          \
                            for (int s = 0; s < (L) / 4; s++) {                               \
                                const int row = h * (L) / 4 + s;                              \
                                if (row >= nrow)                                              \
                                    break;                                                    \
                                if (ncol == 4) {                                              \
                                    __builtin_memcpy(yf + row * OW, (const T *)&out + 4 * s, 4 * sizeof(T)); \
                                    continue;                                                 \
                                }                                                             \
                                for (ptrdiff_t q = 0; q < ncol; q++)                          \
                                    yf[row * OW + q] = out[4 * s + q];                        \
                            }                                                                 \
                        }                                                                     \
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
FL_WINO_GATHER(float, uint32_t, fl_v16u32, 16)
FL_WINO_GATHER(double, uint64_t, fl_v8u64, 8)
FL_WINO_INPUT(float, fl_wino_vfloat, 16)
FL_WINO_INPUT(double, fl_wino_vdouble, 8)
FL_WINO_OUTPUT(float, uint32_t, fl_v16u32, fl_wino_vfloat, 16)
FL_WINO_OUTPUT(double, uint64_t, fl_v8u64, fl_wino_vdouble, 8)
FL_WINO_GRAD_OUTPUT(float)
FL_WINO_GRAD_OUTPUT(double)

#endif
