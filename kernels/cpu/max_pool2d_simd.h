/* The row loops of max_pool2d.pyx, vectorised with SSE2: the 2x2 stride-2 pool (the common
 * non-overlapping, unpadded case) forward and backward, and one window tap of the general
 * forward.
 *
 * Why C: GCC 12 does not vectorise these loops at the baseline x86-64 ISA (SSE2) when written
 * as scalar selects (the NaN-aware compare chain and the int64 index selects defeat it), and even
 * keeps the scalar compares as branches, mispredicted about every other element on real data.
 * SSE2 is part of every x86-64 CPU, so no -march flag is needed; elsewhere the scalar loops at
 * the end of each function do all the work (they also do the tails here, so tests cover them).
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
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define FL_WINS(v, m) ((v) > (m) || (v) != (v))

#if defined(__SSE2__)
/* `stream`: non-temporal stores, for outputs too large to stay in cache: they skip reading each
 * output line before writing it (on 2x2 pools the forward then moves 30% fewer bytes, the backward
 * 36% fewer). Needs 16-byte aligned pointers, checked per row by fl_aligned. */
#define FL_STORE_PS(p, v) (stream ? _mm_stream_ps(p, v) : _mm_storeu_ps(p, v))
#define FL_STORE_PD(p, v) (stream ? _mm_stream_pd(p, v) : _mm_storeu_pd(p, v))
#define FL_STORE_SI128(p, v) (stream ? _mm_stream_si128((__m128i *)(p), v) : _mm_storeu_si128((__m128i *)(p), v))

static inline int fl_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }
#endif

/* Orders the non-temporal stores before anything that follows (another thread reading dx). */
static inline void fl_store_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* ------------------------------------------------------------------------- forward
 * Input rows x0, x1 (x0 starts at flat index `first`, rows W apart) -> OW maxima y and their
 * indices. Reads x0[0, 2*OW), x1[0, 2*OW). */

#define FL_POOL_ROW_2X2_TAIL(T)                                              \
    for (; ow < OW; ow++) {                                                  \
        T m = x0[2 * ow], v;                                                 \
        int64_t k = 0;                                                       \
        v = x0[2 * ow + 1]; if (FL_WINS(v, m)) { m = v; k = 1; }             \
        v = x1[2 * ow];     if (FL_WINS(v, m)) { m = v; k = W; }             \
        v = x1[2 * ow + 1]; if (FL_WINS(v, m)) { m = v; k = W + 1; }         \
        y[ow] = m;                                                           \
        indices[ow] = first + 2 * ow + k;                                    \
    }

static inline void fl_pool_row_2x2_float(const float *x0, const float *x1, float *y, int64_t *indices,
                                         ptrdiff_t OW, int64_t first, int64_t W, int stream)
{
    ptrdiff_t ow = 0;
#if defined(__SSE2__)
    stream = stream && fl_aligned(y) && fl_aligned(indices);
    const __m128i one = _mm_set1_epi32(1), two = _mm_set1_epi32(2), three = _mm_set1_epi32(3);
    const __m128i one64 = _mm_set1_epi64x(1), W64 = _mm_set1_epi64x(W), zero = _mm_setzero_si128();
    for (; ow + 4 <= OW; ow += 4) {
        __m128 p = _mm_loadu_ps(x0 + 2 * ow), q = _mm_loadu_ps(x0 + 2 * ow + 4);
        __m128 r = _mm_loadu_ps(x1 + 2 * ow), s = _mm_loadu_ps(x1 + 2 * ow + 4);
        /* deinterleave: a = even columns of x0, b = odd; c, d likewise of x1 */
        __m128 a = _mm_shuffle_ps(p, q, _MM_SHUFFLE(2, 0, 2, 0)), b = _mm_shuffle_ps(p, q, _MM_SHUFFLE(3, 1, 3, 1));
        __m128 c = _mm_shuffle_ps(r, s, _MM_SHUFFLE(2, 0, 2, 0)), d = _mm_shuffle_ps(r, s, _MM_SHUFFLE(3, 1, 3, 1));
        __m128 m = a, w;
        __m128i code = zero; /* 0..3 = a, b, c, d */
#define FL_STEP(v, K)                                                                  \
        w = _mm_or_ps(_mm_cmpgt_ps(v, m), _mm_cmpunord_ps(v, v));                      \
        m = _mm_or_ps(_mm_and_ps(w, v), _mm_andnot_ps(w, m));                          \
        code = _mm_or_si128(_mm_and_si128(_mm_castps_si128(w), K),                     \
                            _mm_andnot_si128(_mm_castps_si128(w), code));
        FL_STEP(b, one)
        FL_STEP(c, two)
        FL_STEP(d, three)
#undef FL_STEP
        FL_STORE_PS(y + ow, m);
        /* offset = (code & 1) + (code >> 1) * W, in int64 lanes */
        __m128i lo = _mm_unpacklo_epi32(code, zero), hi = _mm_unpackhi_epi32(code, zero);
        __m128i base = _mm_add_epi64(_mm_set1_epi64x(first + 2 * ow), _mm_set_epi64x(2, 0));
        __m128i off_lo = _mm_add_epi64(_mm_and_si128(lo, one64),
                                       _mm_and_si128(_mm_sub_epi64(zero, _mm_srli_epi64(lo, 1)), W64));
        __m128i off_hi = _mm_add_epi64(_mm_and_si128(hi, one64),
                                       _mm_and_si128(_mm_sub_epi64(zero, _mm_srli_epi64(hi, 1)), W64));
        FL_STORE_SI128(indices + ow, _mm_add_epi64(base, off_lo));
        FL_STORE_SI128(indices + ow + 2, _mm_add_epi64(_mm_add_epi64(base, _mm_set1_epi64x(4)), off_hi));
    }
#endif
    FL_POOL_ROW_2X2_TAIL(float)
}

