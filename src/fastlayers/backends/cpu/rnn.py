"""rnn_step and rnn on the CPU backend: wraps kernels/cpu/rnn.pyx.

A step is a sequence of length one, so ``rnn_step`` and ``rnn`` share one compiled kernel per
direction. The kernels split every product among their own OpenMP threads
(``fastlayers.get_num_threads()``) and call BLAS single-threaded inside them.
"""
import contextlib
import threading

import numpy as np

from ..._cpu import rnn as _kernels
from ..._dispatch import get_num_threads
from .. import numpy as _numpy_backend

OPS = frozenset({"rnn_step", "rnn_step_backward", "rnn", "rnn_backward"})

# Starting the OpenMP team and its one barrier cost microseconds: below this much work per
# thread (T*N*H*(D+H) multiply-adds, 64k take a few microseconds) a call uses fewer threads than
# fastlayers.get_num_threads() allows. Tests set it to 0 to force the split.
MIN_WORK_PER_THREAD = 1 << 16

_blas_libraries = None
_workspaces = threading.local()  # per calling thread: the kernels run without the GIL


def _num_threads(T, N, D, H):
    """Threads for one call: each runs the recurrence of its own block of the N sequences."""
    useful = min(N, T * N * H * (D + H) // max(MIN_WORK_PER_THREAD, 1))
    return max(1, min(get_num_threads(), useful))


@contextlib.contextmanager
def _single_threaded_blas():
    """Every loaded BLAS at one thread while our OpenMP team runs: the team already uses the
    cores, BLAS threads on top would oversubscribe them. Cheaper than threadpool_limits (which
    re-reads every library's state): only libraries not at one thread are touched."""
    global _blas_libraries
    if _blas_libraries is None:
        from threadpoolctl import ThreadpoolController  # imported on first use only

        _blas_libraries = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
    changed = []
    try:
        for lib in _blas_libraries:
            n = lib.get_num_threads()
            if n != 1:
                lib.set_num_threads(1)
                changed.append((lib, n))
        yield
    finally:
        for lib, n in changed:
            lib.set_num_threads(n)


def _workspace(shape, dtype):
    """A scratch array reused across calls (a fresh multi-MiB buffer costs page faults)."""
    size = int(np.prod(shape))
    buffers = getattr(_workspaces, "buffers", None)
    if buffers is None:
        buffers = _workspaces.buffers = {}
    buf = buffers.get(dtype)
    if buf is None or buf.size < size:
        buf = buffers[dtype] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _c(a):
    return None if a is None else np.ascontiguousarray(a)


def _check_no_overlap(outs, ins):
    """The kernels write outputs while still reading inputs: an output that shares memory with an
    input would silently corrupt the result."""
    for i, o in enumerate(outs):
        if o is not None and any(a is not None and np.may_share_memory(o, a) for a in ins):
            raise ValueError(f"out[{i}] must not share memory with an input")


def rnn(x_seq, h0, Wx, Wh, b, out):
    T, N, D = x_seq.shape
    H = Wx.shape[1]
    if out is not None:
        _check_no_overlap((out,), (x_seq, h0, Wx, Wh, b))
    if T * N * D * H == 0:  # nothing for BLAS to multiply (and lda >= 1 would not hold)
        return _numpy_backend.rnn(x_seq, h0, Wx, Wh, b, out)
    hs = np.empty((T, N, H), x_seq.dtype) if out is None else out
    with _single_threaded_blas():
        _kernels.rnn_forward(
            _c(x_seq).reshape(T * N, D), _c(h0), _c(Wx), _c(Wh), _c(b), hs.reshape(T * N, H), N, _num_threads(T, N, D, H)
        )
    return hs


def rnn_backward(dhs, x_seq, h0, Wx, Wh, hs, out):
    T, N, D = x_seq.shape
    H = Wx.shape[1]
    outs = (None,) * 5 if out is None else out
    _check_no_overlap(outs, (dhs, x_seq, h0, Wx, Wh, hs))
    if T * N * D * H == 0:
        return _numpy_backend.rnn_backward(dhs, x_seq, h0, Wx, Wh, hs, out)
    dt = x_seq.dtype
    shapes = ((T, N, D), (N, H), (D, H), (H, H), (H,))
    dx, dh0, dWx, dWh, db = (np.empty(s, dt) if o is None else o for o, s in zip(outs, shapes))
    with _single_threaded_blas():
        _kernels.rnn_backward(
            _c(dhs).reshape(T * N, H), _c(x_seq).reshape(T * N, D), _c(h0), _c(Wx), _c(Wh.T),
            _c(hs).reshape(T * N, H), _workspace((T * N, H), dt),
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
