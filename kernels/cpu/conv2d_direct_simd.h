/* The register-blocked inner kernel of conv2d_direct.pyx: one block of FL_FB filters by one or
 * two vectors of output columns, summed over a list of kernel taps.
 *
 *   out[i * ld + v * out_step + j] = bias[i] + sum_t  wp[t * FL_FB + i] * base[toff[t] + v * in_step + j]
 *                                    i < FL_FB, v < V, j < lanes of one vector
 *
 * The V vectors are either two halves of one row segment (in_step = out_step = one vector) or
 * the same columns of two output rows (in_step = the input rows between them, out_step = the
 * output row length), which keeps 16 accumulators busy on rows narrower than a vector.
 * base + toff[t] points at the input values tap t sees, in the caller's padded copy of the input
 * (so they are contiguous and always inside it), and wp + t * FL_FB at that tap's FL_FB weights,
 * packed filter-fastest so the broadcasts read one cache line. The FL_FB * V accumulators live in
 * registers for the whole tap loop; each tap costs V loads, FL_FB broadcasts and FL_FB * V
 * multiply-adds.
 *
 * Why C: the accumulators must stay in registers, which GCC does for these vector-extension
 * types but not reliably for a Cython array of accumulators; and the kernel is compiled for
 * several instruction sets (FL_CLONES, target_clones.h), picked at load time by the CPU it runs
 * on, so the default portable build still uses AVX-512 or AVX2 where they exist. A vector is 64 bytes
 * (16 floats, 8 doubles): one AVX-512 register, two AVX2 ones, four SSE2 ones.
 *
 * Only the first nf filters and the first lanes[v] lanes of vector v are stored: whole vectors
 * straight into the output, a partial block (the last columns of a row, the last filters)
 * through a copy. Every output is summed over the taps in list order: the same list gives the
 * same bits.
 */
#ifndef FASTLAYERS_CONV2D_DIRECT_SIMD_H
#define FASTLAYERS_CONV2D_DIRECT_SIMD_H

#include <stddef.h>
#include <string.h>

#include "target_clones.h"

#define FL_FB 8 /* filters per register block */

/* The 64-byte kernel runs on AVX-512 (and, slowly, the baseline); AVX2 CPUs take the 32-byte
 * passes below, whose blocks fit their 16 registers. */
#ifdef FL_HAS_CLONES
#define FL_WIDE_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define FL_WIDE_CLONES
#endif

typedef float fl_vfloat __attribute__((vector_size(64), aligned(4), may_alias));
typedef double fl_vdouble __attribute__((vector_size(64), aligned(8), may_alias));


/* The kernel: NF filters x C vectors of BYTES bytes, vector c read at base + in_off[c] + the
 * tap's offset and stored at out + out_off[c], lanes[c] of its lanes (in0/in1, out0/out1,
 * lanes0/lanes1: c = 0, 1). The accumulator array is indexed with constants only once the
 * fixed-count loops are unrolled, so it is kept in registers and never needs an address (which
 * would keep a copy of it on the stack). The whole block is stored in place, or its nf x
 * lanes[c] corner through tmp. */
