"""RNN kernels: the tiled GEMM on plain row-major matrices with the RNN's fused epilogues.

``geo`` is ``gemm_geo(M, N, K, a_offset, b_offset, c_offset)``: the sizes and element offsets into
the flat a, b and c (so one (T, N, H) buffer serves every step without slicing on the host).
Forward: ``xw = x_seq @ Wx + b`` for all steps at once ("bias" kernel, written into hs), then per
step ``hs[t] = tanh(hs[t] + hs[t-1] @ Wh)`` ("tanh" kernel; "relu" likewise). Backward per step
``dz[t-1] = (dhs[t-1] + dz[t] @ Wh^T) * (1 - hs[t-1]^2)`` ("tanh_grad"; "relu_grad" multiplies by
``hs[t-1] > 0``), then whole-sequence GEMMs. The plain layouts (with or without a bias) also
serve the LSTM and GRU (``gated_rnn``) and linear (``backends/cuda/linear.py``).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .gemm import GEO_LEN, make_gemm
from .launch import jit


# A is (M, K) ("a") or given transposed as (K, M) ("at"); B is (K, N) ("b") or (N, K) ("bt").


def gemm_geo(M, N, K, a_offset=0, b_offset=0, c_offset=0):
    return (a_offset, b_offset, c_offset, M, N, K) + (0,) * (GEO_LEN - 6)


def _operand_index(offset, stride, transposed):
    """The flat index of element (i, j) of an operand (A: (m, k), B: (k, n)) at geo[offset], rows
    geo[stride] long, stored as given or transposed (the constants fold at compile time)."""

    @cuda.jit(device=True, inline=True)
    def index(geo, grp, i, j):
        return geo[offset] + (j * geo[stride] + i if transposed else i * geo[stride] + j)

    return index


# geo = (a_offset, b_offset, c_offset, M, N, K, ...): A (M, K) row length K, A^T (K, M) row length M,
# B (K, N) row length N, B^T (N, K) row length K.
_a = _operand_index(0, 5, False)
_at = _operand_index(0, 3, True)
_b = _operand_index(1, 4, False)
_bt = _operand_index(1, 5, True)


@cuda.jit(device=True, inline=True)
def _store(c, p, q, geo, grp, split, m, n, acc):
    # Split-K partials land in consecutive (M, N) slabs.
    c[geo[2] + (split * geo[3] + m) * geo[4] + n] = acc


@cuda.jit(device=True, inline=True)
def _store_bias(c, bias, q, geo, grp, split, m, n, acc):
    if bias.shape[0] > 0:
        acc += bias[n]
    c[geo[2] + m * geo[4] + n] = acc


@cuda.jit(device=True, inline=True)
def _store_tanh(c, p, q, geo, grp, split, m, n, acc):
    # c already holds x_t @ Wx + b for this step.
    i = geo[2] + m * geo[4] + n
    c[i] = math.tanh(c[i] + acc)


@cuda.jit(device=True, inline=True)
def _store_tanh_grad(dz, dhs, hs, geo, grp, split, m, n, acc):
    # acc = (dz[t] @ Wh^T)[m, n] = dL/dh[t-1] through the recurrence; add the direct gradient.
    i = geo[2] + m * geo[4] + n
    h = hs[i]
    g = dhs[i] + acc
    dz[i] = g - g * h * h  # g * (1 - h^2), without an integer 1 that would promote to float64


@cuda.jit(device=True, inline=True)
def _store_relu(c, p, q, geo, grp, split, m, n, acc):
    i = geo[2] + m * geo[4] + n
    z = c[i] + acc
    # max(z, 0) as in the reference (NaN propagates, -inf gives 0). Separate stores, not a
    # conditional expression: z and the literal 0 would unify to float64; a stored 0 takes c's dtype.
    if z > 0 or z != z:
        c[i] = z
    else:
        c[i] = 0


@cuda.jit(device=True, inline=True)
def _set_relu_grad(dz, i, g, h):
    # relu's gradient from its output: h > 0 exactly where the pre-activation was (0 at 0, as in
    # PyTorch and the reference); stores as in _store_relu, so float32 stays float32
    if h > 0:
        dz[i] = g
    else:
        dz[i] = 0


@cuda.jit(device=True, inline=True)
def _store_relu_grad(dz, dhs, hs, geo, grp, split, m, n, acc):
    i = geo[2] + m * geo[4] + n
    _set_relu_grad(dz, i, dhs[i] + acc, hs[i])


_GEMMS = {
    "ab": (_a, _b, _store),
    "abt": (_a, _bt, _store),
    "atb": (_at, _b, _store),
    "ab_bias": (_a, _b, _store_bias),
    "abt_bias": (_a, _bt, _store_bias),  # linear's forward with a (out, in) weight
    "ab_tanh": (_a, _b, _store_tanh),
    "abt_tanh_grad": (_a, _bt, _store_tanh_grad),
    "ab_relu": (_a, _b, _store_relu),
    "abt_relu_grad": (_a, _bt, _store_relu_grad),
}


@functools.cache
def gemm_kernel(name, dtype):
    """GEMM ``name``: operand layouts ("ab": A @ B, "abt": A @ B^T, "atb": A^T @ B) and epilogue."""
    return make_gemm(*_GEMMS[name], np.dtype(dtype).type)


@functools.cache
def activation_grad_kernel(nonlinearity, dtype):
    """dz = dhs * act'(hs) on ``size`` elements from ``offset`` (the last step, which seeds the
    recurrence backward), one thread per element; act "tanh" or "relu"."""
    tanh = nonlinearity == "tanh"

    @jit(lineinfo=True)
    def activation_grad(dz, dhs, hs, offset, size):
        e = cuda.grid(1)
        if e < size:
            h = hs[offset + e]
            g = dhs[offset + e]
            if tanh:
                dz[offset + e] = g - g * h * h
            else:
                _set_relu_grad(dz, offset + e, g, h)

    return activation_grad
