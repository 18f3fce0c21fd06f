/* The register-blocked plane loops of conv2d_depthwise.pyx (output rows at least one vector
 * wide, 16-byte vectors for rows under 32 bytes; the data gradient at stride 1 only): the loops of conv2d_depthwise_loops.h make one pass
 * over the plane per tap, each loading and storing the output (or, for the weight gradient,
 * loading two operands per multiply-add); here a block of output vectors stays in registers for
 * all the taps.
 *
 * The input plane is first copied, zero-padded, into the caller's scratch: xp (Hp, Wp) with every
 * cell any output reads inside it (fl_dwb_pad; at a column stride over 1 with its columns split
 * by phase, fl_dwb_pad_phases), so tap t of output cell (oh, ow) reads xp[oh * ld + ow + toff[t]],
 * ld being the cells between two output rows' first taps (Wp at stride 1). The output rows are
 * cut into vectors of L columns (the lanes of a vector) at ow = 0, L, 2L, ..., the last one at OW - L,
 * overlapping its neighbour when L does not divide OW (so OW >= L): every vector is loaded and
 * stored whole, straight from and into the planes, with no scratch columns to copy out.
 *
 *   forward / data gradient:  out[oh, ow] = bias + sum_t  tw[t] * xp[oh * ld + ow + toff[t]]
 *   weight gradient:          dw[t] += sum_(oh, ow)  dy[oh, ow] * xp[oh * ld + ow + toff[t]]
 *
 * The forward's taps are the filter's (at stride 1 toff[t] = kh*DH*Wp + kw*DW); the data gradient
 * is the same loop over the gradient planes padded the other way, with the taps mirrored (the
 * caller's tables). FL_DWB_BLOCK vectors (across rows on small planes) share the tap loop, enough
 * independent multiply-add chains to hide their latency; the weight gradient holds
 * FL_DWB_TAPS taps' sums instead, one vector of dy against that many taps.
 *
 * Why C: the accumulators must stay in registers, which GCC does for these vector-extension
 * types once the fixed-count loops are unrolled; compiled for several instruction sets
 * (FL_CLONES, target_clones.h). A vector is 32 bytes (8 floats, 4 doubles): one AVX2 register,
 * half an AVX-512 one (wider vectors would waste most of a 14-wide row), two SSE2 ones.
 * Every sum runs in a fixed order (taps in table order; the weight gradient's lanes summed in
 * order at the end of a plane), so results do not depend on the thread count.
 */
#ifndef FASTLAYERS_CONV2D_DEPTHWISE_BLOCKED_H
#define FASTLAYERS_CONV2D_DEPTHWISE_BLOCKED_H

#include <stddef.h>
#include <string.h>

#include "target_clones.h"

#define FL_DWB_BYTES 32
#define FL_DWB_LANES(T) ((ptrdiff_t)(FL_DWB_BYTES / sizeof(T)))
#define FL_DWB_BLOCK 8 /* output vectors per forward block */
#define FL_DWB_TAPS 9  /* taps per weight-gradient block: a whole 3x3 filter */

/* The vectors, by kind K: 32 bytes (K = float, double), and 16 bytes for output rows narrower
 * than that (K = float_narrow, double_narrow: 4 floats, 2 doubles; MobileNet's last planes are 7
 * wide). */
typedef float fl_dwb_vfloat __attribute__((vector_size(FL_DWB_BYTES), aligned(4), may_alias));
typedef double fl_dwb_vdouble __attribute__((vector_size(FL_DWB_BYTES), aligned(8), may_alias));
typedef float fl_dwb_vfloat_narrow __attribute__((vector_size(FL_DWB_BYTES / 2), aligned(4), may_alias));
typedef double fl_dwb_vdouble_narrow __attribute__((vector_size(FL_DWB_BYTES / 2), aligned(8), may_alias));
/* Their lanes' bits, and v with the lanes of keep's zero bits set to +0 by a bitwise and (not a
 * product: an infinite or NaN lane of v times zero would be NaN, where the reference has no
 * term). */
