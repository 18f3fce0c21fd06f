"""rnn (and rnn_step, a sequence of one) on the CPU backend: wraps kernels/cpu/rnn.pyx (tanh and
relu).

Step arrays (N, .) and sequence arrays (T, N, .) are both read as (T*N, .) row blocks. The kernels split every product among their own OpenMP threads
(``fastlayers._dispatch.threads_for``) and call BLAS single-threaded inside them. float32 runs its
products on weights the kernels pack once per call (kernels/cpu/packed_gemm.h) wherever the LSTM's
and GRU's do (``_gated.PACKED_BLOCKING``).
"""
import contextlib

import numpy as np

from ..._cpu import rnn as _kernels
from ..._dispatch import threads_for
from .. import numpy as _reference
from . import _gated
from ._common import BLAS_INT_MAX, contiguous, workspace


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


def _packs(dtype):
    """Whether the kernels multiply packed weights (float32 where packed_gemm.h has a blocking)."""
    return _gated.PACKED_BLOCKING is not None and dtype == np.float32


@contextlib.contextmanager
def _packed_buffers(slots, K, H, dtype, pack=True):
    """One workspace per slot for a (K[i], H) weight packed in panels (the kernels fill them), or
    Nones where the kernels take OpenBLAS's paths (and where not ``pack``)."""
    if not (pack and _packs(dtype)):
        yield (None,) * len(slots)
        return
    size = -(-H // _kernels.PANEL) * _kernels.PANEL
    with contextlib.ExitStack() as stack:
        yield tuple(stack.enter_context(workspace(s, (size * k,), np.float32)) for s, k in zip(slots, K))


def forward(x, h0, Wx, Wh, b, g, outs):
    T, N, D, H = g.T, g.N, g.D, g.H
    if T * N * D * H == 0:  # nothing for BLAS to multiply (and lda >= 1 would not hold)
        return _reference.rnn_forward(x, h0, Wx, Wh, b, g, outs)
    _check_blas_sizes(T, N, D, H)
    (hs,) = outs
    threads = _num_threads(T, N, D, H)
    # A single step gains nothing from packing its weights (measured: docs/performance.md, "rnn:
    # packed weights"); its backward does (no Wh^T copy), so the backward packs at any T.
    with _packed_buffers(("rnn_packed_x", "rnn_packed_h"), (D, H), H, x.dtype, T > 1) as (packed_x, packed):
        _kernels.rnn_forward(
            contiguous(x).reshape(T * N, D), _initial_state(h0, N, H, x.dtype), contiguous(Wx), contiguous(Wh),
            contiguous(b), hs.reshape(T * N, H), N, threads, g.nonlinearity == "relu", packed_x, packed,
            _gated.avx512_blocking(),
        )
    return outs


def backward(dhs, x, h0, Wx, Wh, hs, g, outs):
    T, N, D, H = g.T, g.N, g.D, g.H
    if T * N * D * H == 0:
        return _reference.rnn_backward(dhs, x, h0, Wx, Wh, hs, g, outs)
    _check_blas_sizes(T, N, D, H)
    dx, dh0, dWx, dWh, db = outs
    dt, threads = x.dtype, _num_threads(T, N, D, H)
    with (workspace("rnn_dz", (T * N, H), dt) as dz,
          workspace("rnn_partial", ((threads - 1) * (D + H) * H,), dt) as partial,  # the other threads' dWx, dWh
          _packed_buffers(("rnn_packed_t",), (H,), H, dt) as (packed_t,)):
        _kernels.rnn_backward(
            contiguous(dhs).reshape(T * N, H), contiguous(x).reshape(T * N, D), _initial_state(h0, N, H, dt),
            contiguous(Wx), contiguous(Wh), None if packed_t is not None else contiguous(Wh.T),
            contiguous(hs).reshape(T * N, H), dz, dx.reshape(T * N, D), dh0, dWx, dWh, db, partial, N,
            threads, g.nonlinearity == "relu", packed_t, _gated.avx512_blocking(),
        )
    return outs
