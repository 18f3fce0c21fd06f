/* Whether n values hold no NaN and no infinity (bits.pyx, all_finite): x - x is 0 for every
 * finite x and NaN otherwise, so one compare a value, OR-ed into a flag without an early exit,
 * which GCC vectorises (an early exit or a float sum would keep the loop scalar). */
#ifndef FASTLAYERS_ALL_FINITE_H
#define FASTLAYERS_ALL_FINITE_H

#include <stddef.h>

#include "target_clones.h"

#define FL_ALL_FINITE(T)                                                                      \
    FL_CLONES static int fl_all_finite_##T(const T *a, ptrdiff_t n)                           \
    {                                                                                         \
        int bad = 0;                                                                          \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            bad |= !(a[i] - a[i] == 0);                                                       \
        return !bad;                                                                          \
    }

FL_ALL_FINITE(float)
FL_ALL_FINITE(double)

#endif
