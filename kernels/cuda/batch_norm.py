"""batch_norm forward and backward: one block of REDUCE_BLOCK threads per channel
(``launch_config("reduce", C)``) over the input seen as (N, C, S). The block's threads take a
strided share of the channel's N*S values, add up through a shared-memory tree in a fixed order
(reproducible, no atomics), then normalise (or back-propagate through) the same values.

``count`` = N*S values per channel, ``countf`` the same in the input's dtype (a divisor that does
not promote float32 to float64). Statistics are computed in the input's dtype, two-pass (the mean, then the centred squares), so
float32 stays float32; an empty per-channel vector (no weight, no bias, no running statistics)
means ones, zeros, or none.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .launch import REDUCE_BLOCK, jit
from .reduce import block_sum


def _statistics(scalar):
    """A device function: (mean, var) of channel c, from the batch (training) or the running
    statistics."""
    zero = scalar(0)

    @cuda.jit(device=True, inline=True)
    def statistics(part, t, x, rm, rv, training, c, C, S, count, countf):
        if not training:
            return rm[c], rv[c]
        s = zero
        for e in range(t, count, REDUCE_BLOCK):
            n = e // S
            s += x[(n * C + c) * S + e - n * S]
        mean = block_sum(part, t, s) / countf
        s = zero
        for e in range(t, count, REDUCE_BLOCK):
            n = e // S
            d = x[(n * C + c) * S + e - n * S] - mean
            s += d * d
        return mean, block_sum(part, t, s) / countf

    return statistics


@functools.cache
def forward_kernel(dtype):
    scalar = np.dtype(dtype).type
    one = scalar(1)
    statistics = _statistics(scalar)

    @jit(lineinfo=True, launch_bounds=REDUCE_BLOCK)
    def batch_norm_forward(x, rm, rv, w, b, y, mean_out, var_out, training, eps, C, S, count, countf):
        # Block c normalises channel c: y = (x - mean) / sqrt(var + eps) * w + b.
        part = cuda.shared.array(REDUCE_BLOCK, scalar)
        c = cuda.blockIdx.x
        t = cuda.threadIdx.x
        mean, var = statistics(part, t, x, rm, rv, training, c, C, S, count, countf)
        std = math.sqrt(var + eps)
        scale = w[c] if w.shape[0] > 0 else one
        for e in range(t, count, REDUCE_BLOCK):
            n = e // S
            i = (n * C + c) * S + e - n * S
            v = (x[i] - mean) / std * scale
            if b.shape[0] > 0:
                v += b[c]
            y[i] = v
        if t == 0:
            mean_out[c] = mean
            var_out[c] = var

    return batch_norm_forward


@functools.cache
def backward_kernel(dtype):
    scalar = np.dtype(dtype).type
    zero, one = scalar(0), scalar(1)
    statistics = _statistics(scalar)

    @jit(lineinfo=True, launch_bounds=REDUCE_BLOCK)
    def batch_norm_backward(dy, x, rm, rv, w, dx, dw, db, training, eps, C, S, count, countf):
        # Block c: xhat = (x - mean) / std, dxhat = dy * w; dw = sum(dy * xhat), db = sum(dy);
        # training: dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / std, else dxhat / std.
        part = cuda.shared.array(REDUCE_BLOCK, scalar)
        c = cuda.blockIdx.x
        t = cuda.threadIdx.x
        mean, var = statistics(part, t, x, rm, rv, training, c, C, S, count, countf)
        std = math.sqrt(var + eps)
        scale = w[c] if w.shape[0] > 0 else one
        s_dy = zero
        s_dy_xhat = zero
        for e in range(t, count, REDUCE_BLOCK):
            n = e // S
            i = (n * C + c) * S + e - n * S
            s_dy += dy[i]
            s_dy_xhat += dy[i] * ((x[i] - mean) / std)
        sum_dy = block_sum(part, t, s_dy)
        sum_dy_xhat = block_sum(part, t, s_dy_xhat)
        for e in range(t, count, REDUCE_BLOCK):
            n = e // S
            i = (n * C + c) * S + e - n * S
            if training:
                xhat = (x[i] - mean) / std
                dx[i] = (dy[i] * scale - sum_dy * scale / countf - xhat * (sum_dy_xhat * scale / countf)) / std
            else:
                dx[i] = dy[i] * scale / std
        if t == 0:
            dw[c] = sum_dy_xhat
            db[c] = sum_dy

    return batch_norm_backward


@functools.cache
def update_running_kernel(dtype):
    @jit(lineinfo=True)
    def update_running(rm, rv, mean, var, keep, momentum, unbias, C):
        # One thread per channel: PyTorch's running statistics (the variance unbiased, keep = 1 - momentum).
        c = cuda.grid(1)
        if c < C:
            rm[c] = keep * rm[c] + momentum * mean[c]
            rv[c] = keep * rv[c] + momentum * var[c] * unbias

    return update_running
