"""The ``"numpy"`` backend: the reference (``fastlayers.reference``) as kernels.

Each function takes the validated arrays and geometry of its spec's problem and the caller's
buffers (None where none was given), and returns its outputs as a tuple.
"""
from __future__ import annotations

import numpy as np

from .. import reference as ref
from ..ops.max_pool2d import check_indices_range


def availability():
    return True, "NumPy reference, always available"


def _into(outs, results):
    """The results, copied into the caller's buffers where given."""
    return tuple(r if o is None or r is None else (np.copyto(o, r), o)[1] for o, r in zip(outs, results))


def conv2d_forward(x, w, b, g, outs):
    y = ref.conv2d_impl(x, w, b, g.plain)
    if g.pool:  # the epilogue (Conv2dGeometry.pool, relu): the reference pool, then its ReLU
        y = ref.max_pool2d_impl(y, g.pooling)[0]
    return _into(outs, (ref.relu_impl(y, None)[0] if g.relu else y,))


def conv2d_backward(dy, x, w, g, outs):
    return _into(outs, ref.conv2d_backward_impl(dy, x, w, g))


def max_pool2d_forward(x, g, outs):
    y, indices = ref.max_pool2d_impl(x, g)
    return _into(outs, (ref.relu_impl(y, None)[0] if g.relu else y, indices))


def max_pool2d_backward(dy, indices, g, outs):
    check_indices_range(indices, g.H * g.W)
    return _into(outs, (ref.max_pool2d_backward_impl(dy, indices, g.x_shape),))


def _sequence(a, g):
    """A step's (N, .) array as a sequence of one, (1, N, .); None stays None."""
    return None if a is None else a.reshape(g.T, g.N, a.shape[-1])


def rnn_forward(x, h0, Wx, Wh, b, g, outs):
    hs = ref.rnn_impl(_sequence(x, g), h0, Wx, Wh, b, g.nonlinearity)
    return _into(outs, (hs.reshape(g.shaped(g.H)),))


def rnn_backward(dhs, x, h0, Wx, Wh, hs, g, outs):
    dx, dh0, dWx, dWh, db = ref.rnn_backward_impl(_sequence(dhs, g), _sequence(x, g), h0, Wx, Wh,
                                                  _sequence(hs, g), g.nonlinearity)
    return _into(outs, (dx.reshape(g.shaped(g.D)), dh0, dWx, dWh, db))


def lstm_forward(x, h0, c0, Wx, Wh, b, g, outs):
    """(output, cell), and the kept gates when ``g.keep`` (no ``out=`` for them)."""
    results = ref.lstm_impl(x, h0, c0, Wx, Wh, b, g.keep)
    return _into(outs, results[:2]) + results[2:]


def lstm_backward(dhs, dcs, x, h0, c0, Wx, Wh, b, hs, cs, gates, g, outs):
    return _into(outs, ref.lstm_backward_impl(dhs, dcs, x, h0, c0, Wx, Wh, b, hs, cs, gates))


def gru_forward(x, h0, Wx, Wh, bx, bh, g, outs):
    """(output,), and the kept gates when ``g.keep``."""
    results = ref.gru_impl(x, h0, Wx, Wh, bx, bh, g.keep)
    return _into(outs, results[:1]) + results[1:]


def gru_backward(dhs, x, h0, Wx, Wh, bx, bh, hs, gates, g, outs):
    return _into(outs, ref.gru_backward_impl(dhs, x, h0, Wx, Wh, bx, bh, hs, gates))


def linear_forward(x, w, b, g, outs):
    return _into(outs, ref.linear_impl(x, w, b, g))


def linear_backward(dy, x, w, g, outs):
    return _into(outs, ref.linear_backward_impl(dy, x, w, g))


def relu_forward(x, g, outs):
    return _into(outs, ref.relu_impl(x, g))


def relu_backward(dy, x, g, outs):
    return _into(outs, ref.relu_backward_impl(dy, x, g))


def batch_norm_forward(x, running_mean, running_var, weight, bias, g, outs):
    return _into(outs, ref.batch_norm_impl(x, running_mean, running_var, weight, bias, g))


def batch_norm_backward(dy, x, running_mean, running_var, weight, g, outs):
    return _into(outs, ref.batch_norm_backward_impl(dy, x, running_mean, running_var, weight, g))
