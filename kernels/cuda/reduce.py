"""Deterministic reductions (fixed summation order, no atomics) and fills."""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .launch import REDUCE_BLOCK, jit


@cuda.jit(device=True, inline=True)
def block_sum(part, t, value):
    """The sum of ``value`` over the block's REDUCE_BLOCK threads, in every thread (``part``:
    shared scratch of REDUCE_BLOCK; ``t`` this thread's index): a tree in a fixed order."""
    part[t] = value
    cuda.syncthreads()
    width = REDUCE_BLOCK // 2
    while width > 0:
        if t < width:
            part[t] += part[t + width]
        cuda.syncthreads()
        width //= 2
    total = part[0]
    cuda.syncthreads()  # before part is written again
    return total


@functools.cache
def sum_outer_inner_kernel(dtype):
    """``out[j] = sum over (i, k) of a[i, j, k]`` for a flat (I, J, K) array: conv2d's db
    (N, F, OH*OW) and the RNN's db (T*N, H, 1)."""
    scalar = np.dtype(dtype).type

    @jit(lineinfo=True, launch_bounds=REDUCE_BLOCK)
    def sum_outer_inner(a, out, I, J, K):
        # Block j reduces column j: each thread sums a strided share, then a shared-memory tree.
        part = cuda.shared.array(REDUCE_BLOCK, scalar)
        j = cuda.blockIdx.x
        t = cuda.threadIdx.x
        s = scalar(0)
        for e in range(t, I * K, REDUCE_BLOCK):
            i = e // K
            s += a[(i * J + j) * K + e - i * K]
        total = block_sum(part, t, s)
        if t == 0:
            out[j] = total

    return sum_outer_inner


@functools.cache
def sum_splits_kernel(dtype):
    scalar = np.dtype(dtype).type

    @jit(lineinfo=True)
    def sum_splits(partial, out, splits, size):
        # One thread per output element: out[e] = sum over s of partial[s, e], s in order.
        e = cuda.grid(1)
        if e < size:
            s = scalar(0)
            for k in range(splits):
                s += partial[k * size + e]
            out[e] = s

    return sum_splits


@functools.cache
def fill_kernel(dtype):
    @jit(lineinfo=True)
    def fill(a, value, size):
        # One thread per element.
        e = cuda.grid(1)
        if e < size:
            a[e] = value

    return fill