static inline void fl_pool_row_2x2_double(const double *x0, const double *x1, double *y, int64_t *indices,
                                          ptrdiff_t OW, int64_t first, int64_t W, int stream)
{
    ptrdiff_t ow = 0;
#if defined(__SSE2__)
    stream = stream && fl_aligned(y) && fl_aligned(indices);
    const __m128i one = _mm_set1_epi64x(1), Wv = _mm_set1_epi64x(W), W1 = _mm_set1_epi64x(W + 1);
    for (; ow + 2 <= OW; ow += 2) {
        __m128d p = _mm_loadu_pd(x0 + 2 * ow), q = _mm_loadu_pd(x0 + 2 * ow + 2);
        __m128d r = _mm_loadu_pd(x1 + 2 * ow), s = _mm_loadu_pd(x1 + 2 * ow + 2);
        __m128d a = _mm_unpacklo_pd(p, q), b = _mm_unpackhi_pd(p, q);
        __m128d c = _mm_unpacklo_pd(r, s), d = _mm_unpackhi_pd(r, s);
        __m128d m = a, w;
        __m128i off = _mm_setzero_si128();
#define FL_STEP(v, K)                                                                  \
        w = _mm_or_pd(_mm_cmpgt_pd(v, m), _mm_cmpunord_pd(v, v));                      \
        m = _mm_or_pd(_mm_and_pd(w, v), _mm_andnot_pd(w, m));                          \
        off = _mm_or_si128(_mm_and_si128(_mm_castpd_si128(w), K),                      \
                           _mm_andnot_si128(_mm_castpd_si128(w), off));
        FL_STEP(b, one)
        FL_STEP(c, Wv)
        FL_STEP(d, W1)
#undef FL_STEP
        FL_STORE_PD(y + ow, m);
        __m128i base = _mm_add_epi64(_mm_set1_epi64x(first + 2 * ow), _mm_set_epi64x(2, 0));
        FL_STORE_SI128(indices + ow, _mm_add_epi64(base, off));
    }
#endif
    FL_POOL_ROW_2X2_TAIL(double)
}

/* ------------------------------------------------------------------------- forward, any window
 * One tap of the general path (any kernel, stride, padding): for ow in [ow_lo, ow_hi) the input
 * cell x_row[ow*SW + off] challenges the running maximum y_row[ow]; when it wins, it replaces it
 * and i_row[ow] becomes row_first + ow*SW + off. Vectorised over ow (the strided cells are
 * gathered by scalar loads): branch-free, where a scalar compare-and-branch is mispredicted
 * about every other time on real data. */

