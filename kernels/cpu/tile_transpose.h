/* L x L tiles of 64-byte vectors (16 32-bit or 8 64-bit lanes) transposed in registers, the
 * values moved as bit patterns (unsigned integers of their width): log2(L) stages of two-input
 * shuffles, L / 2 pairs of rows a stage. For the filter-vector kernel's packing
 * (filter_tiles.h) and Winograd's transforms (winograd_f4x3.h), which put channels or filters in
 * a vector's lanes. */
#ifndef FASTLAYERS_TILE_TRANSPOSE_H
#define FASTLAYERS_TILE_TRANSPOSE_H

#include <stdint.h>

typedef uint32_t fl_v16u32 __attribute__((vector_size(64), aligned(4), may_alias));
typedef uint64_t fl_v8u64 __attribute__((vector_size(64), aligned(8), may_alias));

/* v[r][j] <-> v[j][r] for an L x L tile: stage D swaps, between rows r and r + D (r & D == 0),
 * the lanes j & D of row r with the lanes j - D of row r + D. The masks index the pair of rows
 * (0..L-1: row r, L..2L-1: row r + D). */
#define FL_LO(L, D, j) (((j) & (D)) ? (L) + (j) - (D) : (j))
#define FL_HI(L, D, j) (((j) & (D)) ? (L) + (j) : (j) + (D))
#define FL_MASK8(F, L, D) F(L, D, 0), F(L, D, 1), F(L, D, 2), F(L, D, 3), F(L, D, 4), F(L, D, 5), F(L, D, 6), F(L, D, 7)
#define FL_MASK16(F, D) {FL_MASK8(F, 16, D), F(16, D, 8), F(16, D, 9), F(16, D, 10), F(16, D, 11), \
                         F(16, D, 12), F(16, D, 13), F(16, D, 14), F(16, D, 15)}

#define FL_TILE_STAGE(VT, L, D, v, LO, HI)                                                    \
    do {                                                                                      \
        const VT lo_ = LO, hi_ = HI;                                                          \
        _Pragma("GCC unroll 16") for (int r = 0; r < (L); r++) {                              \
            if (r & (D))                                                                      \
                continue;                                                                     \
            const VT a = v[r], b = v[r + (D)];                                                \
            v[r] = __builtin_shuffle(a, b, lo_);                                              \
            v[r + (D)] = __builtin_shuffle(a, b, hi_);                                        \
        }                                                                                     \
    } while (0)

static inline __attribute__((always_inline)) void fl_tile_transpose_uint32_t(fl_v16u32 v[16])
{
    FL_TILE_STAGE(fl_v16u32, 16, 8, v, FL_MASK16(FL_LO, 8), FL_MASK16(FL_HI, 8));
    FL_TILE_STAGE(fl_v16u32, 16, 4, v, FL_MASK16(FL_LO, 4), FL_MASK16(FL_HI, 4));
    FL_TILE_STAGE(fl_v16u32, 16, 2, v, FL_MASK16(FL_LO, 2), FL_MASK16(FL_HI, 2));
    FL_TILE_STAGE(fl_v16u32, 16, 1, v, FL_MASK16(FL_LO, 1), FL_MASK16(FL_HI, 1));
}

static inline __attribute__((always_inline)) void fl_tile_transpose_uint64_t(fl_v8u64 v[8])
{
    FL_TILE_STAGE(fl_v8u64, 8, 4, v, {FL_MASK8(FL_LO, 8, 4)}, {FL_MASK8(FL_HI, 8, 4)});
    FL_TILE_STAGE(fl_v8u64, 8, 2, v, {FL_MASK8(FL_LO, 8, 2)}, {FL_MASK8(FL_HI, 8, 2)});
    FL_TILE_STAGE(fl_v8u64, 8, 1, v, {FL_MASK8(FL_LO, 8, 1)}, {FL_MASK8(FL_HI, 8, 1)});
}

#endif
