/* The element-wise step of rnn.pyx in float32: z[r, c0:c1] = tanh(z[r, c0:c1] + b[c0:c1]) for
 * r < rows, rows ld apart (b may be NULL), vectorised (tanh_f32.h) and compiled per instruction
 * set (FL_CLONES). The float64 loop stays in rnn.pyx with libm's tanh. */
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

#endif
