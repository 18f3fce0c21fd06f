"""linear on the CPU backend: wraps kernels/cpu/linear.pyx.

Arguments arrive validated by the linear spec (fastlayers.ops.linear). The weight is used as it
lies when it is C-contiguous (O, I) or the transpose of a C-contiguous (I, O) array (the Dense
layer's parameter, passed as ``W.T``); otherwise it is copied. Empty sizes are handled here.
"""
import numpy as np

from ..._cpu import linear as _kernels
from ..._dispatch import threads_for
from ._common import BLAS_INT_MAX, contiguous


def _check_blas_sizes(g):
    if max(g.M, g.I, g.O) > BLAS_INT_MAX:
        raise ValueError(f"linear sizes must fit a C int for BLAS, got M={g.M}, in_features={g.I}, "
                         f"out_features={g.O}")


def _weight(w):
    """(array, transposed): the weight as the kernel reads it."""
    if w.flags.c_contiguous:
        return w, False
    if w.T.flags.c_contiguous:
        return w.T, True
    return np.ascontiguousarray(w), False


# Row blocks of a size set by the problem alone, never by the thread count: every row of a result
# then comes from the same GEMM call at any thread count (OpenBLAS's kernels round a row by its
# place in the call's blocking: with one block per thread, 1 and 2 threads differed). Enough
# blocks for 8 threads, none under 16 rows.
LINEAR_TASKS = 8
LINEAR_MIN_ROWS = 16


# Up to this many rows (the problem's, so the choice holds at any thread count) a matrix-vector
# product per row beats one gemm, which packs the whole weight on every call
# (docs/performance.md).
LINEAR_GEMV_MAX_ROWS = 2


def _rows(count):
    """Rows per task."""
    return max(LINEAR_MIN_ROWS, -(-count // LINEAR_TASKS))


def forward(x, w, b, g, outs):
    (y,) = outs
    y2 = y.reshape(g.M, g.O)
    if g.M == 0 or g.O == 0:
        return (y,)
    if g.I == 0:
        y2[...] = 0 if b is None else b
        return (y,)
    _check_blas_sizes(g)
    weight, transposed = _weight(w)
    rows = _rows(g.M)
    threads = min(threads_for(g.M * g.I * g.O), -(-g.M // rows))
    bias = contiguous(b) if b is not None else np.zeros(1, x.dtype)
    _kernels.forward(contiguous(x).reshape(g.M, g.I), weight, transposed, bias, b is not None, y2,
                     rows, g.M <= LINEAR_GEMV_MAX_ROWS, threads)
    return (y,)


def backward(dy, x, w, g, outs):
    dx, dw, db = outs
    dy2 = contiguous(dy).reshape(g.M, g.O)
    np.sum(dy2, axis=0, out=db)
    if g.M == 0 or g.I == 0 or g.O == 0:
        dx[...] = 0
        dw[...] = 0
        return outs
    _check_blas_sizes(g)
    weight, transposed = _weight(w)
    threads = threads_for(2 * g.M * g.I * g.O)
    _kernels.backward(dy2, contiguous(x).reshape(g.M, g.I), weight, transposed, dx.reshape(g.M, g.I), dw,
                      _rows(g.M), _rows(g.O), threads)
    return outs
