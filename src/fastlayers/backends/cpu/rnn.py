"""rnn_step and rnn on the CPU backend: wraps kernels/cpu/rnn.pyx.

A step is a sequence of length one, so ``rnn_step`` and ``rnn`` share one compiled kernel per
direction. The kernels split every product among their own OpenMP threads
(``fastlayers._dispatch.threads_for``) and call BLAS single-threaded inside them.
"""
import numpy as np

from ..._cpu import rnn as _kernels
from ..._dispatch import threads_for
from .. import numpy as _numpy_backend
from ._common import BLAS_INT_MAX, contiguous, workspace

OPS = frozenset({"rnn_step", "rnn_step_backward", "rnn", "rnn_backward"})

def _num_threads(T, N, D, H):
    """Threads for one call (``threads_for`` its T*N*H*(D+H) multiply-adds): each runs the
    recurrence of its own block of the N sequences."""
    return min(N, threads_for(T * N * H * (D + H)))


def _check_blas_sizes(T, N, D, H):
    """The kernels hand T*N, D and H to BLAS as sizes and leading dimensions, which are C ints:
    past 2**31 - 1 they would be truncated (a silent wrong result), so refuse them here."""
    if max(T * N, D, H) > BLAS_INT_MAX:
        raise ValueError(
            f"rnn sizes T*N={T * N}, D={D}, H={H} are too large for the cpu backend: its BLAS takes "
            f"sizes as C ints, so each must be at most 2**31 - 1"
        )


def _initial_state(h0, N, H, dtype):
    """An absent h0 is zeros, multiplied like any other: so NaN/inf in Wh or dz propagate through
    h0 @ Wh and h0^T @ dz exactly as in the reference and PyTorch (0 * NaN is NaN)."""
    return np.zeros((N, H), dtype) if h0 is None else np.ascontiguousarray(h0)


def rnn(x_seq, h0, Wx, Wh, b, out):
    T, N, D = x_seq.shape
    H = Wx.shape[1]
    if T * N * D * H == 0:  # nothing for BLAS to multiply (and lda >= 1 would not hold)
        return _numpy_backend.rnn(x_seq, h0, Wx, Wh, b, out)
    _check_blas_sizes(T, N, D, H)
    hs = np.empty((T, N, H), x_seq.dtype) if out is None else out
    _kernels.rnn_forward(
        contiguous(x_seq).reshape(T * N, D), _initial_state(h0, N, H, x_seq.dtype), contiguous(Wx), contiguous(Wh),
        contiguous(b),
        hs.reshape(T * N, H), N, _num_threads(T, N, D, H),
    )
    return hs


def rnn_backward(dhs, x_seq, h0, Wx, Wh, hs, out):
    T, N, D = x_seq.shape
    H = Wx.shape[1]
    outs = (None,) * 5 if out is None else out
    if T * N * D * H == 0:
        return _numpy_backend.rnn_backward(dhs, x_seq, h0, Wx, Wh, hs, out)
    _check_blas_sizes(T, N, D, H)
    dt = x_seq.dtype
    shapes = ((T, N, D), (N, H), (D, H), (H, H), (H,))
    dx, dh0, dWx, dWh, db = (np.empty(s, dt) if o is None else o for o, s in zip(outs, shapes))
    with workspace("rnn_dz", (T * N, H), dt) as dz:
        _kernels.rnn_backward(
            contiguous(dhs).reshape(T * N, H), contiguous(x_seq).reshape(T * N, D), _initial_state(h0, N, H, dt),
            contiguous(Wx), contiguous(Wh.T), contiguous(hs).reshape(T * N, H), dz,
            dx.reshape(T * N, D), dh0, dWx, dWh, db, N, _num_threads(T, N, D, H),
        )
    return dx, dh0, dWx, dWh, db


def rnn_step(x, h_prev, Wx, Wh, b, out):
    h = rnn(x[None], h_prev, Wx, Wh, b, None if out is None else out[None])
    return h[0] if out is None else out


def rnn_step_backward(dh, x, h_prev, Wx, Wh, h, out):
    dx_out = None if out is None else out[0]
    if out is not None:
        out = (None if dx_out is None else dx_out[None], *out[1:])
    dx, dh_prev, dWx, dWh, db = rnn_backward(dh[None], x[None], h_prev, Wx, Wh, h[None], out)
    return dx[0] if dx_out is None else dx_out, dh_prev, dWx, dWh, db
