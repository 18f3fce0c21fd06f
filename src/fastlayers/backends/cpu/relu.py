"""relu on the CPU backend: wraps kernels/cpu/relu.pyx.

Arguments arrive validated by the relu spec (fastlayers.ops.relu); the kernels run over the
arrays flattened (C order: a copy only for non-contiguous input), writing the output buffer the
spec's run passes.
"""
import numpy as np

from ..._cpu import relu as _kernels
from ..._dispatch import threads_for


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def forward(x, g, outs):
    (y,) = outs
    _kernels.forward(_flat(x), y.reshape(-1), threads_for(g.size))
    return (y,)


def backward(dy, x, g, outs):
    (dx,) = outs
    _kernels.backward(_flat(dy), _flat(x), dx.reshape(-1), threads_for(g.size))
    return (dx,)
