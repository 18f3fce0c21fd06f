/* The general max-pool forward (any window, stride, padding, ceil mode), its strided reads made
 * contiguous. For a row of outputs, each input row its windows reach is copied once into phase
 * rows, phase q holding the padded row's cells q, q + SW, q + 2 SW, ... (padding cells -inf), so
 * tap kw of outputs ow, ow + 1, ... is phase row kw % SW read contiguously from ow + kw / SW on.
 * Outputs are then taken a vector at a time, their running maxima and winning taps (offset
 * kh * W + kw in the window, -1 while none has won) kept in registers across all the window's
 * taps and selected branch-free. Gathering the strided cells one by one and keeping the running
 * maximum in memory (the previous path) ran 1.9-2.3x slower (docs/performance.md).
 *
 * Vectors are GCC's and clang's vector extensions (elsewhere a lane loop): 32 bytes on CPUs with
 * AVX2, 16 on the others (32-byte vectors lowered to SSE2 ran 4x slower than 16-byte ones),
 * chosen at run time where GCC builds both (FL_HAS_CLONES); the compiler left the equivalent
 * lane loops scalar.
 *
 * Same order and rule as max_pool2d_simd.h (row-major taps, v wins when v > m or v is NaN); a
 * padding cell is -inf and never wins, so results equal a tap-by-tap scan's bit for bit. The
 * caller guarantees KH * W < 2**31 (the offsets' int32) and gives each thread
 * fl_pool_phase_cells(...) cells of work.
 */
#ifndef FASTLAYERS_MAX_POOL2D_PHASES_H
#define FASTLAYERS_MAX_POOL2D_PHASES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "max_pool2d_simd.h" /* FL_WINS, the rule */
#include "target_clones.h"

enum { FL_POOL_PAD = 8 }; /* phase rows cover OW rounded up to whole vectors of the widest kind */

static inline ptrdiff_t fl_ceil_div(ptrdiff_t a, ptrdiff_t b) { return a > 0 ? (a + b - 1) / b : -((-a) / b); }

static inline ptrdiff_t fl_pool_phase_len(ptrdiff_t OW, ptrdiff_t KW, ptrdiff_t SW)
{
    return fl_ceil_div(OW, FL_POOL_PAD) * FL_POOL_PAD + (KW - 1) / SW;
}

/* Work cells per thread: min(SW, KW) phase rows for each of the window's KH input rows. */
static inline ptrdiff_t fl_pool_phase_cells(ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t SW)
{
    return KH * (SW < KW ? SW : KW) * fl_pool_phase_len(OW, KW, SW);
}

#define FL_PHASE_ROWS(T)                                                                      \
    /* Phase rows 0 .. phases-1 of input row x (W cells), each `len` long, at `out`. */       \
    static inline void fl_phase_rows_##T(const T *restrict x, ptrdiff_t W, ptrdiff_t PW,     \
                                         ptrdiff_t SW, ptrdiff_t phases, ptrdiff_t len,       \
                                         T *restrict out)                                     \
    {                                                                                         \
        for (ptrdiff_t q = 0; q < phases; q++) {                                              \
            T *row = out + q * len;                                                           \
            /* cells j with 0 <= SW*j + q - PW < W come from x, the others are padding */     \
            ptrdiff_t lo = fl_ceil_div(PW - q, SW), hi = fl_ceil_div(W + PW - q, SW);         \
            lo = lo < 0 ? 0 : (lo > len ? len : lo);                                          \
            hi = hi < lo ? lo : (hi > len ? len : hi);                                        \
            ptrdiff_t j = 0;                                                                  \
            for (; j < lo; j++) row[j] = -INFINITY;                                           \
            if (SW == 1) /* constant strides, which the compiler vectorises */                \
                for (; j < hi; j++) row[j] = x[j + q - PW];                                   \
            else if (SW == 2)                                                                 \
                for (; j < hi; j++) row[j] = x[2 * j + q - PW];                               \
            else                                                                              \
                for (; j < hi; j++) row[j] = x[SW * j + q - PW];                              \
            for (; j < len; j++) row[j] = -INFINITY;                                          \
        }                                                                                     \
    }

FL_PHASE_ROWS(float)
FL_PHASE_ROWS(double)

