"""batch_norm on the CPU backend: wraps kernels/cpu/batch_norm.pyx.

Arguments arrive validated by the batch_norm spec (fastlayers.ops.batch_norm). The kernels see
the input as (N, C, S) and take the per-channel vectors in float64 (C values: converting them
costs nothing next to the planes); absent weight and bias are ones and zeros.
"""
import numpy as np

from ..._cpu import batch_norm as _kernels
from ..._dispatch import threads_for


def _planes(a, g):
    return np.ascontiguousarray(a).reshape(g.N, g.C, g.S)


def _channels(v, g, fill):
    return np.full(g.C, fill, np.float64) if v is None else np.array(v, dtype=np.float64)


def _statistics(running_mean, running_var, g):
    """The kernel's mean and var vectors: to be filled (training) or the running statistics."""
    if g.training:
        return np.empty(g.C, np.float64), np.empty(g.C, np.float64)
    return _channels(running_mean, g, 0.0), _channels(running_var, g, 1.0)


def forward(x, running_mean, running_var, weight, bias, g, outs):
    y = outs[0]
    mean, var = _statistics(running_mean, running_var, g)
    _kernels.forward(_planes(x, g), mean, var, _channels(weight, g, 1.0), _channels(bias, g, 0.0), g.eps,
                     g.training, y.reshape(g.N, g.C, g.S), threads_for(g.N * g.C * g.S))
    return y, mean, var


def backward(dy, x, running_mean, running_var, weight, g, outs):
    dx, grad_weight, grad_bias = outs
    mean, var = _statistics(running_mean, running_var, g)
    sums = np.empty((2, g.C), np.float64)
    _kernels.backward(_planes(dy, g), _planes(x, g), mean, var, _channels(weight, g, 1.0), g.eps, g.training,
                      dx.reshape(g.N, g.C, g.S), sums[0], sums[1], threads_for(2 * g.N * g.C * g.S))
    grad_weight[...] = sums[0]
    grad_bias[...] = sums[1]
    return dx, grad_weight, grad_bias