#define FL_DIRECT_KERNEL(NAME, ATTRIBUTES, T, VT, BYTES, C, NF)                                \
    ATTRIBUTES static void NAME(const T *base, const ptrdiff_t *toff, ptrdiff_t ntaps,         \
                                ptrdiff_t in0, ptrdiff_t in1, const T *wp, const T *bias,      \
                                T *out, ptrdiff_t ld, ptrdiff_t out0, ptrdiff_t out1, int nf,  \
                                int lanes0, int lanes1)                                        \
    {                                                                                          \
        const ptrdiff_t in_off[2] = {in0, in1}, out_off[2] = {out0, out1};                     \
        const int lanes[2] = {lanes0, lanes1};                                                 \
        VT acc[(NF)][C];                                                                       \
        _Pragma("GCC unroll 8") for (int i = 0; i < (NF); i++)                                 \
            _Pragma("GCC unroll 2") for (int c = 0; c < (C); c++)                              \
                acc[i][c] = (VT){0} + bias[i];                                                 \
        for (ptrdiff_t t = 0; t < ntaps; t++) {                                                \
            const T *s = base + toff[t];                                                       \
            const T *w = wp + t * FL_FB;                                                       \
            VT x[C];                                                                           \
            _Pragma("GCC unroll 2") for (int c = 0; c < (C); c++)                              \
                x[c] = *(const VT *)(s + in_off[c]);                                           \
            _Pragma("GCC unroll 8") for (int i = 0; i < (NF); i++)                             \
                _Pragma("GCC unroll 2") for (int c = 0; c < (C); c++)                          \
                    acc[i][c] += w[i] * x[c];                                                  \
        }                                                                                      \
        const int L_ = (int)((BYTES) / sizeof(T));                                             \
        int full = nf == (NF);                                                                 \
        for (int c = 0; c < (C); c++)                                                          \
            full = full && lanes[c] == L_;                                                     \
        if (full) {                                                                            \
            _Pragma("GCC unroll 8") for (int i = 0; i < (NF); i++)                             \
                _Pragma("GCC unroll 2") for (int c = 0; c < (C); c++)                          \
                    *(VT *)(out + i * ld + out_off[c]) = acc[i][c];                            \
        } else {                                                                               \
            VT tmp[(NF)][C];                                                                   \
            _Pragma("GCC unroll 8") for (int i = 0; i < (NF); i++)                             \
                _Pragma("GCC unroll 2") for (int c = 0; c < (C); c++)                          \
                    tmp[i][c] = acc[i][c];                                                     \
            for (int i = 0; i < nf; i++)                                                       \
                for (int c = 0; c < (C); c++)                                                  \
                    memcpy(out + i * ld + out_off[c], &tmp[i][c], (size_t)lanes[c] * sizeof(T)); \
        }                                                                                      \
    }

/* The 64-byte block: all FL_FB filters x V vectors (two halves of one row segment, or the same
 * columns of two output rows). */
#define FL_DIRECT_BLOCK(T, VT, V) FL_DIRECT_KERNEL(fl_direct_block##V##_##T, FL_WIDE_CLONES, T, VT, 64, V, FL_FB)

FL_DIRECT_BLOCK(float, fl_vfloat, 1)
FL_DIRECT_BLOCK(float, fl_vfloat, 2)
FL_DIRECT_BLOCK(double, fl_vdouble, 1)
FL_DIRECT_BLOCK(double, fl_vdouble, 2)

#ifdef FL_HAS_CLONES
/* AVX2 (x86-64-v3): the same block as passes over chunks of 32 bytes (a 64-byte vector is two
 * chunks): NF = 4 filters x C = 2 chunks, or all FL_FB = 8 filters x 1 chunk, NF * C = 8
 * accumulators (enough multiply-adds in flight to hide their latency), C loads and NF broadcasts
 * a tap: 11 of the 16 ymm registers at most. Chunk c reads base + in_off[c] and writes out +
 * out_off[c], lanes[c] of its lanes stored; the wp/bias/out given are those of the pass's first
 * filter, nf <= NF of them stored. Chunks holding no stored lane are not computed. Each output
 * is still bias + its taps in list order. */

typedef float fl_v8float __attribute__((vector_size(32), aligned(4), may_alias));
typedef double fl_v4double __attribute__((vector_size(32), aligned(8), may_alias));