static inline void fl_pool_tap_float(const float *x_row, float *y_row, int64_t *i_row, ptrdiff_t ow_lo,
                                     ptrdiff_t ow_hi, ptrdiff_t SW, ptrdiff_t off, int64_t row_first)
{
    ptrdiff_t ow = ow_lo;
#if defined(__SSE2__)
    for (; ow + 4 <= ow_hi; ow += 4) {
        const float *p = x_row + ow * SW + off;
        __m128 v = _mm_set_ps(p[3 * SW], p[2 * SW], p[SW], p[0]), m = _mm_loadu_ps(y_row + ow);
        __m128 w = _mm_or_ps(_mm_cmpgt_ps(v, m), _mm_cmpunord_ps(v, v));
        _mm_storeu_ps(y_row + ow, _mm_or_ps(_mm_and_ps(w, v), _mm_andnot_ps(w, m)));
        __m128i wi = _mm_castps_si128(w);
        __m128i w01 = _mm_unpacklo_epi32(wi, wi), w23 = _mm_unpackhi_epi32(wi, wi); /* int64 lanes */
        __m128i n01 = _mm_add_epi64(_mm_set1_epi64x(row_first + ow * SW + off), _mm_set_epi64x(SW, 0));
        __m128i n23 = _mm_add_epi64(n01, _mm_set1_epi64x(2 * SW));
        __m128i o01 = _mm_loadu_si128((const __m128i *)(i_row + ow));
        __m128i o23 = _mm_loadu_si128((const __m128i *)(i_row + ow + 2));
        _mm_storeu_si128((__m128i *)(i_row + ow), _mm_or_si128(_mm_and_si128(w01, n01), _mm_andnot_si128(w01, o01)));
        _mm_storeu_si128((__m128i *)(i_row + ow + 2), _mm_or_si128(_mm_and_si128(w23, n23), _mm_andnot_si128(w23, o23)));
    }
#endif
    for (; ow < ow_hi; ow++) {
        float v = x_row[ow * SW + off], m = y_row[ow];
        if (FL_WINS(v, m)) { y_row[ow] = v; i_row[ow] = row_first + ow * SW + off; }
    }
}

static inline void fl_pool_tap_double(const double *x_row, double *y_row, int64_t *i_row, ptrdiff_t ow_lo,
                                      ptrdiff_t ow_hi, ptrdiff_t SW, ptrdiff_t off, int64_t row_first)
{
    ptrdiff_t ow = ow_lo;
#if defined(__SSE2__)
    for (; ow + 2 <= ow_hi; ow += 2) {
        const double *p = x_row + ow * SW + off;
        __m128d v = _mm_set_pd(p[SW], p[0]), m = _mm_loadu_pd(y_row + ow);
        __m128d w = _mm_or_pd(_mm_cmpgt_pd(v, m), _mm_cmpunord_pd(v, v));
        _mm_storeu_pd(y_row + ow, _mm_or_pd(_mm_and_pd(w, v), _mm_andnot_pd(w, m)));
        __m128i wi = _mm_castpd_si128(w);
        __m128i n = _mm_add_epi64(_mm_set1_epi64x(row_first + ow * SW + off), _mm_set_epi64x(SW, 0));
        __m128i o = _mm_loadu_si128((const __m128i *)(i_row + ow));
        _mm_storeu_si128((__m128i *)(i_row + ow), _mm_or_si128(_mm_and_si128(wi, n), _mm_andnot_si128(wi, o)));
    }
#endif
    for (; ow < ow_hi; ow++) {
        double v = x_row[ow * SW + off], m = y_row[ow];
        if (FL_WINS(v, m)) { y_row[ow] = v; i_row[ow] = row_first + ow * SW + off; }
    }
}

/* ------------------------------------------------------------------------- backward
 * One row of 2x2 tiles: dy row g (OW), index row `indices`, dx rows r0, r1 (r0 starts at flat
 * index `first`). Writes every cell of r0[0, 2*OW) and r1[0, 2*OW) once: g where the tile's index
 * points at the cell, else 0. Returns how many of the OW indices pointed inside their tile. */

#define FL_ROUTE_ROW_2X2_TAIL(T)                                             \
    for (; ow < OW; ow++) {                                                  \
        int64_t k = indices[ow] - (first + 2 * ow);                          \
        T gv = g[ow];                                                        \
        r0[2 * ow] = k == 0 ? gv : 0;                                        \
        r0[2 * ow + 1] = k == 1 ? gv : 0;                                    \
        r1[2 * ow] = k == W ? gv : 0;                                        \
        r1[2 * ow + 1] = k == W + 1 ? gv : 0;                                \
        matched += (k == 0) + (k == 1) + (k == W) + (k == W + 1);            \
    }

