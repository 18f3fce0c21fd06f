"""conv2d kernels: forward (direct, implicit GEMM), input gradient dX and weight gradient dW.

``geo`` is ``conv2d_geo(g)``: (N, C, H, W, F, KH, KW, OH, OW, stride_h, stride_w, pad_top, pad_left,
dilation_h, dilation_w, groups). Arrays are flat C-ordered views of the NCHW tensors. Grouped
convolutions run group ``grp`` along grid z; the GEMM index functions work inside one group.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .gemm import GEO_LEN, make_gemm
from .launch import DIRECT_BLOCK, DIRECT_W_CHUNK, jit
from .layout import unravel3


def conv2d_geo(g):
    geo = (g.N, g.C, g.H, g.W, g.F, g.KH, g.KW, g.OH, g.OW, g.stride_h, g.stride_w,
           g.pad_top, g.pad_left, g.dilation_h, g.dilation_w, g.groups)
    assert len(geo) == GEO_LEN
    return geo


@cuda.jit(device=True, inline=True)
def x_index(geo, grp, pixel, tap):
    """Flat index in x of output ``pixel`` = (n, oh, ow) seen through kernel ``tap`` = (c, kh, kw)
    of group ``grp`` (the im2col matrix, never built); -1 in the padding."""
    N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
    n, oh, ow = unravel3(pixel, OH, OW)
    c, kh, kw = unravel3(tap, KH, KW)
    ih = oh * sh - pt + kh * dh
    iw = ow * sw - pl + kw * dw
    if ih < 0 or ih >= H or iw < 0 or iw >= W:
        return -1
    return ((n * C + grp * (C // G) + c) * H + ih) * W + iw


# ---------------------------------------------------------------------------- forward


@cuda.jit(device=True, inline=True)
def _forward_a(geo, grp, m, k):  # A[m = (n, oh, ow), k = (c, kh, kw)]
    return x_index(geo, grp, m, k)


@cuda.jit(device=True, inline=True)
def _forward_b(geo, grp, k, f):  # B[k = (c, kh, kw), f] = w[grp * Fg + f, c, kh, kw]
    N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
    return (grp * (F // G) + f) * ((C // G) * KH * KW) + k


@cuda.jit(device=True, inline=True)
def _forward_store(y, bias, unused, geo, grp, split, m, f, acc):
    N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
    fo = grp * (F // G) + f
    if bias.shape[0] > 0:
        acc += bias[fo]
    pixels = OH * OW
    n = m // pixels
    y[(n * F + fo) * pixels + m - n * pixels] = acc


# ---------------------------------------------------------------------------- dX
# dx[n, c, ih, iw] = sum over (f, kh, kw) of dy[n, f, oh, ow] * w[f, c, kh, kw] where
# ih = oh * sh - pt + kh * dh: a gather per input pixel (no atomics); taps whose oh is not an
# integer in [0, OH) are implicit zeros.


@cuda.jit(device=True, inline=True)
def _dx_a(geo, grp, m, k):  # A[m = (n, ih, iw), k = (f, kh, kw)] = dy[n, f, oh, ow] or 0
    N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
    n, ih, iw = unravel3(m, H, W)
    f, kh, kw = unravel3(k, KH, KW)
    oh_s = ih + pt - kh * dh
    ow_s = iw + pl - kw * dw
    if oh_s < 0 or ow_s < 0 or oh_s % sh != 0 or ow_s % sw != 0:
        return -1
    oh = oh_s // sh
    ow = ow_s // sw
    if oh >= OH or ow >= OW:
        return -1
    return ((n * F + grp * (F // G) + f) * OH + oh) * OW + ow


@cuda.jit(device=True, inline=True)
def _dx_b(geo, grp, k, c):  # B[k = (f, kh, kw), c] = w[grp * Fg + f, c, kh, kw]
    N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
    taps = KH * KW
    f = k // taps
    return ((grp * (F // G) + f) * (C // G) + c) * taps + k - f * taps


@cuda.jit(device=True, inline=True)
def _dx_store(dx, unused_p, unused_q, geo, grp, split, m, c, acc):
    N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
    pixels = H * W
    n = m // pixels
    dx[(n * C + grp * (C // G) + c) * pixels + m - n * pixels] = acc


# ---------------------------------------------------------------------------- dW
# dw[f, c, kh, kw] = sum over (n, oh, ow) of dy[n, f, oh, ow] * x[n, c, ih, iw]: M = filters,
# N = taps, K = batch x pixels, split along K into partial sums (split, F, Cg*KH*KW) that a
# second kernel adds in a fixed order: reproducible, no atomics.


@cuda.jit(device=True, inline=True)
def _dw_a(geo, grp, f, k):  # A[f, k = (n, oh, ow)] = dy[n, grp * Fg + f, oh, ow]
    N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
    pixels = OH * OW
    n = k // pixels
    return (n * F + grp * (F // G) + f) * pixels + k - n * pixels


@cuda.jit(device=True, inline=True)
def _dw_b(geo, grp, k, tap):  # B[k = (n, oh, ow), tap = (c, kh, kw)] = x seen by tap at pixel k
    return x_index(geo, grp, k, tap)


@cuda.jit(device=True, inline=True)
def _dw_store(partial, unused_p, unused_q, geo, grp, split, f, tap, acc):
    N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
    taps = (C // G) * KH * KW
    partial[(split * F + grp * (F // G) + f) * taps + tap] = acc


_GEMMS = {
    "forward": (_forward_a, _forward_b, _forward_store),
    "dx": (_dx_a, _dx_b, _dx_store),
    "dw": (_dw_a, _dw_b, _dw_store),
}


@functools.cache
def gemm_kernel(name, dtype):
    """The implicit-GEMM kernel ``name`` ("forward", "dx", "dw") for ``dtype``."""
    return make_gemm(*_GEMMS[name], np.dtype(dtype).type)


# ---------------------------------------------------------------------------- direct forward


@functools.cache
def direct_kernel(dtype):
    """conv2d forward, one thread per output element; the block's filter is staged through
    shared memory DIRECT_W_CHUNK weights at a time."""
    scalar = np.dtype(dtype).type

    @jit(lineinfo=True, launch_bounds=DIRECT_BLOCK)
    def conv2d_direct(x, w, bias, y, geo):
        # Block b covers DIRECT_BLOCK consecutive pixels of one (n, f) output plane:
        # b = (n * F + f) * tiles + tile; thread = pixel within the tile.
        N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G = geo
        wbuf = cuda.shared.array(DIRECT_W_CHUNK, scalar)
        pixels = OH * OW
        tiles = (pixels + DIRECT_BLOCK - 1) // DIRECT_BLOCK
        nf = cuda.blockIdx.x // tiles
        p = (cuda.blockIdx.x - nf * tiles) * DIRECT_BLOCK + cuda.threadIdx.x
        f = nf % F
        n = nf // F
        grp = f // (F // G)
        taps = (C // G) * KH * KW
        acc = scalar(0)
        for t0 in range(0, taps, DIRECT_W_CHUNK):
            count = min(DIRECT_W_CHUNK, taps - t0)
            for e in range(cuda.threadIdx.x, count, DIRECT_BLOCK):
                wbuf[e] = w[f * taps + t0 + e]
            cuda.syncthreads()
            if p < pixels:
                for e in range(count):
                    idx = x_index(geo, grp, n * pixels + p, t0 + e)
                    if idx >= 0:
                        acc += x[idx] * wbuf[e]
            cuda.syncthreads()
        if p < pixels:
            if bias.shape[0] > 0:
                acc += bias[f]
            y[nf * pixels + p] = acc

    return conv2d_direct
