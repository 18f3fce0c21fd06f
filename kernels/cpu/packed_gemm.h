/* The recurrent kernels' products c = h @ W (+ c) against a weight packed once per call, float32
 * (gated_rnn.pyx: the forward's per-step h @ Wh and input projection x @ Wx, the backward's
 * per-step dz @ Wh^T). OpenBLAS repacks its operand at every call of its packed path and runs a
 * step's few rows x thousands of columns at about half its large-GEMM rate on its unpacked
 * small-matrix path (measured: docs/performance.md); the weight does not change between steps,
 * so it is packed once here, into panels of FL_PANEL columns:
 *
 *   panel p holds W[k, FL_PANEL * p + j] at p * K * FL_PANEL + k * FL_PANEL + j, zero past width.
 *
 * Each panel is multiplied by row blocks of h, a block's sums held in registers over the whole
 * depth K. Panels are the outer loop, so W streams through the cache once per step and each
 * panel is reused by every row block. Two blockings of the one layout, one per vector width:
 *
 *   AVX-512 (fl_packed_gemm_f32): blocks of 8 (then 4, 1) rows x 32 columns, 16 accumulators
 *     of 16 lanes, 16 FMAs per two panel loads and 8 broadcasts;
 *   AVX2 (fl_packed_gemm_avx2_f32): 16 registers of 8 lanes hold 12 accumulators at most, so
 *     blocks of 6 (then 4) rows x 16 columns, each half of the panel in turn (12 FMAs per two
 *     loads and 6 broadcasts), and the last 2 or 1 rows x 32 columns (8 or 4 FMA chains rather
 *     than 4 or 2, against the FMA latency).
 *
 * The depth is cut into slices of FL_DEPTH_SLICE rows of W, each multiplied by every panel and row
 * block before the next: a slice of a chunk of rows of h and of a panel stay in L1 (the whole
 * depth of a half-panel is 32 KiB at K = 512, L1's size, and the backward's K = 4H is deeper),
 * while the sums go back to c between slices, which costs a load and a store per FL_DEPTH_SLICE
 * multiply-adds (measured: docs/performance.md, "lstm: depth slices"). A sum continues from c
 * in the next slice, and with ``accumulate`` starts from c's value in the first.
 *
 * Every element is the same sum in either blocking (c's value when accumulating, then its
 * products added in the order of k), so a result does not depend on how the rows were split
 * among threads. Written with
 * GCC vector types and compiled by FL_CLONES; the kernels use the blocking that matches
 * fl_clone_isa() (either would spill or idle on the other width). */
#ifndef FASTLAYERS_PACKED_GEMM_H
#define FASTLAYERS_PACKED_GEMM_H

#include <stddef.h>
#include <string.h>

#include "target_clones.h"

#define FL_PANEL 32

typedef float fl_v16 __attribute__((vector_size(64)));
typedef float fl_v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef float fl_v8 __attribute__((vector_size(32)));
typedef float fl_v8u __attribute__((vector_size(32), aligned(4), may_alias));

/* fl_block_<R>x<V>_<W>: rows [0, R) of a times columns [0, V * W) of a panel over a depth of
 * K (b: its first column in row k = 0, rows FL_PANEL apart): c[:, :n] = a @ b, plus c's value
 * when accumulate (the sums start from it), n <= V * W (the columns left in the panel); W lanes
 * per vector of type VT (unaligned UT). PREFETCH: also prefetch row k of the next panel, ``next``
 * floats on (past the last one: a hint, which never faults); the AVX2 blocking does, which
 * gained where the packed weight streams from L3 (measured: docs/performance.md), the AVX-512
 * one stays as it was measured. */
