# Whole-buffer checks of the CPU backend, compiled and spread over the threads in one share
# each (at most CHUNK_BYTES). They take the arrays themselves, their data found by NumPy's C API:
# a Python view made per call cost a microsecond, as much as comparing a small layer's weights.
# same_bytes: whether two arrays hold the same bytes, the check that lets the backend hand out
# weights it derived earlier (backends/cpu/_common.py, ``derived``) without deriving them again;
# memcmp reads both buffers once with the C library's vector loop: 2-4x faster than
# ``np.array_equal``, which builds a boolean array of the whole comparison first. all_finite:
# whether an array holds no NaN and no infinity (the kernels whose transforms spread one over
# other outputs check first, all_finite.h), without ``np.isfinite``'s boolean array.
from cython.parallel cimport prange
from libc.string cimport memcmp

cimport numpy as cnp

cnp.import_array()

cdef extern from "all_finite.h" nogil:
    int fl_all_finite_float(const float* a, Py_ssize_t n)
    int fl_all_finite_double(const double* a, Py_ssize_t n)

cdef enum:
    CHUNK_BYTES = 1 << 18  # a task's share: long enough for memcmp's loop, many for two threads
    LINE = 64  # threads' shares start on cache lines


def address(cnp.ndarray a not None):
    """The address of a's first element (``a.ctypes.data`` without its object: the key of the
    weights ``derived`` keeps)."""
    return <size_t>cnp.PyArray_DATA(a)


cdef Py_ssize_t _share(Py_ssize_t n, int num_threads, Py_ssize_t least) nogil:
    """Bytes per task: ``n`` in one share per thread, cache-line sized, none under ``least``;
    at most ``CHUNK_BYTES``."""
    cdef Py_ssize_t share = (n + num_threads - 1) // num_threads
    share = (share + LINE - 1) // LINE * LINE
    return min(max(share, least), <Py_ssize_t>CHUNK_BYTES)


cdef int _check_c_order(cnp.ndarray a, str name) except -1:
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{name} must be C-contiguous")
    return 0


def same_bytes(cnp.ndarray a not None, cnp.ndarray b not None, int num_threads):
    """Whether a and b (C-contiguous arrays of any dtype and shape, the same size in bytes) hold
    the same bytes."""
    _check_c_order(a, "a")
    _check_c_order(b, "b")
    cdef Py_ssize_t n = cnp.PyArray_NBYTES(a)
    if n != cnp.PyArray_NBYTES(b):
        raise ValueError(f"a and b must have the same length in bytes, got {n} and {cnp.PyArray_NBYTES(b)}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    if n == 0:
        return True
    cdef const unsigned char* pa = <const unsigned char*>cnp.PyArray_DATA(a)
    cdef const unsigned char* pb = <const unsigned char*>cnp.PyArray_DATA(b)
    cdef Py_ssize_t share = _share(n, num_threads, 1 << 16), tasks = (n + share - 1) // share
    cdef Py_ssize_t c, lo
    cdef int differ = 0
    if tasks == 1:  # no OpenMP region: entering one costs as much as comparing a small layer's weights
        with nogil:
            differ = memcmp(pa, pb, n) != 0
        return differ == 0
    for c in prange(tasks, nogil=True, schedule="static", num_threads=num_threads):
        lo = c * share
        if memcmp(pa + lo, pb + lo, min(share, n - lo)) != 0:
            differ += 1
    return differ == 0


def all_finite(cnp.ndarray a not None, int num_threads):
    """Whether a (a C-contiguous, aligned, native float32 or float64 array of any shape) holds no
    NaN and no infinity."""
    _check_c_order(a, "a")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    cdef int kind = cnp.PyArray_TYPE(a)
    if kind != cnp.NPY_FLOAT32 and kind != cnp.NPY_FLOAT64:
        raise TypeError(f"a must be float32 or float64, got {a.dtype}")
    if not cnp.PyArray_ISNOTSWAPPED(a) or not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"a must be aligned and in native byte order, got dtype {a.dtype.str}")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a), itemsize = cnp.PyArray_ITEMSIZE(a)
    if n == 0:
        return True
    cdef const char* p = <const char*>cnp.PyArray_DATA(a)
    cdef Py_ssize_t step = _share(n * itemsize, num_threads, 1 << 15) // itemsize, tasks = (n + step - 1) // step
    cdef Py_ssize_t c, lo
    cdef int bad = 0
    if tasks == 1:  # no OpenMP region (as in same_bytes)
        with nogil:
            bad = _finite_run(p, kind, n) == 0
        return bad == 0
    for c in prange(tasks, nogil=True, schedule="static", num_threads=num_threads):
        lo = c * step
        bad += _finite_run(p + lo * itemsize, kind, min(step, n - lo)) == 0
    return bad == 0


cdef inline int _finite_run(const char* p, int kind, Py_ssize_t n) noexcept nogil:
    """Whether the n values of type ``kind`` at p are all finite."""
    if kind == cnp.NPY_FLOAT32:
        return fl_all_finite_float(<const float*>p, n)
    return fl_all_finite_double(<const double*>p, n)