#define FL_DIRECT_PASS(T, VT, C, NF)                                                           \
    FL_DIRECT_KERNEL(fl_direct_pass##C##_##T, __attribute__((target("arch=x86-64-v3"))), T, VT, 32, C, NF)

FL_DIRECT_PASS(float, fl_v8float, 1, FL_FB)
FL_DIRECT_PASS(float, fl_v8float, 2, 4)
FL_DIRECT_PASS(double, fl_v4double, 1, FL_FB)
FL_DIRECT_PASS(double, fl_v4double, 2, 4)

/* The block on AVX2: its stored chunks in pairs, for each half of its filters; a last chunk
 * alone, for all of them. */
#define FL_DIRECT_AVX2(T)                                                                      \
    static void fl_direct_block_avx2_##T(const T *base, const ptrdiff_t *toff, ptrdiff_t ntaps,\
                                         ptrdiff_t in_step, const T *wp, const T *bias, T *out,\
                                         ptrdiff_t ld, ptrdiff_t out_step, int nf, int nvec,   \
                                         const int *lanes)                                     \
    {                                                                                          \
        const int H = (int)(32 / sizeof(T));                                                   \
        ptrdiff_t in_off[4], out_off[4];                                                       \
        int stored[4], n = 0;                                                                  \
        for (int v = 0; v < nvec; v++)                                                         \
            for (int h = 0; h < 2; h++) {                                                      \
                int l = lanes[v] - h * H;                                                      \
                if (l <= 0)                                                                    \
                    continue;                                                                  \
                in_off[n] = v * in_step + h * H;                                               \
                out_off[n] = v * out_step + h * H;                                             \
                stored[n++] = l < H ? l : H;                                                   \
            }                                                                                  \
        int k = 0;                                                                             \
        for (; k + 1 < n; k += 2)                                                              \
            for (int f0 = 0; f0 < nf; f0 += 4)                                                 \
                fl_direct_pass2_##T(base, toff, ntaps, in_off[k], in_off[k + 1], wp + f0, bias + f0, \
                                    out + f0 * ld, ld, out_off[k], out_off[k + 1],             \
                                    nf - f0 < 4 ? nf - f0 : 4, stored[k], stored[k + 1]);      \
        if (k < n)                                                                             \
            fl_direct_pass1_##T(base, toff, ntaps, in_off[k], 0, wp, bias, out, ld, out_off[k], 0, \
                                nf, stored[k], 0);                                             \
    }

FL_DIRECT_AVX2(float)
FL_DIRECT_AVX2(double)

/* Whether the block runs as AVX2 passes: an AVX2 CPU without AVX-512 (with it, the 64-byte
 * kernel's clone). Tests may set fl_direct_wide_only to run the 64-byte kernel instead. */
static int fl_direct_wide_only = 0;
static inline int fl_direct_uses_avx2(void)
{
    __builtin_cpu_init();
    return !fl_direct_wide_only && __builtin_cpu_supports("x86-64-v3") && !__builtin_cpu_supports("x86-64-v4");
}
#define FL_DIRECT_TRY_AVX2(T)                                                                  \
    if (fl_direct_uses_avx2()) {                                                               \
        const int lanes[2] = {lanes0, lanes1};                                                 \
        fl_direct_block_avx2_##T(base, toff, ntaps, in_step, wp, bias, out, ld, out_step, nf, nvec, lanes); \
        return;                                                                                \
    }
#else
static int fl_direct_wide_only = 0; /* one kernel only: nothing to choose */
static inline int fl_direct_uses_avx2(void) { return 0; }
#define FL_DIRECT_TRY_AVX2(T)
#endif

/* The block for `nvec` (1 or 2) vectors, lanes0 and lanes1 of them stored. */
#define FL_DIRECT_DISPATCH(T)                                                                  \
    static inline void fl_direct_block_##T(const T *base, const ptrdiff_t *toff,               \
                                           ptrdiff_t ntaps, ptrdiff_t in_step, const T *wp,    \
                                           const T *bias, T *out, ptrdiff_t ld,                \
                                           ptrdiff_t out_step, int nf, int nvec,               \
                                           int lanes0, int lanes1)                             \
    {                                                                                          \
        FL_DIRECT_TRY_AVX2(T)                                                                  \
        if (nvec == 2)                                                                         \
            fl_direct_block2_##T(base, toff, ntaps, 0, in_step, wp, bias, out, ld, 0, out_step, nf, \
                                 lanes0, lanes1);                                              \
        else                                                                                   \
            fl_direct_block1_##T(base, toff, ntaps, 0, in_step, wp, bias, out, ld, 0, out_step, nf, \
                                 lanes0, 0);                                                   \
    }

FL_DIRECT_DISPATCH(float)
FL_DIRECT_DISPATCH(double)

#endif
