/* The 2x2 stride-2 pool (the common non-overlapping, unpadded case) of max_pool2d.pyx, forward
 * and backward (max_pool2d_phases.h has the general forward): rows vectorised with SSE2, and at
 * the end whole planes, in 32-byte vectors on CPUs with AVX2.
 *
 * Why C: GCC 12 does not vectorise these loops at the baseline x86-64 ISA (SSE2) when written
 * as scalar selects (the NaN-aware compare chain and the int64 index selects defeat it), and even
 * keeps the scalar compares as branches, mispredicted about every other element on real data.
 * SSE2 is part of every x86-64 CPU, so no -march flag is needed; elsewhere the scalar loops at
 * the end of each function do all the work (they also do the tails here, so tests cover them).
 *
 * Each loop is written once, as a macro over the element type T (float or double), from the
 * per-type vector operations below: a vector of T holds FL_LANES_T lanes (4 or 2), and the int64
 * indices of those lanes take FL_LANES_T / 2 integer vectors.
 *
 * Semantics, identical in the vector and scalar code and PyTorch's CPU kernels: the window is
 * read in row-major order and v replaces the running maximum m when v > m or v is NaN, so ties
 * keep the first maximum and of several NaNs the last wins. Indices are flat ih*W + iw in the
 * plane.
 */
#ifndef FASTLAYERS_MAX_POOL2D_SIMD_H
#define FASTLAYERS_MAX_POOL2D_SIMD_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "target_clones.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define FL_WINS(v, m) ((v) > (m) || (v) != (v))

#if defined(__SSE2__)
/* ------------------------------------------------------------------------- vector operations */

enum { FL_LANES_float = 4, FL_LANES_double = 2 };
typedef __m128 fl_vec_float;
typedef __m128d fl_vec_double;

static inline int fl_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

static inline __m128i fl_select_si128(__m128i mask, __m128i a, __m128i b)
{
    return _mm_or_si128(_mm_and_si128(mask, a), _mm_andnot_si128(mask, b));
}

