/* The optimisers' element loops (optim.pyx): one block of a parameter's step, in the parameter's
 * type T, every product and sum rounded apart as in the NumPy expressions of fastlayers.optim
 * (the module is compiled with -ffp-contract=off; sqrt and division are correctly rounded at
 * any vector width), so the compiled and the NumPy steps give the same bits on every instruction
 * set FL_CLONES builds. */
#ifndef FASTLAYERS_OPTIM_UPDATES_H
#define FASTLAYERS_OPTIM_UPDATES_H

#include <math.h>
#include <stddef.h>

#include "target_clones.h"

/* SGD: d = g + weight_decay * p (decay) or g; with a momentum buffer v (has_v) v = d at the
 * first step, else momentum * v + d, and d = v; then p -= lr * d. */
#define FL_SGD_BLOCK(T)                                                                       \
    FL_CLONES static void fl_sgd_block_##T(T *restrict p, const T *restrict g, T *restrict v,   \
                                           ptrdiff_t n, T lr, T momentum, T weight_decay,       \
                                           int decay, int has_v, int first)                   \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            T d = decay ? g[i] + weight_decay * p[i] : g[i];                                  \
            if (has_v) {                                                                      \
                d = first ? d : momentum * v[i] + d;                                          \
                v[i] = d;                                                                     \
            }                                                                                 \
            p[i] = p[i] - lr * d;                                                             \
        }                                                                                     \
    }

/* Adam: d as SGD's; m = b1 * m + c1 * d, v = b2 * v + c2 * d * d (c = 1 - b), then
 * p -= lr * (m / d1) / (sqrt(v / d2) + eps) (d1, d2: the bias corrections 1 - b**t). */
#define FL_ADAM_BLOCK(T, SQRT)                                                                \
    FL_CLONES static void fl_adam_block_##T(T *restrict p, const T *restrict g, T *restrict m,  \
                                            T *restrict v, ptrdiff_t n, T lr, T b1, T b2, T c1, \
                                            T c2, T d1, T d2, T eps, T weight_decay, int decay) \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            const T d = decay ? g[i] + weight_decay * p[i] : g[i];                            \
            const T mi = b1 * m[i] + c1 * d, vi = b2 * v[i] + c2 * d * d;                     \
            m[i] = mi;                                                                        \
            v[i] = vi;                                                                        \
            p[i] = p[i] - lr * (mi / d1) / (SQRT(vi / d2) + eps);                             \
        }                                                                                     \
    }

FL_SGD_BLOCK(float)
FL_SGD_BLOCK(double)
FL_ADAM_BLOCK(float, sqrtf)
FL_ADAM_BLOCK(double, sqrt)

#endif