typedef int fl_dwb_ifloat __attribute__((vector_size(FL_DWB_BYTES)));
typedef long long fl_dwb_idouble __attribute__((vector_size(FL_DWB_BYTES)));
typedef int fl_dwb_ifloat_narrow __attribute__((vector_size(FL_DWB_BYTES / 2)));
typedef long long fl_dwb_idouble_narrow __attribute__((vector_size(FL_DWB_BYTES / 2)));
#define FL_DWB_KEEP(K, v, keep) ((fl_dwb_v##K)((fl_dwb_i##K)(v) & (keep)))

/* The output vector after (oh, ow): the next one along the row, the last one at OW - L, then
 * the next row. */
static inline void fl_dwb_next(ptrdiff_t *oh, ptrdiff_t *ow, ptrdiff_t OW, ptrdiff_t L)
{
    if (*ow + L == OW) {
        *ow = 0;
        ++*oh;
    } else {
        *ow = *ow + 2 * L <= OW ? *ow + L : OW - L;
    }
}

/* row[from, to) = 0 in a row of Wp >= L cells, by vector stores that stay inside the row (the
 * last one overlapping): one store for a narrow border, not a memset call per row. */
#define FL_DWB_ZERO(T)                                                                        \
    static inline void fl_dwb_zero_##T(T *row, ptrdiff_t from, ptrdiff_t to, ptrdiff_t Wp)    \
    {                                                                                         \
        typedef fl_dwb_v##T VT;                                                               \
        const ptrdiff_t L = FL_DWB_LANES(T);                                                  \
        for (ptrdiff_t c = from; c < to; c += L)                                              \
            *(VT *)(row + (c + L <= Wp ? c : Wp - L)) = (VT){0};                              \
    }

/* xp (Hp, Wp) = src (R, S) placed with its cell (0, 0) at (top, left), which may lie outside xp
 * (negative, or past it): the cells of src that land inside are copied, every other cell of xp
 * is zero. Rows are written as vectors when both are at least one wide (the zeros first, then the
 * copy, its last vector overlapping), else cell by cell. */
#define FL_DWB_PAD(T)                                                                         \
    FL_CLONES static void fl_dwb_pad_##T(const T *src, ptrdiff_t R, ptrdiff_t S, T *xp, ptrdiff_t Hp, \
                                         ptrdiff_t Wp, ptrdiff_t top, ptrdiff_t left)         \
    {                                                                                         \
        typedef fl_dwb_v##T VT;                                                               \
        const ptrdiff_t L = FL_DWB_LANES(T);                                                  \
        const ptrdiff_t c0 = left < 0 ? -left : 0, c1 = S < Wp - left ? S : Wp - left;        \
        const ptrdiff_t width = c1 > c0 ? c1 - c0 : 0, d0 = left + c0;                        \
        for (ptrdiff_t r = 0; r < Hp; r++) {                                                  \
            T *row = xp + r * Wp;                                                             \
            const ptrdiff_t sr = r - top;                                                     \
            const int inside = sr >= 0 && sr < R && width > 0;                                \
            const T *s = src + sr * S + c0;                                                   \
            if (Wp < L || (inside && width < L)) {                                            \
                for (ptrdiff_t c = 0; c < Wp; c++)                                            \
                    row[c] = inside && c >= d0 && c < d0 + width ? s[c - d0] : 0;             \
                continue;                                                                     \
            }                                                                                 \
            if (!inside) {                                                                    \
                fl_dwb_zero_##T(row, 0, Wp, Wp);                                              \
                continue;                                                                     \
            }                                                                                 \
            fl_dwb_zero_##T(row, 0, d0, Wp);                                                  \
            fl_dwb_zero_##T(row, d0 + width, Wp, Wp);                                         \
            for (ptrdiff_t c = 0; c + L < width; c += L)                                      \
                *(VT *)(row + d0 + c) = *(const VT *)(s + c);                                 \
            *(VT *)(row + d0 + width - L) = *(const VT *)(s + width - L);                     \
        }                                                                                     \
    }

