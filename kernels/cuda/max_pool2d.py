"""max_pool2d forward (values and argmax indices) and backward (scatter to the argmax).

``geo`` is ``pool2d_geo(g)``: (N, C, H, W, KH, KW, OH, OW, stride_h, stride_w, pad_h, pad_w,
dilation_h, dilation_w).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .launch import jit
from .layout import unravel3


def pool2d_geo(g):
    return (g.N, g.C, g.H, g.W, g.KH, g.KW, g.OH, g.OW, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
            g.dilation_h, g.dilation_w)


@functools.cache
def forward_kernel(dtype):
    scalar = np.dtype(dtype).type

    @jit(lineinfo=True)
    def max_pool2d_forward(x, y, indices, geo):
        # One thread per output element (n, c, oh, ow), 1-D grid.
        N, C, H, W, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw = geo
        o = cuda.grid(1)
        if o >= N * C * OH * OW:
            return
        plane, oh, ow = unravel3(o, OH, OW)
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        best = scalar(-math.inf)
        arg = -1
        # Row-major window order; a later element wins if strictly greater or NaN, so ties keep
        # the first maximum and of several NaNs the last wins (PyTorch's CPU rule). Padded cells
        # are skipped: they never win.
        for kh in range(KH):
            ih = h0 + kh * dh
            if ih < 0 or ih >= H:
                continue
            for kw in range(KW):
                iw = w0 + kw * dw
                if iw < 0 or iw >= W:
                    continue
                v = x[(plane * H + ih) * W + iw]
                if arg < 0 or v > best or math.isnan(v):
                    best = v
                    arg = ih * W + iw
        y[o] = best
        indices[o] = arg

    return max_pool2d_forward


@functools.cache
def backward_kernel(dtype):
    @jit(lineinfo=True)
    def max_pool2d_backward(dy, indices, dx, bad, planes, out_plane, in_plane):
        # One thread per dy element, adding it to dx at its argmax (dx zeroed beforehand).
        # Overlapping windows may share an argmax: atomics make the sum race-free (in an
        # unspecified order; non-overlapping pools add one value per cell, so stay exact).
        # Indices outside [0, in_plane) are never written: they raise bad[0] for the caller.
        o = cuda.grid(1)
        if o >= planes * out_plane:
            return
        i = indices[o]
        if i < 0 or i >= in_plane:
            bad[0] = 1
            return
        cuda.atomic.add(dx, (o // out_plane) * in_plane + i, dy[o])

    return max_pool2d_backward
