"""relu, and the Tanh and Sigmoid layers' activations, forward and backward: one thread per
element of the flat C-ordered arrays, 1-D grid of ELEMENTWISE_BLOCK threads
(``launch_config("elementwise", size)``). Constants take the arrays' dtype, so float32 stays
float32."""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .launch import jit


@functools.cache
def relu_kernel(dtype):
    @jit(lineinfo=True)
    def relu(x, y, size):
        # y = max(x, 0), NaN propagating as np.maximum's. Separate stores, not a conditional
        # expression: x and the literal 0 would unify to float64; a stored 0 takes y's dtype.
        e = cuda.grid(1)
        if e < size:
            v = x[e]
            if v > 0 or math.isnan(v):
                y[e] = v
            else:
                y[e] = 0

    return relu


@functools.cache
def relu_backward_kernel(dtype):
    @jit(lineinfo=True)
    def relu_backward(dy, x, dx, size):
        # dx = 0 where x <= 0 (0 at 0, as PyTorch's threshold_backward), dy elsewhere (x NaN too).
        e = cuda.grid(1)
        if e < size:
            if x[e] <= 0:
                dx[e] = 0
            else:
                dx[e] = dy[e]

    return relu_backward


@functools.cache
def tanh_kernel(dtype):
    @jit(lineinfo=True)
    def tanh(x, y, size):
        e = cuda.grid(1)
        if e < size:
            y[e] = math.tanh(x[e])

    return tanh


@functools.cache
def sigmoid_kernel(dtype):
    one = np.dtype(dtype).type(1)

    @jit(lineinfo=True)
    def sigmoid(x, y, size):
        # 1 / (1 + exp(-x)) from exp(-|x|), in (0, 1]: it never overflows (as the host layer).
        e = cuda.grid(1)
        if e < size:
            v = x[e]
            z = math.exp(-abs(v))
            if v >= 0:
                y[e] = one / (one + z)
            else:
                y[e] = z / (one + z)

    return sigmoid


@functools.cache
def tanh_backward_kernel(dtype):
    one = np.dtype(dtype).type(1)

    @jit(lineinfo=True)
    def tanh_backward(dy, y, dx, size):
        # dx = dy * (1 - y^2), from the forward's output y
        e = cuda.grid(1)
        if e < size:
            dx[e] = dy[e] * (one - y[e] * y[e])

    return tanh_backward


@functools.cache
def sigmoid_backward_kernel(dtype):
    one = np.dtype(dtype).type(1)

    @jit(lineinfo=True)
    def sigmoid_backward(dy, y, dx, size):
        # dx = dy * y * (1 - y), from the forward's output y
        e = cuda.grid(1)
        if e < size:
            dx[e] = dy[e] * y[e] * (one - y[e])

    return sigmoid_backward