/* The taps of the block of outputs b .. b + LANES - 1: m its maxima, t its winning offsets (of
 * the integer type I as wide as T; kept only when INDEXED, a constant the compiler folds). The
 * tap's phase row and shift are stepped, not divided. */
#if defined(__GNUC__)
#define FL_POOL_BLOCK(T, I, BYTES, INDEXED)                                                            \
    typedef T vec __attribute__((vector_size(BYTES)));                                        \
    typedef I mask __attribute__((vector_size(BYTES)));                                       \
    enum { LANES = BYTES / sizeof(T) };                                                       \
    vec m;                                                                                    \
    mask t;                                                                                   \
    for (int l = 0; l < LANES; l++) { m[l] = -INFINITY; t[l] = -1; }                          \
    for (ptrdiff_t ih = ih_lo; ih < ih_hi; ih++) {                                            \
        const T *rows = work + (ih % KH) * phases * len + b;                                  \
        ptrdiff_t q = 0, shift = 0; /* kw % SW, kw / SW */                                    \
        for (ptrdiff_t kw = 0; kw < KW; kw++) {                                               \
            vec v;                                                                            \
            memcpy(&v, rows + q * len + shift, sizeof v);                                     \
            mask wins = (v > m) | (v != v);                                                   \
            mask offset = (mask){0} + (I)((ih - top) * W + kw);                               \
            m = (vec)((wins & (mask)v) | (~wins & (mask)m));                                  \
            if (INDEXED)                                                                      \
                t = (wins & offset) | (~wins & t);                                            \
            if (++q == SW) { q = 0; shift++; }                                                \
        }                                                                                     \
    }
#else
#define FL_POOL_BLOCK(T, I, BYTES, INDEXED)                                                            \
    enum { LANES = BYTES / sizeof(T) };                                                       \
    T m[LANES];                                                                               \
    I t[LANES];                                                                               \
    for (int l = 0; l < LANES; l++) { m[l] = -INFINITY; t[l] = -1; }                          \
    for (ptrdiff_t ih = ih_lo; ih < ih_hi; ih++) {                                            \
        const T *rows = work + (ih % KH) * phases * len + b;                                  \
        ptrdiff_t q = 0, shift = 0;                                                           \
        for (ptrdiff_t kw = 0; kw < KW; kw++) {                                               \
            const T *src = rows + q * len + shift;                                            \
            for (int l = 0; l < LANES; l++)                                                   \
                if (FL_WINS(src[l], m[l])) { m[l] = src[l]; if (INDEXED) t[l] = (I)((ih - top) * W + kw); } \
            if (++q == SW) { q = 0; shift++; }                                                \
        }                                                                                     \
    }
#endif

/* A plane: y (OH x OW) from x (H x W), with fl_pool_phase_cells(...) of work; with INDEXED the
 * indices too (else `indices` is not touched: inference, where no backward follows). */
