# ReLU forward and backward over flat, C-contiguous arrays, parallel over fixed blocks.
#
# Sizes are checked by the relu spec (fastlayers.ops.relu) and its CPU wrapper before they get
# here. NaN propagates as in NumPy's maximum and PyTorch's relu (x < 0 is false for NaN); the
# backward gives 0 where x <= 0 (at 0 too) and the gradient elsewhere, NaN included, as PyTorch's.
from cython cimport floating
from cython.parallel cimport prange

# Elements per task: large enough to amortise a task, small enough to split small arrays.
cdef enum:
    BLOCK = 16384


cdef void _forward_block(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = 0 if x[i] < 0 else x[i]


cdef void _backward_block(const floating* dy, const floating* x, floating* dx, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g
    for i in range(n):
        g = dy[i]  # read unconditionally, so that GCC makes the test a select, not a branch
        dx[i] = 0 if x[i] <= 0 else g


def forward(const floating[::1] x, floating[::1] y, int num_threads):
    """y = relu(x); y may be x itself (each element is read before its own is written)."""
    cdef Py_ssize_t n = x.shape[0], b
    if num_threads == 1:  # no OpenMP region: entering one costs more than a small array's loop
        if n:
            with nogil:
                _forward_block(&x[0], &y[0], n)
        return
    for b in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule="static", num_threads=num_threads):
        _forward_block(&x[b * BLOCK], &y[b * BLOCK], min(BLOCK, n - b * BLOCK))


def backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx, int num_threads):
    cdef Py_ssize_t n = x.shape[0], b
    if num_threads == 1:
        if n:
            with nogil:
                _backward_block(&dy[0], &x[0], &dx[0], n)
        return
    for b in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule="static", num_threads=num_threads):
        _backward_block(&dy[b * BLOCK], &x[b * BLOCK], &dx[b * BLOCK], min(BLOCK, n - b * BLOCK))

