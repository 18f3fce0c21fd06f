/* The recurrent kernels' products c = h @ W (+ c) against a weight packed once per call, float32
 * (gated_rnn.pyx: the forward's per-step h @ Wh and input projection x @ Wx, the backward's
 * per-step dz @ Wh^T). OpenBLAS repacks its operand at every call of its packed path and runs a
 * step's few rows x thousands of columns at about half its large-GEMM rate on its unpacked
 * small-matrix path (measured: docs/performance.md); the weight does not change between steps,
 * so it is packed once here, into panels of FL_PANEL columns:
 *
 *   panel p holds W[k, FL_PANEL * p + j] at p * K * FL_PANEL + k * FL_PANEL + j, zero past width.
 *
 * Each panel is multiplied by row blocks of 8 (then 4, then 1) rows of h, the block's 8 x 32 sums
 * held in registers over the whole depth K: 16 AVX-512 accumulators, 16 FMAs per two panel loads
 * and 8 broadcasts. Panels are the outer loop, so W streams through the cache once per step
 * and each panel is reused by every row block. Written with GCC vector types and compiled by
 * FL_CLONES; the kernels use it where fl_clone_isa() is "x86-64-v4" (on AVX2 the 16 accumulators
 * would be 32 registers: spills). */
#ifndef FASTLAYERS_PACKED_GEMM_H
#define FASTLAYERS_PACKED_GEMM_H

#include <stddef.h>
#include <string.h>

#include "target_clones.h"

#define FL_PANEL 32

typedef float fl_v16 __attribute__((vector_size(64)));
typedef float fl_v16u __attribute__((vector_size(64), aligned(4), may_alias));

/* Rows [r, r + R) of one panel: c[:, c0:c0+n] = a @ panel (+ c when accumulate). */
#define FL_PANEL_BLOCK(R)                                                                          \
    static inline __attribute__((always_inline)) void fl_panel_block_##R(                         \
        const float *restrict a, ptrdiff_t lda, const float *restrict b, ptrdiff_t K,             \
        float *restrict c, ptrdiff_t ldc, ptrdiff_t n, int accumulate) {                           \
        fl_v16 lo[R], hi[R];                                                                       \
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) lo[i] = hi[i] = (fl_v16){0};           \
        for (ptrdiff_t k = 0; k < K; k++) {                                                        \
            fl_v16 b0 = *(const fl_v16u *)(b + k * FL_PANEL);                                      \
            fl_v16 b1 = *(const fl_v16u *)(b + k * FL_PANEL + 16);                                 \
            _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {                                  \
                float ai = a[i * lda + k];                                                         \
                lo[i] += ai * b0;                                                                  \
                hi[i] += ai * b1;                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {                                      \
            float *ci = c + i * ldc;                                                               \
            if (n == FL_PANEL) {                                                                   \
                if (accumulate) {                                                                  \
                    lo[i] += *(fl_v16u *)ci;                                                       \
                    hi[i] += *(fl_v16u *)(ci + 16);                                                \
                }                                                                                  \
                *(fl_v16u *)ci = lo[i];                                                            \
                *(fl_v16u *)(ci + 16) = hi[i];                                                     \
            } else {                                                                               \
                float row[FL_PANEL];                                                               \
                memcpy(row, &lo[i], sizeof lo[i]);                                                 \
                memcpy(row + 16, &hi[i], sizeof hi[i]);                                            \
                for (ptrdiff_t j = 0; j < n; j++)                                                  \
                    ci[j] = accumulate ? ci[j] + row[j] : row[j];                                  \
            }                                                                                      \
        }                                                                                          \
    }

FL_PANEL_BLOCK(8)
FL_PANEL_BLOCK(4)
FL_PANEL_BLOCK(1)

/* c (rows x width, row stride ldc) = a (rows x K, row stride lda) @ W (+ c when accumulate), W
 * packed as above (ceil(width / FL_PANEL) panels of K x FL_PANEL). Rows go by FL_ROW_CHUNK, whose
 * rows of a stay in cache while every panel passes (a step has fewer rows: one chunk). */
#define FL_ROW_CHUNK 64
FL_CLONES static void fl_packed_gemm_f32(const float *restrict a, ptrdiff_t lda, const float *restrict packed,
                                         ptrdiff_t K, float *restrict c, ptrdiff_t ldc, ptrdiff_t rows,
                                         ptrdiff_t width, int accumulate) {
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += FL_ROW_CHUNK) {
        ptrdiff_t r1 = rows - r0 < FL_ROW_CHUNK ? rows : r0 + FL_ROW_CHUNK;
        for (ptrdiff_t c0 = 0; c0 < width; c0 += FL_PANEL) {
            const float *b = packed + (c0 / FL_PANEL) * K * FL_PANEL;
            ptrdiff_t n = width - c0 < FL_PANEL ? width - c0 : FL_PANEL, r = r0;
            for (; r + 8 <= r1; r += 8)
                fl_panel_block_8(a + r * lda, lda, b, K, c + r * ldc + c0, ldc, n, accumulate);
            for (; r + 4 <= r1; r += 4)
                fl_panel_block_4(a + r * lda, lda, b, K, c + r * ldc + c0, ldc, n, accumulate);
            for (; r < r1; r++)
                fl_panel_block_1(a + r * lda, lda, b, K, c + r * ldc + c0, ldc, n, accumulate);
        }
    }
}

#endif