/* At a column stride SW > 1, xp holds the padded plane's Hp rows of Wp cells split by column
 * phase: Hp rows of SW phases of Wh = ceil(Wp / SW) cells, cell (r, c) at
 * r * SW * Wh + (c % SW) * Wh + c / SW, so that a tap's cells for consecutive outputs are
 * consecutive. Each phase row is zeros around a strided copy of its source cells (stride 2, the
 * usual one, with the stride known to the compiler, which vectorises it). */
#define FL_DWB_PAD_PHASES(T)                                                                  \
    FL_CLONES static void fl_dwb_pad_phases_##T(const T *src, ptrdiff_t R, ptrdiff_t S, T *xp,  \
                                                ptrdiff_t Hp, ptrdiff_t SW, ptrdiff_t Wh,     \
                                                ptrdiff_t top, ptrdiff_t left)                \
    {                                                                                         \
        for (ptrdiff_t r = 0; r < Hp; r++) {                                                  \
            const ptrdiff_t sr = r - top;                                                     \
            for (ptrdiff_t p = 0; p < SW; p++) {                                              \
                T *row = xp + (r * SW + p) * Wh;                                              \
                /* the cells i whose source column i * SW + p - left lies in [0, S) */        \
                ptrdiff_t lo = left - p > 0 ? (left - p + SW - 1) / SW : 0;                   \
                ptrdiff_t hi = S + left - p > 0 ? (S + left - p - 1) / SW + 1 : 0;            \
                hi = hi < Wh ? hi : Wh;                                                       \
                if (sr < 0 || sr >= R || hi < lo)                                             \
                    lo = hi = 0;                                                              \
                for (ptrdiff_t i = 0; i < lo; i++)                                            \
                    row[i] = 0;                                                               \
                for (ptrdiff_t i = hi; i < Wh; i++)                                           \
                    row[i] = 0;                                                               \
                if (lo == hi)                                                                 \
                    continue;                                                                 \
                const T *s = src + sr * S + lo * SW + p - left;                               \
                T *d = row + lo;                                                              \
                if (SW == 2)                                                                  \
                    for (ptrdiff_t i = 0; i < hi - lo; i++)                                   \
                        d[i] = s[2 * i];                                                      \
                else                                                                          \
                    for (ptrdiff_t i = 0; i < hi - lo; i++)                                   \
                        d[i] = s[i * SW];                                                     \
            }                                                                                 \
        }                                                                                     \
    }

/* out (OH, OW) = bias + the taps (toff, tw) of xp (output row oh at oh * ld); OW >= L. The block's last
 * vectors repeat the plane's last one when fewer are left (the same value stored again). */
#define FL_DWB_FORWARD(K, T)                                                                  \
    FL_CLONES static void fl_dwb_forward_##K(const T *xp, ptrdiff_t ld, const ptrdiff_t *toff, \
                                             const T *tw, ptrdiff_t ntaps, T bias, T *out,    \
                                             ptrdiff_t OH, ptrdiff_t OW)                      \
    {                                                                                         \
        typedef fl_dwb_v##K VT;                                                               \
        const ptrdiff_t L = sizeof(VT) / sizeof(T);                                           \
        ptrdiff_t oh = 0, ow = 0;                                                             \
        while (oh < OH) {                                                                     \
            ptrdiff_t in[FL_DWB_BLOCK], at[FL_DWB_BLOCK];                                     \
            _Pragma("GCC unroll 8") for (int b = 0; b < FL_DWB_BLOCK; b++) {                  \
                in[b] = oh * ld + ow;                                                         \
                at[b] = oh * OW + ow;                                                         \
                if (!(oh == OH - 1 && ow == OW - L))                                          \
                    fl_dwb_next(&oh, &ow, OW, L);                                             \
                else if (b == FL_DWB_BLOCK - 1)                                               \
                    oh = OH; /* the plane's last vector is in this block: done */             \
            }                                                                                 \
            VT acc[FL_DWB_BLOCK];                                                             \
            _Pragma("GCC unroll 8") for (int b = 0; b < FL_DWB_BLOCK; b++)                    \
                acc[b] = (VT){0} + bias;                                                      \
            for (ptrdiff_t t = 0; t < ntaps; t++) {                                           \
                const T *s = xp + toff[t];                                                    \
                const T wt = tw[t];                                                           \
                _Pragma("GCC unroll 8") for (int b = 0; b < FL_DWB_BLOCK; b++)                \
                    acc[b] += wt * *(const VT *)(s + in[b]);                                  \
            }                                                                                 \
            _Pragma("GCC unroll 8") for (int b = 0; b < FL_DWB_BLOCK; b++)                    \
                *(VT *)(out + at[b]) = acc[b];                                                \
        }                                                                                     \
    }

