# Whole-buffer checks of the CPU backend, compiled and spread over the threads in chunks.
# same_bytes: whether two buffers hold the same bytes, the check that lets the backend hand out
# weights it derived earlier (backends/cpu/_common.py, ``derived``) without deriving them again;
# memcmp reads both buffers once with the C library's vector loop: 2-4x faster than
# ``np.array_equal``, which builds a boolean array of the whole comparison first. all_finite:
# whether an array holds no NaN and no infinity (the kernels whose transforms spread one over
# other outputs check first, all_finite.h), without ``np.isfinite``'s boolean array.
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcmp

cdef extern from "all_finite.h" nogil:
    int fl_all_finite_float(const float* a, Py_ssize_t n)
    int fl_all_finite_double(const double* a, Py_ssize_t n)

cdef enum:
    CHUNK_BYTES = 1 << 18  # a task's share: long enough for memcmp's loop, many for two threads


def same_bytes(const unsigned char[::1] a, const unsigned char[::1] b, int num_threads):
    """Whether a and b (C-contiguous byte views of equal length) hold the same bytes."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same length, got {a.shape[0]} and {b.shape[0]}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    cdef Py_ssize_t n = a.shape[0], chunks = (a.shape[0] + CHUNK_BYTES - 1) // CHUNK_BYTES
    cdef Py_ssize_t c, lo
    cdef int differ = 0
    if n == 0:
        return True
    for c in prange(chunks, nogil=True, schedule="static", num_threads=num_threads if chunks > 1 else 1):
        lo = c * CHUNK_BYTES
        if memcmp(&a[lo], &b[lo], min(<Py_ssize_t>CHUNK_BYTES, n - lo)) != 0:
            differ += 1
    return differ == 0


def all_finite(const floating[::1] a, int num_threads):
    """Whether a (a C-contiguous view of values) holds no NaN and no infinity."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    cdef Py_ssize_t n = a.shape[0], step = CHUNK_BYTES // sizeof(floating), chunks = (n + step - 1) // step
    cdef Py_ssize_t c, lo
    cdef int bad = 0
    if n == 0:
        return True
    for c in prange(chunks, nogil=True, schedule="static", num_threads=num_threads if chunks > 1 else 1):
        lo = c * step
        if floating is float:
            bad += not fl_all_finite_float(&a[lo], min(step, n - lo))
        else:
            bad += not fl_all_finite_double(&a[lo], min(step, n - lo))
    return bad == 0
