/* The element-wise half of the LSTM and GRU kernels (gated_rnn.pyx): one time step's gates,
 * state update and their derivatives, over `rows` sequences of one thread's block, after the
 * GEMMs have left the pre-activations in a and u (their x and h parts; the LSTM's backward has
 * their sum z). PyTorch's equations and gate order (fastlayers.reference states them); gate
 * blocks of H columns side by side, row stride ld (at least G*H) for the pre-activations and H
 * for the states. The forward cells update the hidden units [j0, j1) only (a thread's share of
 * the units when the threads split a step by columns). The biases are never NULL (the wrapper
 * passes zeros for an absent one).
 *
 *   lstm: (i, f, g, o) = (sig, sig, tanh, sig)(z + b), z = a + u in the forward;
 *         c = f c_prev + i g;  h = o tanh(c)
 *   gru:  r = sig(a_r + bx_r + u_r + bh_r), z = sig(a_z + bx_z + u_z + bh_z),
 *         n = tanh(a_n + bx_n + r (u_n + bh_n));  h = n + z (h_prev - n)
 *
 * A forward that a backward will follow keeps the gates (`keep`: written over a's rows): the
 * LSTM's activated (i, f, g, o), the GRU's (r, z, n, u_n), u_n = h_prev Whn + bhn. The backward
 * cells read those gates (the forward's, or recomputed: fl_lstm_activate, fl_gru_activate),
 * write the gradients of the pre-activations (dL/dz, dL/da, dL/du) to their own buffers, leaving
 * the gates as they were, and update the carries that flow to the previous step (dh from the
 * next step, dc).
 *
 * Why C: the float32 loops must vectorise, and they only do with a tanh made of arithmetic and
 * selects (fl_tanh_f32, tanh_f32.h), sigmoid(x) = (1 + tanh(x / 2)) / 2. float64 keeps libm's
 * tanh (scalar: float64 is the accurate path). The loops are compiled for AVX-512, AVX2 and
 * baseline SSE2, picked at load time (FL_CLONES, target_clones.h).
 */
#ifndef FASTLAYERS_GATED_CELLS_H
#define FASTLAYERS_GATED_CELLS_H

#include <math.h>
#include <stddef.h>

#include "target_clones.h"
#include "tanh_f32.h"