#if defined(__SSE2__)
/* 64-bit lane equality from SSE2's 32-bit one (pcmpeqq is SSE4.1). */
static inline __m128i fl_cmpeq_epi64(__m128i a, __m128i b)
{
    __m128i t = _mm_cmpeq_epi32(a, b);
    return _mm_and_si128(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
}
#endif

static inline ptrdiff_t fl_route_row_2x2_float(const float *g, const int64_t *indices, float *r0, float *r1,
                                               ptrdiff_t OW, int64_t first, int64_t W, int stream)
{
    ptrdiff_t ow = 0, matched = 0;
#if defined(__SSE2__)
    stream = stream && fl_aligned(r0) && fl_aligned(r1);
    const __m128i t0 = _mm_setzero_si128(), t1 = _mm_set1_epi64x(1);
    const __m128i tW = _mm_set1_epi64x(W), tW1 = _mm_set1_epi64x(W + 1);
    __m128i count = _mm_setzero_si128(); /* minus the number of hits, per 32-bit lane */
    for (; ow + 4 <= OW; ow += 4) {
        __m128i base = _mm_add_epi64(_mm_set1_epi64x(first + 2 * ow), _mm_set_epi64x(2, 0));
        __m128i k01 = _mm_sub_epi64(_mm_loadu_si128((const __m128i *)(indices + ow)), base);
        __m128i k23 = _mm_sub_epi64(_mm_loadu_si128((const __m128i *)(indices + ow + 2)),
                                    _mm_add_epi64(base, _mm_set1_epi64x(4)));
        __m128 gv = _mm_loadu_ps(g + ow), h0, h1, h2, h3;
#define FL_HIT(h, T)                                                                   \
        {                                                                              \
            __m128 mask = _mm_shuffle_ps(_mm_castsi128_ps(fl_cmpeq_epi64(k01, T)),     \
                                         _mm_castsi128_ps(fl_cmpeq_epi64(k23, T)),     \
                                         _MM_SHUFFLE(2, 0, 2, 0));                     \
            count = _mm_add_epi32(count, _mm_castps_si128(mask));                      \
            h = _mm_and_ps(mask, gv);                                                  \
        }
        FL_HIT(h0, t0)
        FL_HIT(h1, t1)
        FL_HIT(h2, tW)
        FL_HIT(h3, tW1)
#undef FL_HIT
        FL_STORE_PS(r0 + 2 * ow, _mm_unpacklo_ps(h0, h1));
        FL_STORE_PS(r0 + 2 * ow + 4, _mm_unpackhi_ps(h0, h1));
        FL_STORE_PS(r1 + 2 * ow, _mm_unpacklo_ps(h2, h3));
        FL_STORE_PS(r1 + 2 * ow + 4, _mm_unpackhi_ps(h2, h3));
    }
    int32_t lanes[4];
    _mm_storeu_si128((__m128i *)lanes, count);
    matched -= (ptrdiff_t)lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
    FL_ROUTE_ROW_2X2_TAIL(float)
    return matched;
}

static inline ptrdiff_t fl_route_row_2x2_double(const double *g, const int64_t *indices, double *r0, double *r1,
                                                ptrdiff_t OW, int64_t first, int64_t W, int stream)
{
    ptrdiff_t ow = 0, matched = 0;
#if defined(__SSE2__)
    stream = stream && fl_aligned(r0) && fl_aligned(r1);
    const __m128i t0 = _mm_setzero_si128(), t1 = _mm_set1_epi64x(1);
    const __m128i tW = _mm_set1_epi64x(W), tW1 = _mm_set1_epi64x(W + 1);
    __m128i count = _mm_setzero_si128(); /* minus the number of hits, per 64-bit lane */
    for (; ow + 2 <= OW; ow += 2) {
        __m128i base = _mm_add_epi64(_mm_set1_epi64x(first + 2 * ow), _mm_set_epi64x(2, 0));
        __m128i k = _mm_sub_epi64(_mm_loadu_si128((const __m128i *)(indices + ow)), base);
        __m128d gv = _mm_loadu_pd(g + ow), h0, h1, h2, h3;
#define FL_HIT(h, T)                                                                   \
        {                                                                              \
            __m128i mask = fl_cmpeq_epi64(k, T);                                       \
            count = _mm_add_epi64(count, mask);                                        \
            h = _mm_and_pd(_mm_castsi128_pd(mask), gv);                                \
        }
        FL_HIT(h0, t0)
        FL_HIT(h1, t1)
        FL_HIT(h2, tW)
        FL_HIT(h3, tW1)
#undef FL_HIT
        FL_STORE_PD(r0 + 2 * ow, _mm_unpacklo_pd(h0, h1));
        FL_STORE_PD(r0 + 2 * ow + 2, _mm_unpackhi_pd(h0, h1));
        FL_STORE_PD(r1 + 2 * ow, _mm_unpacklo_pd(h2, h3));
        FL_STORE_PD(r1 + 2 * ow + 2, _mm_unpackhi_pd(h2, h3));
    }
    int64_t lanes[2];
    _mm_storeu_si128((__m128i *)lanes, count);
    matched -= (ptrdiff_t)(lanes[0] + lanes[1]);
#endif
    FL_ROUTE_ROW_2X2_TAIL(double)
    return matched;
}

#if defined(__SSE2__)
#undef FL_STORE_PS
#undef FL_STORE_PD
#undef FL_STORE_SI128
#endif
#undef FL_POOL_ROW_2X2_TAIL
#undef FL_ROUTE_ROW_2X2_TAIL

#endif