/* dw[t] += sum over the cells of dy (OH, OW) of dy times tap t of xp (output row oh at oh * ld);
 * OW >= L. A row's last vector, where it overlaps its neighbour, counts only its new lanes (the
 * others' input lanes kept to zero, dy finite). The taps go FL_DWB_TAPS at a time; a last short
 * block fills its table with tap offset 0 and drops those sums. */
#define FL_DWB_WEIGHT(K, T)                                                                   \
    FL_CLONES static void fl_dwb_weight_##K(const T *dy, ptrdiff_t OH, ptrdiff_t OW, const T *xp, \
                                            ptrdiff_t ld, const ptrdiff_t *toff, ptrdiff_t ntaps, \
                                            T *dw)                                            \
    {                                                                                         \
        typedef fl_dwb_v##K VT;                                                               \
        const ptrdiff_t L = sizeof(VT) / sizeof(T), full = OW / L * L, last = OW - L;         \
        fl_dwb_i##K keep;                                                                     \
        for (ptrdiff_t l = 0; l < L; l++)                                                     \
            keep[l] = last + l >= full ? -1 : 0;                                              \
        for (ptrdiff_t t0 = 0; t0 < ntaps; t0 += FL_DWB_TAPS) {                               \
            ptrdiff_t off[FL_DWB_TAPS];                                                       \
            VT acc[FL_DWB_TAPS];                                                              \
            _Pragma("GCC unroll 9") for (int k = 0; k < FL_DWB_TAPS; k++) {                   \
                off[k] = t0 + k < ntaps ? toff[t0 + k] : 0;                                   \
                acc[k] = (VT){0};                                                             \
            }                                                                                 \
            for (ptrdiff_t oh = 0; oh < OH; oh++) {                                           \
                const T *g = dy + oh * OW, *s = xp + oh * ld;                                 \
                for (ptrdiff_t ow = 0; ow <= last; ow = ow + L <= last || ow == last ? ow + L : last) { \
                    const VT gv = *(const VT *)(g + ow);                                      \
                    if (ow == last && full != OW)                                             \
                        _Pragma("GCC unroll 9") for (int k = 0; k < FL_DWB_TAPS; k++)         \
                            acc[k] += gv * FL_DWB_KEEP(K, *(const VT *)(s + ow + off[k]), keep); \
                    else                                                                      \
                        _Pragma("GCC unroll 9") for (int k = 0; k < FL_DWB_TAPS; k++)         \
                            acc[k] += gv * *(const VT *)(s + ow + off[k]);                    \
                }                                                                             \
            }                                                                                 \
            for (int k = 0; k < FL_DWB_TAPS && t0 + k < ntaps; k++) {                         \
                T total = 0;                                                                  \
                for (ptrdiff_t l = 0; l < L; l++)                                             \
                    total += acc[k][l];                                                       \
                dw[t0 + k] += total;                                                          \
            }                                                                                 \
        }                                                                                     \
    }

FL_DWB_ZERO(float)
FL_DWB_ZERO(double)
FL_DWB_PAD(float)
FL_DWB_PAD(double)
FL_DWB_PAD_PHASES(float)
FL_DWB_PAD_PHASES(double)
FL_DWB_FORWARD(float, float)
FL_DWB_FORWARD(double, double)
FL_DWB_FORWARD(float_narrow, float)
FL_DWB_FORWARD(double_narrow, double)
FL_DWB_WEIGHT(float, float)
FL_DWB_WEIGHT(double, double)
FL_DWB_WEIGHT(float_narrow, float)
FL_DWB_WEIGHT(double_narrow, double)

#endif
