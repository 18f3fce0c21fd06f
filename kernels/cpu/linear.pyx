# Fully connected layer (``y = x @ W^T + b``) forward and backward through the OpenBLAS the other
# kernels link, called single-threaded inside our own OpenMP team: a model's Dense layers then
# wake no other library's thread pool (NumPy's BLAS threads, woken by ``x @ W``, spin for a while
# after each call and fight our team for the cores).
#
# Sizes are validated by the linear spec (fastlayers.ops.linear) and the wrapper (C ints) before
# they get here. The weight is (O, I) C-contiguous (``weight_t`` false) or its transpose (I, O)
# C-contiguous (``weight_t`` true: the Dense layer's (in, out) parameter, passed as a view).
# Threads take blocks of rows of their output, so no result depends on the thread count.
from cython cimport floating
from cython.parallel cimport prange

from _blas cimport gemm, gemv, single_threaded_blas


cdef void _forward_task(const floating[:, ::1] x, const floating[:, ::1] w, bint weight_t, const floating[::1] b,
                        bint has_bias, floating[:, ::1] y, Py_ssize_t rows, bint by_rows,
                        Py_ssize_t task) noexcept nogil:
    """Rows task * rows .. of y: one gemm, or with ``by_rows`` a gemv per row."""
    cdef Py_ssize_t M = x.shape[0], I = x.shape[1], O = y.shape[1]
    cdef Py_ssize_t m0 = task * rows, mr = min(rows, M - m0), m, o
    cdef int ldw = <int>(O if weight_t else I)
    if has_bias:
        for m in range(m0, m0 + mr):
            for o in range(O):
                y[m, o] = b[o]
    if by_rows:
        for m in range(m0, m0 + mr):
            if weight_t:  # y[m] = W^T x[m], W^T stored (I, O)
                gemv(True, <int>I, <int>O, <floating>1, &w[0, 0], ldw, &x[m, 0],
                     <floating>(1 if has_bias else 0), &y[m, 0])
            else:
                gemv(False, <int>O, <int>I, <floating>1, &w[0, 0], ldw, &x[m, 0],
                     <floating>(1 if has_bias else 0), &y[m, 0])
        return
    gemm(False, not weight_t, <int>mr, <int>O, <int>I, <floating>1, &x[m0, 0], <int>I, &w[0, 0], ldw,
         <floating>(1 if has_bias else 0), &y[m0, 0], <int>O)


def forward(const floating[:, ::1] x, const floating[:, ::1] w, bint weight_t, const floating[::1] b,
            bint has_bias, floating[:, ::1] y, Py_ssize_t rows, bint by_rows, int num_threads):
    """y (M, O) = x (M, I) @ W^T (+ b); M, I, O > 0; ``rows``: rows of y per task; ``by_rows``:
    each row by a matrix-vector product instead of the task's rows by one gemm."""
    single_threaded_blas()
    cdef Py_ssize_t tasks = (x.shape[0] + rows - 1) // rows, task
    if num_threads == 1:  # no OpenMP region: entering one costs more than a small layer's GEMM
        with nogil:
            for task in range(tasks):
                _forward_task(x, w, weight_t, b, has_bias, y, rows, by_rows, task)
        return
    for task in prange(tasks, nogil=True, schedule="static", num_threads=num_threads):
        _forward_task(x, w, weight_t, b, has_bias, y, rows, by_rows, task)


cdef void _backward_task(const floating[:, ::1] dy, const floating[:, ::1] x, const floating[:, ::1] w,
                         bint weight_t, floating[:, ::1] dx, floating[:, ::1] dw, Py_ssize_t rows,
                         Py_ssize_t weight_rows, Py_ssize_t task) noexcept nogil:
    """Task ``task``: a block of rows of dx, or past those, of dw."""
    cdef Py_ssize_t M = x.shape[0], I = x.shape[1], O = dy.shape[1]
    cdef Py_ssize_t dx_tasks = (M + rows - 1) // rows, r0, nr
    cdef int ldw = <int>(O if weight_t else I)
    if task < dx_tasks:
        r0 = task * rows
        nr = min(rows, M - r0)
        # dx rows = dy rows (nr x O) @ W (O x I)
        gemm(False, weight_t, <int>nr, <int>I, <int>O, <floating>1, &dy[r0, 0], <int>O, &w[0, 0], ldw,
             <floating>0, &dx[r0, 0], <int>I)
    else:
        r0 = (task - dx_tasks) * weight_rows
        nr = min(weight_rows, O - r0)
        # dw rows r0.. (nr x I) = dy^T (columns r0.. of dy: nr x M) @ x (M x I)
        gemm(True, False, <int>nr, <int>I, <int>M, <floating>1, &dy[0, r0], <int>O, &x[0, 0], <int>I,
             <floating>0, &dw[r0, 0], <int>I)


def backward(const floating[:, ::1] dy, const floating[:, ::1] x, const floating[:, ::1] w, bint weight_t,
             floating[:, ::1] dx, floating[:, ::1] dw, Py_ssize_t rows, Py_ssize_t weight_rows, int num_threads):
    """dx (M, I) = dy (M, O) @ W and dw (O, I) = dy^T @ x, whatever the layout of w.
    Tasks: blocks of ``rows`` rows of dx, then blocks of ``weight_rows`` rows of dw."""
    single_threaded_blas()
    cdef Py_ssize_t tasks = (x.shape[0] + rows - 1) // rows + (dy.shape[1] + weight_rows - 1) // weight_rows
    cdef Py_ssize_t task
    if num_threads == 1:
        with nogil:
            for task in range(tasks):
                _backward_task(dy, x, w, weight_t, dx, dw, rows, weight_rows, task)
        return
    for task in prange(tasks, nogil=True, schedule="static", num_threads=num_threads):
        _backward_task(dy, x, w, weight_t, dx, dw, rows, weight_rows, task)
