"""LSTM and GRU cells: one thread per (sequence, hidden unit) of one step, after the GEMMs.

The products come from the RNN module's plain GEMMs (``rnn.gemm_kernel("ab" / "abt" / "atb")``):
forward, ``zx = x_seq @ Wx`` for every step at once, then per step ``u = h_prev @ Wh`` and the
cell kernel; backward, the pre-activations recomputed the same way for every step (all states
are known), then per step the backward cell and ``carry = d(pre-activations) @ Wh^T``. Arrays
are flat; ``*_off`` are element offsets of the step's rows, so one (T, N, ...) buffer serves
every step without slicing on the host. Gate blocks of H columns side by side, PyTorch's order
(fastlayers.reference states the equations); a bias with no elements is absent.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .launch import jit


def _gate_functions(scalar):
    """Device functions for ``scalar``: (lstm_gates, gru_gates), each reading one element's
    pre-activations from the x-side array at p and the h-side array at q (flat offsets of gate
    block 0, column j) and adding the biases."""
    half = scalar(0.5)

    @cuda.jit(device=True, inline=True)
    def sigmoid(x):
        # (1 + tanh(x / 2)) / 2: never overflows, as in the reference
        return half * math.tanh(half * x) + half

    @cuda.jit(device=True, inline=True)
    def bias(b, i):
        return b[i] if b.shape[0] > 0 else scalar(0)

    @cuda.jit(device=True, inline=True)
    def lstm_gates(zx, zh, p, q, b, j, H):
        # (i, f, g, o) of zx + zh + b
        i = sigmoid(zx[p] + zh[q] + bias(b, j))
        f = sigmoid(zx[p + H] + zh[q + H] + bias(b, H + j))
        g = math.tanh(zx[p + 2 * H] + zh[q + 2 * H] + bias(b, 2 * H + j))
        o = sigmoid(zx[p + 3 * H] + zh[q + 3 * H] + bias(b, 3 * H + j))
        return i, f, g, o

    @cuda.jit(device=True, inline=True)
    def gru_gates(a, u, p, q, bx, bh, j, H):
        # (r, z, n, u_n) of a + bx and u + bh; u_n = u_n + bh_n is what r multiplies
        r = sigmoid(a[p] + bias(bx, j) + u[q] + bias(bh, j))
        z = sigmoid(a[p + H] + bias(bx, H + j) + u[q + H] + bias(bh, H + j))
        un = u[q + 2 * H] + bias(bh, 2 * H + j)
        return r, z, math.tanh(a[p + 2 * H] + bias(bx, 2 * H + j) + r * un), un

    return lstm_gates, gru_gates


def _cell_factory(build):
    """A cell kernel factory, cached per dtype: ``build(scalar, lstm_gates, gru_gates)`` compiles
    the kernel for the scalar type with that type's gate functions (``_gate_functions``)."""

    @functools.cache
    def kernel(dtype):
        scalar = np.dtype(dtype).type
        return build(scalar, *_gate_functions(scalar))

    kernel.__name__ = kernel.__qualname__ = build.__name__
    kernel.__doc__ = build.__doc__
    return kernel


@_cell_factory
def lstm_cell_kernel(scalar, lstm_gates, gru_gates):
    @jit(lineinfo=True)
    def lstm_cell(zx, u, b, c_prev, c, h, zx_off, c_prev_off, out_off, N, H):
        # zx[t] (x @ Wx) + u (h_prev @ Wh) + b -> c = f c_prev + i g, h = o tanh(c)
        e = cuda.grid(1)
        if e < N * H:
            n = e // H
            j = e - n * H
            i, f, g, o = lstm_gates(zx, u, zx_off + n * 4 * H + j, n * 4 * H + j, b, j, H)
            cn = f * c_prev[c_prev_off + e] + i * g
            c[out_off + e] = cn
            h[out_off + e] = o * math.tanh(cn)

    return lstm_cell


@_cell_factory
def lstm_cell_backward_kernel(scalar, lstm_gates, gru_gates):
    one = scalar(1)

    @jit(lineinfo=True)
    def lstm_cell_backward(zx, zh, b, c_prev, c, dhs, dcs, dh_next, dc_carry, z_off, c_prev_off, off, N, H):
        # zx[t] + zh[t] + b: the pre-activations; dz overwrites zx[t]. dh_next = dz[t+1] @ Wh^T;
        # dc_carry: dL/dc from the later steps in, dL/dc_prev out. dcs with no elements: zeros.
        e = cuda.grid(1)
        if e < N * H:
            n = e // H
            j = e - n * H
            z = z_off + n * 4 * H + j
            i, f, g, o = lstm_gates(zx, zh, z, z, b, j, H)
            tc = math.tanh(c[off + e])
            dh = dhs[off + e] + dh_next[e]
            dc = dc_carry[e] + dh * o * (one - tc * tc)
            if dcs.shape[0] > 0:
                dc += dcs[off + e]
            zx[z] = dc * g * i * (one - i)
            zx[z + H] = dc * c_prev[c_prev_off + e] * f * (one - f)
            zx[z + 2 * H] = dc * i * (one - g * g)
            zx[z + 3 * H] = dh * tc * o * (one - o)
            dc_carry[e] = dc * f

    return lstm_cell_backward


@_cell_factory
def gru_cell_kernel(scalar, lstm_gates, gru_gates):
    @jit(lineinfo=True)
    def gru_cell(a, u, bx, bh, h_prev, h, a_off, u_off, h_prev_off, out_off, N, H):
        # a (x @ Wx) + bx, u (h_prev @ Wh) + bh -> r, z, n; h = n + z (h_prev - n)
        e = cuda.grid(1)
        if e < N * H:
            n = e // H
            j = e - n * H
            r, z, cand, un = gru_gates(a, u, a_off + n * 3 * H + j, u_off + n * 3 * H + j, bx, bh, j, H)
            h[out_off + e] = cand + z * (h_prev[h_prev_off + e] - cand)

    return gru_cell


@_cell_factory
def gru_cell_backward_kernel(scalar, lstm_gates, gru_gates):
    one = scalar(1)

    @jit(lineinfo=True)
    def gru_cell_backward(a, u, bx, bh, h_prev, dhs, carry_z, carry_h, off, h_prev_off, N, H):
        # a[t], u[t]: pre-activations in, dL/da, dL/du out. dL/dh of this step is
        # dhs[t] + carry_z (dh z of the next step) + carry_h (du[t+1] @ Wh^T); carry_z <- dh z.
        e = cuda.grid(1)
        if e < N * H:
            n = e // H
            j = e - n * H
            p = off * 3 + n * 3 * H + j
            r, z, cand, un = gru_gates(a, u, p, p, bx, bh, j, H)
            dh = dhs[off + e] + carry_z[e] + carry_h[e]
            dn = dh * (one - z) * (one - cand * cand)
            dr = dn * un * r * (one - r)
            dz = dh * (h_prev[h_prev_off + e] - cand) * z * (one - z)
            a[p] = dr
            u[p] = dr
            a[p + H] = dz
            u[p + H] = dz
            a[p + 2 * H] = dn
            u[p + 2 * H] = dn * r
            carry_z[e] = dh * z

    return gru_cell_backward


@functools.cache
def add_kernel(dtype):
    @jit(lineinfo=True)
    def add(a, b, out, size):
        # One thread per element: out = a + b (the GRU's dh0 from its two carries).
        e = cuda.grid(1)
        if e < size:
            out[e] = a[e] + b[e]

    return add
