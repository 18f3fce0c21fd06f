"""relu forward and backward: one thread per element of the flat C-ordered arrays, 1-D grid of
ELEMENTWISE_BLOCK threads (``launch_config("elementwise", size)``)."""
from __future__ import annotations

import functools
import math

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
