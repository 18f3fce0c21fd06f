"""The ``"numpy"`` backend: the reference implementation (``fastlayers.reference``)."""
from __future__ import annotations

import numpy as np

from .. import reference as ref
from .._params import check_pool_backward_args

OPS = frozenset(
    {"conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
     "rnn_step", "rnn_step_backward", "rnn", "rnn_backward", "lstm", "lstm_backward", "gru", "gru_backward"}
)


def availability():
    return True, "NumPy reference, always available"


def _into(out, result):
    """Copy ``result`` into the caller's buffer(s) when given; return what the op returns."""
    if out is None:
        return result
    if isinstance(result, tuple):
        return tuple(_into(o, r) for o, r in zip(out, result))
    np.copyto(out, result)
    return out


def conv2d(x, w, b, g, algo, out):
    return _into(out, ref.conv2d_impl(x, w, b, g))


def conv2d_backward(dy, x, w, g, algo, out):
    return _into(out, ref.conv2d_backward_impl(dy, x, w, g))


def max_pool2d(x, g, out):
    return _into(out, ref.max_pool2d_impl(x, g))


def max_pool2d_backward(dy, indices, input_shape, out):
    check_pool_backward_args(dy, indices, input_shape)
    return _into(out, ref.max_pool2d_backward_impl(dy, indices, input_shape))


def rnn_step(x, h_prev, Wx, Wh, b, out):
    return _into(out, ref.rnn_step_impl(x, h_prev, Wx, Wh, b))


def rnn_step_backward(dh, x, h_prev, Wx, Wh, h, out):
    return _into(out, ref.rnn_step_backward_impl(dh, x, h_prev, Wx, Wh, h))


def rnn(x_seq, h0, Wx, Wh, b, out):
    return _into(out, ref.rnn_impl(x_seq, h0, Wx, Wh, b))


def rnn_backward(dhs, x_seq, h0, Wx, Wh, hs, out):
    return _into(out, ref.rnn_backward_impl(dhs, x_seq, h0, Wx, Wh, hs))


def lstm(x_seq, h0, c0, Wx, Wh, b, out):
    return _into(out, ref.lstm_impl(x_seq, h0, c0, Wx, Wh, b))


def lstm_backward(dhs, dcs, x_seq, h0, c0, Wx, Wh, b, hs, cs, out):
    return _into(out, ref.lstm_backward_impl(dhs, dcs, x_seq, h0, c0, Wx, Wh, b, hs, cs))


def gru(x_seq, h0, Wx, Wh, bx, bh, out):
    return _into(out, ref.gru_impl(x_seq, h0, Wx, Wh, bx, bh))


def gru_backward(dhs, x_seq, h0, Wx, Wh, bx, bh, hs, out):
    return _into(out, ref.gru_backward_impl(dhs, x_seq, h0, Wx, Wh, bx, bh, hs))
