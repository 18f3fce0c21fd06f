/* The filter-vector kernel's packed weights (conv2d_direct.pyx: pack_filters, and the tasks of
 * conv2d_forward_fvec_unpacked): a block of 2L filters (L = the lanes of a 64-byte vector: 16
 * floats, 8 doubles) stored filter-fastest, tap by tap,
 *
 *   packed[k * 2L + i] = w[i * ld + k]   i < nf,   0 for nf <= i < 2L,   k < K,
 *
 * written by L x L tiles transposed in registers (tile_transpose.h): L row loads of L taps of
 * L filters, the transpose, L stores. Element by element, the filters' rows (K apart, often
 * in few cache sets) cost 2-3 cycles a value: packing 512 channels' 3x3 filters took longer
 * than the convolution itself. The values are moved as bit patterns (unsigned integers of their
 * width), and tested for infinities and NaNs (exponent bits all ones) on the way. */
#ifndef FASTLAYERS_FILTER_TILES_H
#define FASTLAYERS_FILTER_TILES_H

#include <stddef.h>
#include <stdint.h>

#include "conv2d_direct_simd.h" /* FL_WIDE_CLONES */
#include "tile_transpose.h"

/* The tile of filters h*L.. (h = 0, 1) at taps k0..k0+L-1, transposed: v[t] holds tap k0 + t
 * of those filters, zeros for filters past nf. */
#define FL_TILE_LOAD(VT, L, TRANSPOSE, w, ld, nf, h, k0, v)                                   \
    do {                                                                                      \
        if ((nf) >= ((h) + 1) * (L)) {                                                        \
            _Pragma("GCC unroll 16") for (int i_ = 0; i_ < (L); i_++)                         \
                v[i_] = *(const VT *)((w) + ((h) * (L) + i_) * (ld) + (k0));                  \
        } else {                                                                              \
            for (int i_ = 0; i_ < (L); i_++)                                                  \
                v[i_] = (h) * (L) + i_ < (nf) ? *(const VT *)((w) + ((h) * (L) + i_) * (ld) + (k0)) \
                                              : (VT){0};                                      \
        }                                                                                     \
        TRANSPOSE(v);                                                                         \
    } while (0)

/* fl_pack_block_<U>(w, ld, K, nf, dst, exponent): dst = the block's packing, as above; returns
 * whether every value packed is finite (its exponent bits, ``exponent``, not all ones). */
#define FL_FILTER_TILES(U, VT, L)                                                             \
    static inline int fl_any_##U(VT diff)                                                     \
    {                                                                                         \
        U any = 0;                                                                            \
        _Pragma("GCC unroll 16") for (int j = 0; j < (L); j++)                                \
            any |= diff[j];                                                                   \
        return any != 0;                                                                      \
    }                                                                                         \
                                                                                              \
    FL_WIDE_CLONES static int fl_pack_block_##U(const U *w, ptrdiff_t ld, ptrdiff_t K, int nf,  \
                                                U *dst, U exponent)                           \
    {                                                                                         \
        const ptrdiff_t full = K - K % (L);                                                   \
        VT inf_or_nan = {0};                                                                  \
        for (ptrdiff_t k0 = 0; k0 < full; k0 += (L))                                          \
            for (int h = 0; h < 2; h++) {                                                     \
                VT v[L];                                                                      \
                FL_TILE_LOAD(VT, L, fl_tile_transpose_##U, w, ld, nf, h, k0, v);              \
                _Pragma("GCC unroll 16") for (int t = 0; t < (L); t++) {                      \
                    *(VT *)(dst + (k0 + t) * 2 * (L) + h * (L)) = v[t];                       \
                    inf_or_nan |= (VT)((v[t] & exponent) == exponent);                        \
                }                                                                             \
            }                                                                                 \
        int finite = !fl_any_##U(inf_or_nan);                                                 \
        for (ptrdiff_t k = full; k < K; k++)                                                  \
            for (int i = 0; i < 2 * (L); i++) {                                               \
                const U value = i < nf ? w[i * ld + k] : 0;                                   \
                dst[k * 2 * (L) + i] = value;                                                 \
                finite = finite && (value & exponent) != exponent;                            \
            }                                                                                 \
        return finite;                                                                        \
    }

FL_FILTER_TILES(uint32_t, fl_v16u32, 16)
FL_FILTER_TILES(uint64_t, fl_v8u64, 8)

#endif