#define FL_POOL_PLANE(T, I, BYTES, NAME, ATTRIBUTES, INDEXED)                                 \
    ATTRIBUTES static void NAME(                                                              \
        const T *restrict x, T *restrict y, int64_t *restrict indices, ptrdiff_t H, ptrdiff_t W, \
        ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t SH, ptrdiff_t SW,   \
        ptrdiff_t PH, ptrdiff_t PW, T *restrict work)                                         \
    {                                                                                         \
        ptrdiff_t phases = SW < KW ? SW : KW, len = fl_pool_phase_len(OW, KW, SW);            \
        /* Input row ih's phase rows sit in slot ih % KH: the rows that the window before     \
         * also read (overlapping windows, SH < KH) are there already, and a row copied now   \
         * replaces one above the window (ih - KH). */                                        \
        ptrdiff_t copied = 0; /* rows [0, copied) have been copied, the last KH of them kept */ \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                               \
            T *y_row = y + oh * OW;                                                           \
            ptrdiff_t top = oh * SH - PH;                                                     \
            ptrdiff_t ih_lo = top > 0 ? top : 0, ih_hi = top + KH < H ? top + KH : H;         \
            for (ptrdiff_t ih = ih_lo > copied ? ih_lo : copied; ih < ih_hi; ih++)            \
                fl_phase_rows_##T(x + ih * W, W, PW, SW, phases, len, work + (ih % KH) * phases * len); \
            copied = ih_hi > copied ? ih_hi : copied;                                         \
            /* flat index of the window's (0, 0) cell; where no cell won (all -inf), the      \
             * window's first cell inside the input */                                        \
            int64_t window = (int64_t)top * W - PW, first = (int64_t)ih_lo * W;               \
            for (ptrdiff_t b = 0; b < OW; b += BYTES / sizeof(T)) {                           \
                FL_POOL_BLOCK(T, I, BYTES, INDEXED)                                           \
                ptrdiff_t n = OW - b < LANES ? OW - b : LANES;                                \
                /* A whole block where a cell won in every window (all but windows wholly in \
                 * the padding): stored as vectors, the indices widened lane by lane in one   \
                 * loop the compiler vectorises (a store and a branch per output cost more    \
                 * than the window's taps). */                                               \
                int whole = n == LANES;                                                       \
                for (int l = 0; INDEXED && whole && l < LANES; l++)                            \
                    whole = t[l] >= 0;                                                        \
                if (whole) {                                                                  \
                    memcpy(y_row + b, &m, sizeof m);                                          \
                    if (INDEXED) {                                                            \
                        int64_t *ix = indices + oh * OW + b, base = window + (int64_t)b * SW; \
                        for (int l = 0; l < LANES; l++)                                       \
                            ix[l] = base + (int64_t)l * SW + (int64_t)t[l];                   \
                    }                                                                         \
                    continue;                                                                 \
                }                                                                             \
                for (ptrdiff_t l = 0; l < n; l++) {                                           \
                    y_row[b + l] = m[l];                                                      \
                    if (INDEXED) {                                                            \
                        ptrdiff_t left = (b + l) * SW - PW;                                   \
                        indices[oh * OW + b + l] = t[l] >= 0 ? window + (b + l) * SW + t[l]   \
                                                             : first + (left > 0 ? left : 0); \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

#define FL_POOL_PHASES_ARGS(T) const T *x, T *y, int64_t *indices, ptrdiff_t H, ptrdiff_t W, \
    ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t SH, ptrdiff_t SW,       \
    ptrdiff_t PH, ptrdiff_t PW, T *work
#define FL_POOL_PHASES_CALL x, y, indices, H, W, OH, OW, KH, KW, SH, SW, PH, PW, work

/* Each variant twice, with indices (training) and without (NULL indices: inference). */
#define FL_POOL_PLANE_PAIR(T, I, BYTES, NAME, ATTRIBUTES)                                     \
    FL_POOL_PLANE(T, I, BYTES, NAME##_indexed, ATTRIBUTES, 1)                                 \
    FL_POOL_PLANE(T, I, BYTES, NAME##_values, ATTRIBUTES, 0)                                  \
    static inline void NAME(FL_POOL_PHASES_ARGS(T))                                           \
    {                                                                                         \
        if (indices)                                                                          \
            NAME##_indexed(FL_POOL_PHASES_CALL);                                              \
        else                                                                                  \
            NAME##_values(FL_POOL_PHASES_CALL);                                               \
    }

#ifdef FL_HAS_CLONES
#define FL_POOL_PHASES(T, I)                                                                  \
    FL_POOL_PLANE_PAIR(T, I, 32, fl_pool_plane_phases_avx2_##T, __attribute__((target("arch=x86-64-v3")))) \
    FL_POOL_PLANE_PAIR(T, I, 16, fl_pool_plane_phases_base_##T, )                             \
    static inline void fl_pool_plane_phases_##T(FL_POOL_PHASES_ARGS(T))                       \
    {                                                                                         \
        __builtin_cpu_init();                                                                 \
        if (__builtin_cpu_supports("x86-64-v3") && !fl_pool_baseline_only)                    \
            fl_pool_plane_phases_avx2_##T(FL_POOL_PHASES_CALL);                               \
        else                                                                                  \
            fl_pool_plane_phases_base_##T(FL_POOL_PHASES_CALL);                               \
    }
#else
#if defined(__AVX2__) || !(defined(__x86_64__) || defined(__i386__))
#define FL_POOL_PHASES(T, I) FL_POOL_PLANE_PAIR(T, I, 32, fl_pool_plane_phases_##T, )
#else
#define FL_POOL_PHASES(T, I) FL_POOL_PLANE_PAIR(T, I, 16, fl_pool_plane_phases_##T, )
#endif
#endif

FL_POOL_PHASES(float, int32_t)
FL_POOL_PHASES(double, int64_t)

#endif