/* 64-bit lane equality from SSE2's 32-bit one (pcmpeqq is SSE4.1). */
static inline __m128i fl_cmpeq_epi64(__m128i a, __m128i b)
{
    __m128i t = _mm_cmpeq_epi32(a, b);
    return _mm_and_si128(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
}

/* `stream`: non-temporal stores, for outputs too large to stay in cache: they skip reading each
 * output line before writing it (on 2x2 pools the forward then moves 30% fewer bytes, the backward
 * 36% fewer). Needs 16-byte aligned pointers, checked per row by fl_aligned. */
static inline void fl_store_si128(int64_t *p, __m128i v, int stream)
{
    if (stream)
        _mm_stream_si128((__m128i *)p, v);
    else
        _mm_storeu_si128((__m128i *)p, v);
}

/* The per-type operations, X = the intrinsics' suffix (ps, pd). */
#define FL_VECTOR_OPS(T, X)                                                                   \
    static inline fl_vec_##T fl_loadu_##T(const T *p) { return _mm_loadu_##X(p); }           \
    static inline void fl_store_##T(T *p, fl_vec_##T v, int stream)                           \
    {                                                                                         \
        if (stream)                                                                           \
            _mm_stream_##X(p, v);                                                             \
        else                                                                                  \
            _mm_storeu_##X(p, v);                                                             \
    }                                                                                         \
    /* The lanes where v wins against m (all ones), as in FL_WINS. */                        \
    static inline fl_vec_##T fl_wins_##T(fl_vec_##T v, fl_vec_##T m)                          \
    {                                                                                         \
        return _mm_or_##X(_mm_cmpgt_##X(v, m), _mm_cmpunord_##X(v, v));                       \
    }                                                                                         \
    static inline fl_vec_##T fl_and_##T(fl_vec_##T mask, fl_vec_##T a) { return _mm_and_##X(mask, a); } \
    static inline fl_vec_##T fl_select_##T(fl_vec_##T mask, fl_vec_##T a, fl_vec_##T b)       \
    {                                                                                         \
        return _mm_or_##X(_mm_and_##X(mask, a), _mm_andnot_##X(mask, b));                     \
    }

FL_VECTOR_OPS(float, ps)
FL_VECTOR_OPS(double, pd)
#undef FL_VECTOR_OPS

/* A lane mask -> the int64 masks of the same lanes (lanes 2h, 2h+1 in wide[h]). */
static inline void fl_widen_float(__m128 mask, __m128i *wide)
{
    __m128i m = _mm_castps_si128(mask);
    wide[0] = _mm_unpacklo_epi32(m, m);
    wide[1] = _mm_unpackhi_epi32(m, m);
}
static inline void fl_widen_double(__m128d mask, __m128i *wide) { wide[0] = _mm_castpd_si128(mask); }

/* The inverse: int64 masks -> the lane mask. */
static inline __m128 fl_narrow_float(const __m128i *wide)
{
    return _mm_shuffle_ps(_mm_castsi128_ps(wide[0]), _mm_castsi128_ps(wide[1]), _MM_SHUFFLE(2, 0, 2, 0));
}
static inline __m128d fl_narrow_double(const __m128i *wide) { return _mm_castsi128_pd(wide[0]); }

/* Two vectors of consecutive elements p, q -> their even and odd elements; and back. */
static inline void fl_deinterleave_float(__m128 p, __m128 q, __m128 *even, __m128 *odd)
{
    *even = _mm_shuffle_ps(p, q, _MM_SHUFFLE(2, 0, 2, 0));
    *odd = _mm_shuffle_ps(p, q, _MM_SHUFFLE(3, 1, 3, 1));
}
static inline void fl_deinterleave_double(__m128d p, __m128d q, __m128d *even, __m128d *odd)
{
    *even = _mm_unpacklo_pd(p, q);
    *odd = _mm_unpackhi_pd(p, q);
}
static inline void fl_interleave_float(__m128 even, __m128 odd, __m128 *p, __m128 *q)
{
    *p = _mm_unpacklo_ps(even, odd);
    *q = _mm_unpackhi_ps(even, odd);
}
static inline void fl_interleave_double(__m128d even, __m128d odd, __m128d *p, __m128d *q)
{
    *p = _mm_unpacklo_pd(even, odd);
    *q = _mm_unpackhi_pd(even, odd);
}

/* The flat indices first + 2*(ow + 2h) + {0, 2} of output lanes 2h, 2h+1 of a 2x2 row. */
static inline __m128i fl_tile_starts(int64_t first, ptrdiff_t ow, int h)
{
    return _mm_add_epi64(_mm_set1_epi64x(first + 2 * (ow + 2 * h)), _mm_set_epi64x(2, 0));
}
#endif

/* Orders the non-temporal stores before anything that follows (another thread reading dx). */
static inline void fl_store_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* ------------------------------------------------------------------------- forward, 2x2
 * Input rows x0, x1 (x0 starts at flat index `first`, rows W apart) -> OW maxima y and their
 * indices. Reads x0[0, 2*OW), x1[0, 2*OW). */

#if defined(__SSE2__)
/* Challenge the running maximum m by v, whose offset in the tile is K (int64 lanes). */
#define FL_POOL_STEP_2X2(T, v, K)                                                             \
    w = fl_wins_##T(v, m);                                                                    \
    m = fl_select_##T(w, v, m);                                                               \
    fl_widen_##T(w, wide);                                                                    \
    for (int h = 0; h < FL_LANES_##T / 2; h++)                                                \
        off[h] = fl_select_si128(wide[h], K, off[h]);

#define FL_POOL_ROW_2X2_VECTOR(T)                                                             \
    stream = stream && fl_aligned(y) && fl_aligned(indices);                                  \
    const __m128i one = _mm_set1_epi64x(1), Wv = _mm_set1_epi64x(W), W1 = _mm_set1_epi64x(W + 1); \
    for (; ow + FL_LANES_##T <= OW; ow += FL_LANES_##T) {                                     \
        fl_vec_##T a, b, c, d, m, w;                                                          \
        fl_deinterleave_##T(fl_loadu_##T(x0 + 2 * ow), fl_loadu_##T(x0 + 2 * ow + FL_LANES_##T), &a, &b); \
        fl_deinterleave_##T(fl_loadu_##T(x1 + 2 * ow), fl_loadu_##T(x1 + 2 * ow + FL_LANES_##T), &c, &d); \
        __m128i off[FL_LANES_##T / 2], wide[FL_LANES_##T / 2];                                \
        for (int h = 0; h < FL_LANES_##T / 2; h++)                                            \
            off[h] = _mm_setzero_si128();                                                     \
        m = a;                                                                                \
        FL_POOL_STEP_2X2(T, b, one)                                                           \
        FL_POOL_STEP_2X2(T, c, Wv)                                                            \
        FL_POOL_STEP_2X2(T, d, W1)                                                            \
        fl_store_##T(y + ow, m, stream);                                                      \
        for (int h = 0; h < FL_LANES_##T / 2; h++)                                            \
            fl_store_si128(indices + ow + 2 * h, _mm_add_epi64(fl_tile_starts(first, ow, h), off[h]), stream); \
    }
#else
#define FL_POOL_ROW_2X2_VECTOR(T)
#endif

#define FL_POOL_ROW_2X2(T)                                                                    \
    static inline void fl_pool_row_2x2_##T(const T *x0, const T *x1, T *y, int64_t *indices,  \
                                           ptrdiff_t OW, int64_t first, int64_t W, int stream) \
    {                                                                                         \
        ptrdiff_t ow = 0;                                                                     \
        FL_POOL_ROW_2X2_VECTOR(T)                                                             \
        for (; ow < OW; ow++) {                                                               \
            T m = x0[2 * ow], v;                                                              \
            int64_t k = 0;                                                                    \
            v = x0[2 * ow + 1]; if (FL_WINS(v, m)) { m = v; k = 1; }                          \
            v = x1[2 * ow];     if (FL_WINS(v, m)) { m = v; k = W; }                          \
            v = x1[2 * ow + 1]; if (FL_WINS(v, m)) { m = v; k = W + 1; }                      \
            y[ow] = m;                                                                        \
            indices[ow] = first + 2 * ow + k;                                                 \
        }                                                                                     \
    }

/* The same maxima without their indices (inference: no backward follows), in the same order
 * and rule, so y is the same bit for bit. */
#if defined(__SSE2__)
#define FL_POOL_VALUES_2X2_VECTOR(T)                                                          \
    stream = stream && fl_aligned(y);                                                         \
    for (; ow + FL_LANES_##T <= OW; ow += FL_LANES_##T) {                                     \
        fl_vec_##T a, b, c, d, m;                                                             \
        fl_deinterleave_##T(fl_loadu_##T(x0 + 2 * ow), fl_loadu_##T(x0 + 2 * ow + FL_LANES_##T), &a, &b); \
        fl_deinterleave_##T(fl_loadu_##T(x1 + 2 * ow), fl_loadu_##T(x1 + 2 * ow + FL_LANES_##T), &c, &d); \
        m = fl_select_##T(fl_wins_##T(b, a), b, a);                                           \
        m = fl_select_##T(fl_wins_##T(c, m), c, m);                                           \
        m = fl_select_##T(fl_wins_##T(d, m), d, m);                                           \
        fl_store_##T(y + ow, m, stream);                                                      \
    }
#else
#define FL_POOL_VALUES_2X2_VECTOR(T)
#endif

#define FL_POOL_VALUES_2X2(T)                                                                 \
    static inline void fl_pool_values_2x2_##T(const T *x0, const T *x1, T *y, ptrdiff_t OW, int stream) \
    {                                                                                         \
        ptrdiff_t ow = 0;                                                                     \
        FL_POOL_VALUES_2X2_VECTOR(T)                                                          \
        for (; ow < OW; ow++) {                                                               \
            T m = x0[2 * ow], v;                                                              \
            v = x0[2 * ow + 1]; if (FL_WINS(v, m)) m = v;                                     \
            v = x1[2 * ow];     if (FL_WINS(v, m)) m = v;                                     \
            v = x1[2 * ow + 1]; if (FL_WINS(v, m)) m = v;                                     \
            y[ow] = m;                                                                        \
        }                                                                                     \
    }

/* ------------------------------------------------------------------------- backward, 2x2
 * One row of 2x2 tiles: dy row g (OW), index row `indices`, dx rows r0, r1 (r0 starts at flat
 * index `first`). Writes every cell of r0[0, 2*OW) and r1[0, 2*OW) once: g where the tile's index
 * points at the cell, else 0. Returns how many of the OW indices pointed inside their tile. */

#if defined(__SSE2__)
/* h = g where the index's offset in its tile is K; counts the hits (in int64 lanes: a count
 * per 32-bit lane would wrap past 2**31 outputs a row). */
#define FL_ROUTE_HIT_2X2(T, hits, K)                                                          \
    {                                                                                         \
        __m128i eq[FL_LANES_##T / 2];                                                         \
        for (int h = 0; h < FL_LANES_##T / 2; h++) {                                          \
            eq[h] = fl_cmpeq_epi64(k[h], K);                                                  \
            count = _mm_add_epi64(count, eq[h]);                                              \
        }                                                                                     \
        hits = fl_and_##T(fl_narrow_##T(eq), gv);                                             \
    }

#define FL_ROUTE_ROW_2X2_VECTOR(T)                                                            \
    stream = stream && fl_aligned(r0) && fl_aligned(r1);                                      \
    const __m128i t0 = _mm_setzero_si128(), t1 = _mm_set1_epi64x(1);                         \
    const __m128i tW = _mm_set1_epi64x(W), tW1 = _mm_set1_epi64x(W + 1);                      \
    __m128i count = _mm_setzero_si128(); /* minus the number of hits */                       \
    for (; ow + FL_LANES_##T <= OW; ow += FL_LANES_##T) {                                     \
        __m128i k[FL_LANES_##T / 2];                                                          \
        for (int h = 0; h < FL_LANES_##T / 2; h++)                                            \
            k[h] = _mm_sub_epi64(_mm_loadu_si128((const __m128i *)(indices + ow + 2 * h)),    \
                                 fl_tile_starts(first, ow, h));                               \
        fl_vec_##T gv = fl_loadu_##T(g + ow), h0, h1, h2, h3, p, q;                           \
        FL_ROUTE_HIT_2X2(T, h0, t0)                                                           \
        FL_ROUTE_HIT_2X2(T, h1, t1)                                                           \
        FL_ROUTE_HIT_2X2(T, h2, tW)                                                           \
        FL_ROUTE_HIT_2X2(T, h3, tW1)                                                          \
        fl_interleave_##T(h0, h1, &p, &q);                                                    \
        fl_store_##T(r0 + 2 * ow, p, stream);                                                 \
        fl_store_##T(r0 + 2 * ow + FL_LANES_##T, q, stream);                                  \
        fl_interleave_##T(h2, h3, &p, &q);                                                    \
        fl_store_##T(r1 + 2 * ow, p, stream);                                                 \
        fl_store_##T(r1 + 2 * ow + FL_LANES_##T, q, stream);                                  \
    }                                                                                         \
    int64_t lanes[2];                                                                         \
    _mm_storeu_si128((__m128i *)lanes, count);                                                \
    matched -= (ptrdiff_t)(lanes[0] + lanes[1]);
#else
#define FL_ROUTE_ROW_2X2_VECTOR(T)
#endif

#define FL_ROUTE_ROW_2X2(T)                                                                   \
    static inline ptrdiff_t fl_route_row_2x2_##T(const T *g, const int64_t *indices, T *r0, T *r1, \
                                                 ptrdiff_t OW, int64_t first, int64_t W, int stream) \
    {                                                                                         \
        ptrdiff_t ow = 0, matched = 0;                                                        \
        FL_ROUTE_ROW_2X2_VECTOR(T)                                                            \
        for (; ow < OW; ow++) {                                                               \
            int64_t k = indices[ow] - (first + 2 * ow);                                       \
            T gv = g[ow];                                                                     \
            r0[2 * ow] = k == 0 ? gv : 0;                                                     \
            r0[2 * ow + 1] = k == 1 ? gv : 0;                                                 \
            r1[2 * ow] = k == W ? gv : 0;                                                     \
            r1[2 * ow + 1] = k == W + 1 ? gv : 0;                                             \
            matched += (k == 0) + (k == 1) + (k == W) + (k == W + 1);                         \
        }                                                                                     \
        return matched;                                                                       \
    }

FL_POOL_ROW_2X2(float)
FL_POOL_ROW_2X2(double)
FL_POOL_VALUES_2X2(float)
FL_POOL_VALUES_2X2(double)
FL_ROUTE_ROW_2X2(float)
FL_ROUTE_ROW_2X2(double)

/* ------------------------------------------------------------------------- 2x2 planes
 * A whole plane of 2x2 tiles, forward (y and, unless NULL, the indices; `relu`: y through a
 * ReLU, relu.pyx's rule: x < 0 -> 0, NaN and -0.0 kept) and backward (returns the hits, as the
 * rows do). On CPUs with AVX2 the planes run in 32-byte vectors (GCC's vector extensions, in a
 * function built for x86-64-v3 and chosen at run time): 8 float or 4 double outputs a step, in
 * registers from the loads to the store, the ReLU included; the SSE2 rows above take each row's
 * tail. The SSE2 rows take whole planes on the other CPUs, where the tests ask for them
 * (fl_pool_baseline_only), and for non-temporal stores, which the vector extensions cannot
 * express (multi-MiB outputs, where memory, not instructions, sets the pace). Same order and
 * rule everywhere, so the same bits. */

static int fl_pool_baseline_only = 0; /* tests run the 16-byte variants on AVX2 CPUs too */

#define FL_POOL_PLANE_2X2_BASE(T)                                                             \
    static inline void fl_pool_plane_2x2_base_##T(const T *x, T *y, int64_t *indices, ptrdiff_t W, \
                                                  ptrdiff_t OH, ptrdiff_t OW, int stream, int relu) \
    {                                                                                         \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                               \
            const T *x0 = x + 2 * oh * W;                                                     \
            if (indices)                                                                      \
                fl_pool_row_2x2_##T(x0, x0 + W, y + oh * OW, indices + oh * OW, OW, 2 * oh * W, W, stream); \
            else                                                                              \
                fl_pool_values_2x2_##T(x0, x0 + W, y + oh * OW, OW, stream);                  \
        }                                                                                     \
        if (stream)                                                                           \
            fl_store_fence();                                                                 \
        for (ptrdiff_t i = 0; relu && i < OH * OW; i++)                                       \
            y[i] = y[i] < 0 ? 0 : y[i];                                                       \
    }                                                                                         \
    static inline ptrdiff_t fl_route_plane_2x2_base_##T(const T *g, const int64_t *indices, T *dx, \
                                                        ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, int stream) \
    {                                                                                         \
        ptrdiff_t matched = 0;                                                                \
        for (ptrdiff_t oh = 0; oh < OH; oh++)                                                 \
            matched += fl_route_row_2x2_##T(g + oh * OW, indices + oh * OW, dx + 2 * oh * W,  \
                                            dx + (2 * oh + 1) * W, OW, 2 * oh * W, W, stream); \
        if (stream)                                                                           \
            fl_store_fence();                                                                 \
        return matched;                                                                       \
    }

FL_POOL_PLANE_2X2_BASE(float)
FL_POOL_PLANE_2X2_BASE(double)

#if defined(FL_HAS_CLONES)
/* Even and odd elements of the 2 LANES consecutive ones in p, q; and their interleaving back. */
#define FL_EVEN_float(p, q) __builtin_shufflevector(p, q, 0, 2, 4, 6, 8, 10, 12, 14)
#define FL_ODD_float(p, q) __builtin_shufflevector(p, q, 1, 3, 5, 7, 9, 11, 13, 15)
#define FL_LOW_PAIRS_float(e, o) __builtin_shufflevector(e, o, 0, 8, 1, 9, 2, 10, 3, 11)
#define FL_HIGH_PAIRS_float(e, o) __builtin_shufflevector(e, o, 4, 12, 5, 13, 6, 14, 7, 15)
#define FL_EVEN_double(p, q) __builtin_shufflevector(p, q, 0, 2, 4, 6)
#define FL_ODD_double(p, q) __builtin_shufflevector(p, q, 1, 3, 5, 7)
#define FL_LOW_PAIRS_double(e, o) __builtin_shufflevector(e, o, 0, 4, 1, 5)
#define FL_HIGH_PAIRS_double(e, o) __builtin_shufflevector(e, o, 2, 6, 3, 7)

/* The vector types of T's wide planes: vec (32 bytes of T), mask (as many lanes of I, T's
 * width); and quads of int64 lanes (the indices, in FL_QUADS_T of them a vector): steps[h]
 * the offsets 2 l of the tiles of quad h's lanes l from the block's first tile. */
typedef int64_t fl_quad __attribute__((vector_size(32)));
typedef int32_t fl_int32x8 __attribute__((vector_size(32)));
#define FL_WIDE_TYPES(T, I)                                                                   \
    enum { LANES = 32 / sizeof(T), QUADS = FL_QUADS_##T };                                    \
    typedef T vec __attribute__((vector_size(32)));                                           \
    typedef I mask __attribute__((vector_size(32)));                                          \
    fl_quad steps[QUADS];                                                                     \
    for (int h = 0; h < QUADS; h++)                                                           \
        for (int l = 0; l < 4; l++)                                                           \
            steps[h][l] = 2 * (4 * h + l);

/* A mask's lanes as int64 quads q[], and back (the masks all ones or zero). */
#define FL_QUADS_float 2
#define FL_WIDEN_float(k, q)                                                                  \
    (q[0] = __builtin_convertvector(__builtin_shufflevector(k, k, 0, 1, 2, 3), fl_quad),     \
     q[1] = __builtin_convertvector(__builtin_shufflevector(k, k, 4, 5, 6, 7), fl_quad))
#define FL_NARROW_float(q) __builtin_shufflevector((fl_int32x8)q[0], (fl_int32x8)q[1], 0, 2, 4, 6, 8, 10, 12, 14)
#define FL_QUADS_double 1
#define FL_WIDEN_double(k, q) (q[0] = k)
#define FL_NARROW_double(q) q[0]

/* Challenge the running maximum m by v, at offset K of the tile (the caller keeps W + 1 in I). */
#define FL_WIDE_STEP(v, K, I, INDEXED)                                                        \
    {                                                                                         \
        mask wins = (v > m) | (v != v);                                                       \
        m = (vec)((wins & (mask)v) | (~wins & (mask)m));                                      \
        if (INDEXED)                                                                          \
            k = (wins & ((mask){0} + (I)(K))) | (~wins & k);                                  \
    }

#define FL_POOL_PLANE_2X2_WIDE(T, I, NAME, INDEXED)                                           \
    __attribute__((target("arch=x86-64-v3"))) static void NAME(                               \
        const T *restrict x, T *restrict y, int64_t *restrict indices, ptrdiff_t W, ptrdiff_t OH, \
        ptrdiff_t OW, int relu)                                                               \
    {                                                                                         \
        FL_WIDE_TYPES(T, I)                                                                   \
        const vec zero = {0};                                                                 \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                               \
            const T *x0 = x + 2 * oh * W, *x1 = x0 + W;                                       \
            T *y_row = y + oh * OW;                                                           \
            int64_t first = 2 * oh * W;                                                       \
            ptrdiff_t ow = 0;                                                                 \
            for (; ow + LANES <= OW; ow += LANES) {                                           \
                vec p0, p1, q0, q1;                                                           \
                memcpy(&p0, x0 + 2 * ow, sizeof p0);                                          \
                memcpy(&p1, x0 + 2 * ow + LANES, sizeof p1);                                  \
                memcpy(&q0, x1 + 2 * ow, sizeof q0);                                          \
                memcpy(&q1, x1 + 2 * ow + LANES, sizeof q1);                                  \
                vec b = FL_ODD_##T(p0, p1), c = FL_EVEN_##T(q0, q1), d = FL_ODD_##T(q0, q1);  \
                vec m = FL_EVEN_##T(p0, p1);                                                  \
                mask k = {0};                                                                 \
                FL_WIDE_STEP(b, 1, I, INDEXED)                                                \
                FL_WIDE_STEP(c, W, I, INDEXED)                                                \
                FL_WIDE_STEP(d, W + 1, I, INDEXED)                                            \
                if (relu)                                                                     \
                    m = (vec)(~(m < zero) & (mask)m);                                         \
                memcpy(y_row + ow, &m, sizeof m);                                             \
                if (INDEXED) {                                                                \
                    fl_quad q[QUADS];                                                         \
                    FL_WIDEN_##T(k, q);                                                       \
                    for (int h = 0; h < QUADS; h++) {                                         \
                        fl_quad at = q[h] + steps[h] + (first + 2 * ow);                      \
                        memcpy(indices + oh * OW + ow + 4 * h, &at, sizeof at);               \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            if (INDEXED)                                                                      \
                fl_pool_row_2x2_##T(x0 + 2 * ow, x1 + 2 * ow, y_row + ow, indices + oh * OW + ow, OW - ow, \
                                    first + 2 * ow, W, 0);                                    \
            else                                                                              \
                fl_pool_values_2x2_##T(x0 + 2 * ow, x1 + 2 * ow, y_row + ow, OW - ow, 0);     \
            for (; relu && ow < OW; ow++)                                                     \
                y_row[ow] = y_row[ow] < 0 ? 0 : y_row[ow];                                    \
        }                                                                                     \
    }

#define FL_ROUTE_PLANE_2X2_WIDE(T, I)                                                         \
    __attribute__((target("arch=x86-64-v3"))) static ptrdiff_t fl_route_plane_2x2_wide_##T(   \
        const T *restrict g, const int64_t *restrict indices, T *restrict dx, ptrdiff_t W,    \
        ptrdiff_t OH, ptrdiff_t OW)                                                           \
    {                                                                                         \
        FL_WIDE_TYPES(T, I)                                                                   \
        ptrdiff_t matched = 0;                                                                \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                               \
            const T *g_row = g + oh * OW;                                                     \
            const int64_t *i_row = indices + oh * OW;                                         \
            T *r0 = dx + 2 * oh * W, *r1 = r0 + W;                                            \
            int64_t first = 2 * oh * W;                                                       \
            fl_quad count = {0}; /* minus the hits */                                         \
            ptrdiff_t ow = 0;                                                                 \
            for (; ow + LANES <= OW; ow += LANES) {                                           \
                fl_quad e0[QUADS], e1[QUADS], e2[QUADS], e3[QUADS];                           \
                for (int h = 0; h < QUADS; h++) {                                             \
                    fl_quad t; /* the offsets in the tiles, compared in int64 */              \
                    memcpy(&t, i_row + ow + 4 * h, sizeof t);                                 \
                    t -= steps[h] + (first + 2 * ow);                                         \
                    e0[h] = t == 0, e1[h] = t == 1, e2[h] = t == W, e3[h] = t == W + 1;       \
                    count += e0[h] + e1[h] + e2[h] + e3[h];                                   \
                }                                                                             \
                vec gv;                                                                       \
                memcpy(&gv, g_row + ow, sizeof gv);                                           \
                vec h0 = (vec)((mask)FL_NARROW_##T(e0) & (mask)gv);                           \
                vec h1 = (vec)((mask)FL_NARROW_##T(e1) & (mask)gv);                           \
                vec h2 = (vec)((mask)FL_NARROW_##T(e2) & (mask)gv);                           \
                vec h3 = (vec)((mask)FL_NARROW_##T(e3) & (mask)gv);                           \
                vec p = FL_LOW_PAIRS_##T(h0, h1), q = FL_HIGH_PAIRS_##T(h0, h1);              \
                memcpy(r0 + 2 * ow, &p, sizeof p);                                            \
                memcpy(r0 + 2 * ow + LANES, &q, sizeof q);                                    \
                p = FL_LOW_PAIRS_##T(h2, h3), q = FL_HIGH_PAIRS_##T(h2, h3);                  \
                memcpy(r1 + 2 * ow, &p, sizeof p);                                            \
                memcpy(r1 + 2 * ow + LANES, &q, sizeof q);                                    \
            }                                                                                 \
            for (int l = 0; l < 4; l++)                                                       \
                matched -= (ptrdiff_t)count[l];                                               \
            matched += fl_route_row_2x2_##T(g_row + ow, i_row + ow, r0 + 2 * ow, r1 + 2 * ow, OW - ow, \
                                            first + 2 * ow, W, 0);                            \
        }                                                                                     \
        return matched;                                                                       \
    }

FL_POOL_PLANE_2X2_WIDE(float, int32_t, fl_pool_plane_2x2_values_float, 0)
FL_POOL_PLANE_2X2_WIDE(float, int32_t, fl_pool_plane_2x2_indexed_float, 1)
FL_POOL_PLANE_2X2_WIDE(double, int64_t, fl_pool_plane_2x2_values_double, 0)
FL_POOL_PLANE_2X2_WIDE(double, int64_t, fl_pool_plane_2x2_indexed_double, 1)
FL_ROUTE_PLANE_2X2_WIDE(float, int32_t)
FL_ROUTE_PLANE_2X2_WIDE(double, int64_t)

/* Whether a plane of width W takes the wide functions: an AVX2 CPU, ordinary stores, and the
 * tile offsets (up to W + 1) in int32 lanes. */
static inline int fl_pool_wide(ptrdiff_t W, int stream)
{
    __builtin_cpu_init();
    return !stream && W < INT32_MAX && __builtin_cpu_supports("x86-64-v3") && !fl_pool_baseline_only;
}

#define FL_POOL_PLANE_2X2(T)                                                                  \
    static inline void fl_pool_plane_2x2_##T(const T *x, T *y, int64_t *indices, ptrdiff_t W, ptrdiff_t OH, \
                                             ptrdiff_t OW, int stream, int relu)              \
    {                                                                                         \
        if (!fl_pool_wide(W, stream))                                                         \
            fl_pool_plane_2x2_base_##T(x, y, indices, W, OH, OW, stream, relu);               \
        else if (indices)                                                                     \
            fl_pool_plane_2x2_indexed_##T(x, y, indices, W, OH, OW, relu);                    \
        else                                                                                  \
            fl_pool_plane_2x2_values_##T(x, y, indices, W, OH, OW, relu);                     \
    }                                                                                         \
    static inline ptrdiff_t fl_route_plane_2x2_##T(const T *g, const int64_t *indices, T *dx, ptrdiff_t W, \
                                                   ptrdiff_t OH, ptrdiff_t OW, int stream)    \
    {                                                                                         \
        if (fl_pool_wide(W, stream))                                                          \
            return fl_route_plane_2x2_wide_##T(g, indices, dx, W, OH, OW);                    \
        return fl_route_plane_2x2_base_##T(g, indices, dx, W, OH, OW, stream);                \
    }

FL_POOL_PLANE_2X2(float)
FL_POOL_PLANE_2X2(double)
#else /* no wide planes: the rows take them all */
#define fl_pool_plane_2x2_float fl_pool_plane_2x2_base_float
#define fl_pool_plane_2x2_double fl_pool_plane_2x2_base_double
#define fl_route_plane_2x2_float fl_route_plane_2x2_base_float
#define fl_route_plane_2x2_double fl_route_plane_2x2_base_double
#endif

#endif
