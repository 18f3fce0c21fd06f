/* The element-wise loops of rnn.pyx, vectorised and compiled per instruction set (FL_CLONES).
 * The forward's step in float32: z[r, c0:c1] = tanh(z[r, c0:c1] + b[c0:c1]) for r < rows, rows ld
 * apart (b may be NULL; tanh_f32.h); its float64 loop stays in rnn.pyx with libm's tanh. The
 * backward's, in both precisions: a step's gradient times the nonlinearity's derivative, and
 * the bias gradient's column sums. */
#ifndef FASTLAYERS_RNN_CELLS_H
#define FASTLAYERS_RNN_CELLS_H

#include <stddef.h>

#include "tanh_f32.h"
#include "target_clones.h"

FL_CLONES static void fl_rnn_bias_tanh_f32(float *z, const float *b, ptrdiff_t rows, ptrdiff_t ld,
                                           ptrdiff_t c0, ptrdiff_t c1)
{
    for (ptrdiff_t r = 0; r < rows; r++) {
        float *row = z + r * ld;
        for (ptrdiff_t j = c0; j < c1; j++)
            row[j] = fl_tanh_f32(b ? row[j] + b[j] : row[j]);
    }
}

/* g[r, c0:c1] = (g + dh)[r, c0:c1] (g alone when dh is NULL) times the derivative of the
 * nonlinearity at its output h: 1 - h^2 for tanh, (h > 0) for relu (its output is positive
 * exactly where its input was; 0 at 0, as in PyTorch). fl_rnn_column_sums_*: sums[c0:c1] = the
 * column sums of z's rows [0, rows), the rows added in order (a result that does not depend on
 * how the columns are split). */
#define FL_RNN_BACKWARD_LOOPS(T, SUFFIX)                                                          \
    FL_CLONES static void fl_rnn_times_derivative_##SUFFIX(T *restrict g, const T *restrict dh,    \
                                                           const T *restrict h, ptrdiff_t rows,    \
                                                           ptrdiff_t ld, ptrdiff_t c0,             \
                                                           ptrdiff_t c1, int relu) {               \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                    \
            T *gr = g + r * ld;                                                                   \
            const T *hr = h + r * ld, *dr = dh ? dh + r * ld : NULL;                              \
            if (relu && dr)                                                                       \
                for (ptrdiff_t j = c0; j < c1; j++) gr[j] = hr[j] > 0 ? gr[j] + dr[j] : 0;        \
            else if (relu)                                                                        \
                for (ptrdiff_t j = c0; j < c1; j++) gr[j] = hr[j] > 0 ? gr[j] : 0;                \
            else if (dr)                                                                          \
                for (ptrdiff_t j = c0; j < c1; j++) gr[j] = (gr[j] + dr[j]) * (1 - hr[j] * hr[j]); \
            else                                                                                  \
                for (ptrdiff_t j = c0; j < c1; j++) gr[j] = gr[j] * (1 - hr[j] * hr[j]);          \
        }                                                                                         \
    }                                                                                             \
    FL_CLONES static void fl_rnn_column_sums_##SUFFIX(const T *restrict z, ptrdiff_t rows,        \
                                                      ptrdiff_t ld, ptrdiff_t c0, ptrdiff_t c1,   \
                                                      T *restrict sums) {                         \
        for (ptrdiff_t j = c0; j < c1; j++) sums[j] = 0;                                          \
        for (ptrdiff_t r = 0; r < rows; r++)                                                      \
            for (ptrdiff_t j = c0; j < c1; j++) sums[j] += z[r * ld + j];                         \
    }

FL_RNN_BACKWARD_LOOPS(float, f32)
FL_RNN_BACKWARD_LOOPS(double, f64)

#endif
