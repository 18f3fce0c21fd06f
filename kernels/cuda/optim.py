"""Optimiser updates in place on flat C-ordered parameter, gradient and state arrays: one thread
per element, 1-D grid of ELEMENTWISE_BLOCK threads (``launch_config("elementwise", size)``).

Hyper-parameters arrive as scalars of the arrays' dtype, with ``1 - beta`` and the bias
corrections computed by the launcher as fastlayers.optim's NumPy update computes them: a float32
update stays in float32 (no integer literal in the arithmetic, which would promote to float64)
and follows the NumPy update's operation order.
"""
from __future__ import annotations

import functools
import math

from numba import cuda

from .launch import jit


@functools.cache
def sgd_kernel(dtype):
    @jit(lineinfo=True)
    def sgd(p, g, v, lr, momentum, weight_decay, first, size):
        # d = g + weight_decay * p; with momentum (v has elements) v = momentum * v + d (v = d at
        # the first step) and d = v; then p -= lr * d.
        e = cuda.grid(1)
        if e < size:
            d = g[e]
            if weight_decay != 0:
                d = d + weight_decay * p[e]
            if v.shape[0] > 0:
                if first:
                    v[e] = d
                else:
                    v[e] = momentum * v[e] + d
                d = v[e]
            p[e] -= lr * d

    return sgd


@functools.cache
def adam_kernel(dtype):
    @jit(lineinfo=True)
    def adam(p, g, m, v, lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay, correction1,
             correction2, size):
        # torch.optim.Adam with L2 weight decay; correction1/2 = 1 - beta1**t, 1 - beta2**t.
        e = cuda.grid(1)
        if e < size:
            d = g[e]
            if weight_decay != 0:
                d = d + weight_decay * p[e]
            m[e] = beta1 * m[e] + one_minus_beta1 * d
            v[e] = beta2 * v[e] + one_minus_beta2 * d * d
            p[e] -= lr * (m[e] / correction1) / (math.sqrt(v[e] / correction2) + eps)

    return adam
