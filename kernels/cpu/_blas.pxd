# Row-major GEMM for the Cython kernels, callable without the GIL.
# Backed by scipy.linalg.cython_blas (scipy's bundled OpenBLAS); the one place to change the BLAS.
from scipy.linalg.cython_blas cimport sgemm, dgemm

ctypedef fused floating:
    float
    double


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      floating alpha, const floating* A, int lda,
                      const floating* B, int ldb,
                      floating beta, floating* C, int ldc) noexcept nogil:
    """Row-major C (M x N) = alpha * op(A) @ op(B) + beta * C, op(A) M x K, op(B) K x N.

    BLAS is column-major: a row-major C is a column-major C^T = op(B)^T @ op(A)^T, so the
    operands swap places and keep their own transpose flags."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float*>B, &ldb, <float*>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double*>B, &ldb, <double*>A, &lda, &beta, C, &ldc)