#define FL_GATED_CELLS(T, SUF)                                                                     \
    static inline T fl_sigmoid_##SUF(T x) { return (T)0.5 * fl_tanh_##SUF((T)0.5 * x) + (T)0.5; }  \
                                                                                                   \
    /* a: x @ Wx of the step's rows, u: h_prev @ Wh (kept apart so that the step's GEMM writes     \
       a small buffer that stays in cache instead of updating the large a). keep: overwrite a      \
       with the activated gates (i, f, g, o), the saved gates of the backward. */                  \
    FL_CLONES static void fl_lstm_cell_##SUF(                                                      \
        T *restrict a, const T *restrict u, const T *restrict b, const T *restrict c_prev,         \
        T *restrict c, T *restrict h, ptrdiff_t rows, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1,     \
        ptrdiff_t ld, int keep) {                                                                  \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                     \
            T *ar = a + r * ld;                                                                    \
            const T *ur = u + r * ld;                                                              \
            for (ptrdiff_t j = j0; j < j1; j++) {                                                  \
                T i = fl_sigmoid_##SUF(ar[j] + ur[j] + b[j]);                                      \
                T f = fl_sigmoid_##SUF(ar[H + j] + ur[H + j] + b[H + j]);                          \
                T g = fl_tanh_##SUF(ar[2 * H + j] + ur[2 * H + j] + b[2 * H + j]);                 \
                T o = fl_sigmoid_##SUF(ar[3 * H + j] + ur[3 * H + j] + b[3 * H + j]);              \
                T cn = f * c_prev[r * H + j] + i * g;                                              \
                c[r * H + j] = cn;                                                                 \
                h[r * H + j] = o * fl_tanh_##SUF(cn);                                              \
                if (keep) {                                                                        \
                    ar[j] = i;                                                                     \
                    ar[H + j] = f;                                                                 \
                    ar[2 * H + j] = g;                                                             \
                    ar[3 * H + j] = o;                                                             \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* The backward's recomputed gates: z (pre-activations less the bias) in, (i, f, g, o) out. */ \
    FL_CLONES static void fl_lstm_activate_##SUF(T *restrict z, const T *restrict b, ptrdiff_t rows, \
                                                 ptrdiff_t H, ptrdiff_t ld) {                      \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                     \
            T *zr = z + r * ld;                                                                    \
            for (ptrdiff_t j = 0; j < H; j++) {                                                    \
                zr[j] = fl_sigmoid_##SUF(zr[j] + b[j]);                                            \
                zr[H + j] = fl_sigmoid_##SUF(zr[H + j] + b[H + j]);                                \
                zr[2 * H + j] = fl_tanh_##SUF(zr[2 * H + j] + b[2 * H + j]);                       \
                zr[3 * H + j] = fl_sigmoid_##SUF(zr[3 * H + j] + b[3 * H + j]);                    \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* gates: (i, f, g, o) in (row stride ldg); dz: dL/d(pre-activations) out (row stride ldz).    \
       dh_next: dL/dh from the later steps; dc_carry: dL/dc from the later steps in, dL/dc_prev    \
       out. dcs may be NULL. */                                                                    \
    FL_CLONES static void fl_lstm_cell_backward_##SUF(                                             \
        const T *restrict gates, const T *restrict c_prev, const T *restrict c,                    \
        const T *restrict dhs, const T *restrict dcs, const T *restrict dh_next,                   \
        T *restrict dc_carry, T *restrict dz, ptrdiff_t rows, ptrdiff_t H, ptrdiff_t ldg,          \
        ptrdiff_t ldz) {                                                                           \
        if (dcs) /* apart: a select in the main loop keeps it from vectorising */                 \
            for (ptrdiff_t k = 0; k < rows * H; k++)                                               \
                dc_carry[k] += dcs[k];                                                             \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                     \
            const T *gr = gates + r * ldg;                                                         \
            T *zr = dz + r * ldz;                                                                  \
            for (ptrdiff_t j = 0; j < H; j++) {                                                    \
                ptrdiff_t k = r * H + j;                                                           \
                T i = gr[j], f = gr[H + j], g = gr[2 * H + j], o = gr[3 * H + j];                  \
                T tc = fl_tanh_##SUF(c[k]);                                                        \
                T dh = dhs[k] + dh_next[k];                                                        \
                T dc = dc_carry[k] + dh * o * (1 - tc * tc);                                       \
                zr[j] = dc * g * i * (1 - i);                                                      \
                zr[H + j] = dc * c_prev[k] * f * (1 - f);                                          \
                zr[2 * H + j] = dc * i * (1 - g * g);                                              \
                zr[3 * H + j] = dh * tc * o * (1 - o);                                             \
                dc_carry[k] = dc * f;                                                              \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* The GRU's gates of column j: a = x Wx, u = h_prev Wh of one row (before the biases). */     \
    static inline void fl_gru_gates_##SUF(const T *a, const T *u, const T *bx, const T *bh,        \
                                          ptrdiff_t j, ptrdiff_t H, T *rg, T *zg, T *n, T *un) {   \
        *rg = fl_sigmoid_##SUF(a[j] + bx[j] + u[j] + bh[j]);                                       \
        *zg = fl_sigmoid_##SUF(a[H + j] + bx[H + j] + u[H + j] + bh[H + j]);                       \
        *un = u[2 * H + j] + bh[2 * H + j];                                                        \
        *n = fl_tanh_##SUF(a[2 * H + j] + bx[2 * H + j] + *rg * *un);                              \
    }                                                                                              \
                                                                                                   \
    /* One row of the GRU's forward cell; inlined with a constant keep, so that its loop has no   \
       branch (GCC would not vectorise it with one). */                                            \
    static inline __attribute__((always_inline)) void fl_gru_row_##SUF(                            \
        T *restrict ar, const T *restrict ur, const T *restrict bx, const T *restrict bh,          \
        const T *restrict hp, T *restrict hr, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1,             \
        const int keep) {                                                                          \
        for (ptrdiff_t j = j0; j < j1; j++) {                                                      \
            T rg, zg, n, un;                                                                       \
            fl_gru_gates_##SUF(ar, ur, bx, bh, j, H, &rg, &zg, &n, &un);                           \
            hr[j] = n + zg * (hp[j] - n);                                                          \
            if (keep) {                                                                            \
                ar[j] = rg;                                                                        \
                ar[H + j] = zg;                                                                    \
                ar[2 * H + j] = n;                                                                 \
                ar[3 * H + j] = un;                                                                \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* keep: overwrite a (4H columns wide) with the gates (r, z, n, u_n), u_n = h_prev Whn + bhn  \
       (what r multiplies), the saved gates of the backward. */                                    \
    FL_CLONES static void fl_gru_cell_##SUF(                                                       \
        T *restrict a, const T *restrict u, const T *restrict bx, const T *restrict bh,            \
        const T *restrict h_prev, T *restrict h, ptrdiff_t rows, ptrdiff_t H, ptrdiff_t j0,        \
        ptrdiff_t j1, ptrdiff_t lda, ptrdiff_t ldu, int keep) {                                    \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                     \
            T *ar = a + r * lda;                                                                   \
            const T *ur = u + r * ldu, *hp = h_prev + r * H;                                       \
            if (keep)                                                                              \
                fl_gru_row_##SUF(ar, ur, bx, bh, hp, h + r * H, H, j0, j1, 1);                     \
            else                                                                                   \
                fl_gru_row_##SUF(ar, ur, bx, bh, hp, h + r * H, H, j0, j1, 0);                     \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* The backward's recomputed gates: a (4H columns wide) and u in, (r, z, n, u_n) out in a. */  \
    FL_CLONES static void fl_gru_activate_##SUF(T *restrict a, const T *restrict u,                \
                                                const T *restrict bx, const T *restrict bh,        \
                                                ptrdiff_t rows, ptrdiff_t H, ptrdiff_t lda,        \
                                                ptrdiff_t ldu) {                                   \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                     \
            T *ar = a + r * lda;                                                                   \
            const T *ur = u + r * ldu;                                                             \
            for (ptrdiff_t j = 0; j < H; j++) {                                                    \
                T rg, zg, n, un;                                                                   \
                fl_gru_gates_##SUF(ar, ur, bx, bh, j, H, &rg, &zg, &n, &un);                       \
                ar[j] = rg;                                                                        \
                ar[H + j] = zg;                                                                    \
                ar[2 * H + j] = n;                                                                 \
                ar[3 * H + j] = un;                                                                \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* gates: (r, z, n, u_n) in (row stride ldg); da, du: dL/d(x Wx + bx), dL/d(h Wh + bh) out     \
       (row stride ldd). dh_carry: dL/dh from the later steps in, its part through z (dh * z)      \
       out; the caller adds du @ Wh^T to it. */                                                    \
    FL_CLONES static void fl_gru_cell_backward_##SUF(                                              \
        const T *restrict gates, const T *restrict h_prev, const T *restrict dhs,                  \
        T *restrict dh_carry, T *restrict da, T *restrict du, ptrdiff_t rows, ptrdiff_t H,         \
        ptrdiff_t ldg, ptrdiff_t ldd) {                                                            \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                     \
            const T *gr = gates + r * ldg;                                                         \
            T *ar = da + r * ldd, *ur = du + r * ldd;                                              \
            for (ptrdiff_t j = 0; j < H; j++) {                                                    \
                ptrdiff_t k = r * H + j;                                                           \
                T rg = gr[j], zg = gr[H + j], n = gr[2 * H + j], un = gr[3 * H + j];               \
                T dh = dhs[k] + dh_carry[k];                                                       \
                T dn = dh * (1 - zg) * (1 - n * n);                                                \
                T dr = dn * un * rg * (1 - rg);                                                    \
                T dz = dh * (h_prev[k] - n) * zg * (1 - zg);                                       \
                ar[j] = ur[j] = dr;                                                                \
                ar[H + j] = ur[H + j] = dz;                                                        \
                ar[2 * H + j] = dn;                                                                \
                ur[2 * H + j] = dn * rg;                                                           \
                dh_carry[k] = dh * zg;                                                             \
            }                                                                                      \
        }                                                                                          \
    }

FL_GATED_CELLS(float, f32)
FL_GATED_CELLS(double, f64)

#endif