#define FL_BLOCK(R, V, W, VT, UT, PREFETCH)                                                        \
    static inline __attribute__((always_inline)) void fl_block_##R##x##V##_##W(                   \
        const float *restrict a, ptrdiff_t lda, const float *restrict b, ptrdiff_t K,             \
        ptrdiff_t next, float *restrict c, ptrdiff_t ldc, ptrdiff_t n, int accumulate) {           \
        VT acc[R][V];                                                                              \
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {                                      \
            if (!accumulate) {                                                                     \
                _Pragma("GCC unroll 4") for (int v = 0; v < V; v++) acc[i][v] = (VT){0};           \
            } else if (n == V * W) {                                                               \
                _Pragma("GCC unroll 4") for (int v = 0; v < V; v++)                                \
                    acc[i][v] = *(const UT *)(c + i * ldc + v * W);                                \
            } else {                                                                               \
                float row[V * W] = {0};                                                            \
                for (ptrdiff_t j = 0; j < n; j++)                                                  \
                    row[j] = c[i * ldc + j];                                                       \
                memcpy(acc[i], row, sizeof acc[i]);                                                \
            }                                                                                      \
        }                                                                                          \
        for (ptrdiff_t k = 0; k < K; k++) {                                                        \
            VT bk[V];                                                                              \
            _Pragma("GCC unroll 4") for (int v = 0; v < V; v++)                                    \
                bk[v] = *(const UT *)(b + k * FL_PANEL + v * W);                                   \
            if (PREFETCH)                                                                          \
                __builtin_prefetch(b + next + k * FL_PANEL);                                       \
            _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {                                  \
                float ai = a[i * lda + k];                                                         \
                _Pragma("GCC unroll 4") for (int v = 0; v < V; v++) acc[i][v] += ai * bk[v];       \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {                                      \
            float *ci = c + i * ldc;                                                               \
            if (n == V * W) {                                                                      \
                _Pragma("GCC unroll 4") for (int v = 0; v < V; v++) *(UT *)(ci + v * W) = acc[i][v]; \
            } else {                                                                               \
                float row[V * W];                                                                  \
                memcpy(row, acc[i], sizeof acc[i]);                                                \
                for (ptrdiff_t j = 0; j < n; j++)                                                  \
                    ci[j] = row[j];                                                                \
            }                                                                                      \
        }                                                                                          \
    }

FL_BLOCK(8, 2, 16, fl_v16, fl_v16u, 0)
FL_BLOCK(4, 2, 16, fl_v16, fl_v16u, 0)
FL_BLOCK(1, 2, 16, fl_v16, fl_v16u, 0)
FL_BLOCK(6, 2, 8, fl_v8, fl_v8u, 1)
FL_BLOCK(4, 2, 8, fl_v8, fl_v8u, 1)
FL_BLOCK(2, 4, 8, fl_v8, fl_v8u, 1)
FL_BLOCK(1, 4, 8, fl_v8, fl_v8u, 1)

/* Rows [r, r1) of one panel in blocks of R rows (r advances past them) x V * W columns, the
 * panel's n columns in turn, over the depth slice [k0, k1) (the arguments and loop variables of
 * fl_packed_gemm_* in scope). */
#define FL_ROW_BLOCKS(R, V, W)                                                                     \
    for (; r + R <= r1; r += R)                                                                    \
        for (ptrdiff_t j = 0; j < n; j += V * W)                                                   \
            fl_block_##R##x##V##_##W(a + r * lda + k0, lda, b + j, k1 - k0, K * FL_PANEL,          \
                                     c + r * ldc + c0 + j, ldc, n - j < V * W ? n - j : V * W,     \
                                     accumulate || k0 > 0)

/* c (rows x width, row stride ldc) = a (rows x K, row stride lda) @ W (+ c when accumulate), W
 * packed as above (ceil(width / FL_PANEL) panels of K x FL_PANEL). Rows go by FL_ROW_CHUNK, whose
 * rows of a stay in cache while every panel passes (a step has fewer rows: one chunk), and the
 * depth by FL_DEPTH_SLICE. BLOCKS lists the row blockings, widest first. */
#define FL_ROW_CHUNK 64
#define FL_DEPTH_SLICE 64
#define FL_PACKED_GEMM(NAME, BLOCKS)                                                               \
    FL_CLONES static void NAME(const float *restrict a, ptrdiff_t lda, const float *restrict packed, \
                               ptrdiff_t K, float *restrict c, ptrdiff_t ldc, ptrdiff_t rows,     \
                               ptrdiff_t width, int accumulate) {                                 \
        for (ptrdiff_t r0 = 0; r0 < rows; r0 += FL_ROW_CHUNK) {                                    \
            ptrdiff_t r1 = rows - r0 < FL_ROW_CHUNK ? rows : r0 + FL_ROW_CHUNK;                    \
            for (ptrdiff_t k0 = 0; k0 < K; k0 += FL_DEPTH_SLICE) {                                 \
                ptrdiff_t k1 = K - k0 < FL_DEPTH_SLICE ? K : k0 + FL_DEPTH_SLICE;                  \
                for (ptrdiff_t c0 = 0; c0 < width; c0 += FL_PANEL) {                               \
                    const float *b = packed + (c0 / FL_PANEL) * K * FL_PANEL + k0 * FL_PANEL;      \
                    ptrdiff_t n = width - c0 < FL_PANEL ? width - c0 : FL_PANEL, r = r0;           \
                    BLOCKS;                                                                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

/* Panels [p0, p1) of a weight W (K x width) packed as above, W[k, j] at w[k * ldw + j], or with
 * `transposed` at w[j * ldw + k] (W is then the transpose of the C-order array w: the backward's
 * Wh^T from Wh). The kernels pack each call's weights with it, every thread its own panels.
 * The transposed copy goes by slices of FL_DEPTH_SLICE rows of the panel, whose 128-byte rows
 * stay in L1 while the panel's columns are read, each a contiguous run of w. */
static void fl_pack_panels_f32(const float *restrict w, ptrdiff_t ldw, int transposed, ptrdiff_t K,
                               ptrdiff_t width, float *restrict packed, ptrdiff_t p0, ptrdiff_t p1) {
    for (ptrdiff_t p = p0; p < p1; p++) {
        float *panel = packed + p * K * FL_PANEL;
        ptrdiff_t c0 = p * FL_PANEL, n = width - c0 < FL_PANEL ? width - c0 : FL_PANEL;
        if (!transposed) {
            for (ptrdiff_t k = 0; k < K; k++) {
                memcpy(panel + k * FL_PANEL, w + k * ldw + c0, n * sizeof(float));
                memset(panel + k * FL_PANEL + n, 0, (FL_PANEL - n) * sizeof(float));
            }
            continue;
        }
        for (ptrdiff_t k0 = 0; k0 < K; k0 += FL_DEPTH_SLICE) {
            ptrdiff_t k1 = K - k0 < FL_DEPTH_SLICE ? K : k0 + FL_DEPTH_SLICE;
            for (ptrdiff_t j = 0; j < n; j++)
                for (ptrdiff_t k = k0; k < k1; k++)
                    panel[k * FL_PANEL + j] = w[(c0 + j) * ldw + k];
            for (ptrdiff_t j = n; j < FL_PANEL; j++)
                for (ptrdiff_t k = k0; k < k1; k++)
                    panel[k * FL_PANEL + j] = 0.0f;
        }
    }
}

FL_PACKED_GEMM(fl_packed_gemm_f32, FL_ROW_BLOCKS(8, 2, 16); FL_ROW_BLOCKS(4, 2, 16); FL_ROW_BLOCKS(1, 2, 16))
FL_PACKED_GEMM(fl_packed_gemm_avx2_f32, FL_ROW_BLOCKS(6, 2, 8); FL_ROW_BLOCKS(4, 2, 8); FL_ROW_BLOCKS(2, 4, 8);
               FL_ROW_BLOCKS(1, 4, 8))

#endif
