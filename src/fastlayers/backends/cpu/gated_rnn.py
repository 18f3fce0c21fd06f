"""lstm and gru on the CPU backend: wraps kernels/cpu/gated_rnn.pyx.

The kernels split every product among their own OpenMP threads (``fastlayers.get_num_threads()``)
and call BLAS single-threaded inside them. The step functions of the functional API run these
as sequences of length one.
"""
import numpy as np

from ..._cpu import gated_rnn as _kernels
from ..._dispatch import get_num_threads
from .. import numpy as _numpy_backend
from ._common import contiguous, workspace
from .rnn import _initial_state

OPS = frozenset({"lstm", "lstm_backward", "gru", "gru_backward"})

# As for rnn: below this much work per thread (T*N*G*H*(D+H) multiply-adds) a call uses fewer
# threads than fastlayers.get_num_threads() allows. Tests set it to 0 to force the split.
MIN_WORK_PER_THREAD = 1 << 16


def _num_threads(T, N, D, width, H):
    """Threads for one call: each runs the recurrence of its own block of the N sequences."""
    useful = min(N, T * N * width * (D + H) // max(MIN_WORK_PER_THREAD, 1))
    return max(1, min(get_num_threads(), useful))


def _bias(b, width, dtype):
    """An absent bias is zeros: the cells always add one (no branch in their loops)."""
    return np.zeros(width, dtype) if b is None else np.ascontiguousarray(b)


def _outputs(out, shapes, dtype):
    outs = (None,) * len(shapes) if out is None else out
    return tuple(np.empty(s, dtype) if o is None else o for o, s in zip(outs, shapes))


def lstm(x_seq, h0, c0, Wx, Wh, b, out):
    T, N, D = x_seq.shape
    H, G = Wh.shape
    if T * N * D * H == 0:  # nothing for BLAS to multiply (and lda >= 1 would not hold)
        return _numpy_backend.lstm(x_seq, h0, c0, Wx, Wh, b, out)
    dt = x_seq.dtype
    hs, cs = _outputs(out, ((T, N, H), (T, N, H)), dt)
    _kernels.lstm_forward(
        contiguous(x_seq).reshape(T * N, D), _initial_state(h0, N, H, dt), _initial_state(c0, N, H, dt),
        contiguous(Wx), contiguous(Wh), _bias(b, G, dt), hs.reshape(T * N, H), cs.reshape(T * N, H),
        workspace("gated_rnn_z", (T * N, G), dt), N, _num_threads(T, N, D, G, H),
    )
    return hs, cs


def lstm_backward(dhs, dcs, x_seq, h0, c0, Wx, Wh, b, hs, cs, out):
    T, N, D = x_seq.shape
    H, G = Wh.shape
    if T * N * D * H == 0:
        return _numpy_backend.lstm_backward(dhs, dcs, x_seq, h0, c0, Wx, Wh, b, hs, cs, out)
    dt = x_seq.dtype
    dx, dh0, dc0, dWx, dWh, db = _outputs(out, ((T, N, D), (N, H), (N, H), (D, G), (H, G), (G,)), dt)
    _kernels.lstm_backward(
        contiguous(dhs).reshape(T * N, H), None if dcs is None else contiguous(dcs).reshape(T * N, H),
        contiguous(x_seq).reshape(T * N, D), _initial_state(h0, N, H, dt), _initial_state(c0, N, H, dt),
        contiguous(Wx), contiguous(Wh), contiguous(Wh.T), _bias(b, G, dt),
        contiguous(hs).reshape(T * N, H), contiguous(cs).reshape(T * N, H), workspace("gated_rnn_z", (T * N, G), dt),
        dx.reshape(T * N, D), dh0, dc0, dWx, dWh, db, N, _num_threads(T, N, D, G, H),
    )
    return dx, dh0, dc0, dWx, dWh, db


def gru(x_seq, h0, Wx, Wh, bx, bh, out):
    T, N, D = x_seq.shape
    H, G = Wh.shape
    if T * N * D * H == 0:
        return _numpy_backend.gru(x_seq, h0, Wx, Wh, bx, bh, out)
    dt = x_seq.dtype
    (hs,) = _outputs(None if out is None else (out,), ((T, N, H),), dt)
    _kernels.gru_forward(
        contiguous(x_seq).reshape(T * N, D), _initial_state(h0, N, H, dt), contiguous(Wx), contiguous(Wh),
        _bias(bx, G, dt), _bias(bh, G, dt), hs.reshape(T * N, H), workspace("gated_rnn_z", (T * N, G), dt),
        workspace("gated_rnn_u", (N, G), dt), N, _num_threads(T, N, D, G, H),
    )
    return hs


def gru_backward(dhs, x_seq, h0, Wx, Wh, bx, bh, hs, out):
    T, N, D = x_seq.shape
    H, G = Wh.shape
    if T * N * D * H == 0:
        return _numpy_backend.gru_backward(dhs, x_seq, h0, Wx, Wh, bx, bh, hs, out)
    dt = x_seq.dtype
    dx, dh0, dWx, dWh, dbx, dbh = _outputs(out, ((T, N, D), (N, H), (D, G), (H, G), (G,), (G,)), dt)
    _kernels.gru_backward(
        contiguous(dhs).reshape(T * N, H), contiguous(x_seq).reshape(T * N, D), _initial_state(h0, N, H, dt),
        contiguous(Wx), contiguous(Wh), contiguous(Wh.T), _bias(bx, G, dt), _bias(bh, G, dt),
        contiguous(hs).reshape(T * N, H), workspace("gated_rnn_z", (T * N, G), dt),
        workspace("gated_rnn_u", (T * N, G), dt), dx.reshape(T * N, D), dh0, dWx, dWh, dbx, dbh, N,
        _num_threads(T, N, D, G, H),
    )
    return dx, dh0, dWx, dWh, dbx, dbh
