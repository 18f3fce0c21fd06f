# Row-major GEMM for the Cython kernels, callable without the GIL; the one place to change the BLAS.
#
# Backed by the OpenBLAS of the scipy-openblas32 package (linked by setup.py): on our conv GEMM
# tiles, called single-threaded inside prange, it beat scipy.linalg.cython_blas (SciPy's bundled,
# older OpenBLAS) and cython-blis (docs/performance.md). Its CBLAS takes row-major arguments
# directly, so nothing is swapped here.
from cython cimport floating


cdef extern from "cblas.h" nogil:
    ctypedef enum CBLAS_ORDER:
        CblasRowMajor
    ctypedef enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans
    void scipy_cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b,
                           int M, int N, int K, float alpha, const float* A, int lda,
                           const float* B, int ldb, float beta, float* C, int ldc)
    void scipy_cblas_dgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b,
                           int M, int N, int K, double alpha, const double* A, int lda,
                           const double* B, int ldb, double beta, double* C, int ldc)

    void scipy_cblas_sgemv(CBLAS_ORDER order, CBLAS_TRANSPOSE trans, int M, int N, float alpha,
                           const float* A, int lda, const float* x, int incx, float beta, float* y,
                           int incy)
    void scipy_cblas_dgemv(CBLAS_ORDER order, CBLAS_TRANSPOSE trans, int M, int N, double alpha,
                           const double* A, int lda, const double* x, int incx, double beta,
                           double* y, int incy)

    int scipy_openblas_get_num_threads()
    void scipy_openblas_set_num_threads(int num_threads)


cdef inline void single_threaded_blas() noexcept nogil:
    """Keep this OpenBLAS at one thread. Our kernels call gemm from inside their own OpenMP
    threads, each on its own block: OpenBLAS threads on top would oversubscribe the cores (calls
    stalled in 4 ms steps). The library is ours alone (scipy-openblas32, not NumPy's or SciPy's),
    so it is set once for good; the check catches a process-wide change (e.g. threadpoolctl's
    threadpool_limits over every BLAS) made since. It also starts at one thread: see
    fastlayers/_cpu/__init__.py."""
    if scipy_openblas_get_num_threads() != 1:
        scipy_openblas_set_num_threads(1)



cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      floating alpha, const floating* A, int lda,
                      const floating* B, int ldb,
                      floating beta, floating* C, int ldc) noexcept nogil:
    """Row-major C (M x N) = alpha * op(A) @ op(B) + beta * C, op(A) M x K, op(B) K x N."""
    cdef CBLAS_TRANSPOSE ta = CblasTrans if trans_a else CblasNoTrans
    cdef CBLAS_TRANSPOSE tb = CblasTrans if trans_b else CblasNoTrans
    if floating is float:
        scipy_cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
    else:
        scipy_cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)


cdef inline void gemv(bint trans_a, int M, int N, floating alpha, const floating* A, int lda,
                      const floating* x, floating beta, floating* y) noexcept nogil:
    """Row-major y = alpha * op(A) @ x + beta * y, A M x N, op(A) A or its transpose; x and y
    contiguous."""
    cdef CBLAS_TRANSPOSE ta = CblasTrans if trans_a else CblasNoTrans
    if floating is float:
        scipy_cblas_sgemv(CblasRowMajor, ta, M, N, alpha, A, lda, x, 1, beta, y, 1)
    else:
        scipy_cblas_dgemv(CblasRowMajor, ta, M, N, alpha, A, lda, x, 1, beta, y, 1)
