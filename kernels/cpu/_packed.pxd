# packed_gemm.h for the Cython kernels: products c = a @ W (+ c) against a float32 weight packed
# once per call into panels of PANEL columns (the layout and the blockings are described there).
cdef extern from "packed_gemm.h" nogil:
    enum: FL_PANEL
    void packed_gemm_f32 "fl_packed_gemm_f32"(const float* a, Py_ssize_t lda, const float* packed, Py_ssize_t K,
                                              float* c, Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t width,
                                              int accumulate)
    void packed_gemm_avx2_f32 "fl_packed_gemm_avx2_f32"(const float* a, Py_ssize_t lda, const float* packed,
                                                        Py_ssize_t K, float* c, Py_ssize_t ldc, Py_ssize_t rows,
                                                        Py_ssize_t width, int accumulate)
    void pack_panels_f32 "fl_pack_panels_f32"(const float* w, Py_ssize_t ldw, int transposed, Py_ssize_t K,
                                              Py_ssize_t width, float* packed, Py_ssize_t p0, Py_ssize_t p1)


cdef inline Py_ssize_t panel_count(Py_ssize_t width) noexcept nogil:
    """Panels of a weight ``width`` columns wide (the last one zero-padded)."""
    return (width + FL_PANEL - 1) // FL_PANEL


cdef inline void packed_product(const float* a, Py_ssize_t lda, const float* packed, Py_ssize_t K, float* c,
                                Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t width, bint accumulate,
                                bint avx512) noexcept nogil:
    """c (rows x width) = a (rows x K) @ W (+ c with ``accumulate``), ``packed`` the panels of W,
    in packed_gemm.h's AVX-512 blocking or its AVX2 one (either is correct on any CPU, and gives
    the same sums)."""
    if avx512:
        packed_gemm_f32(a, lda, packed, K, c, ldc, rows, width, accumulate)
    else:
        packed_gemm_avx2_f32(a, lda, packed, K, c, ldc, rows, width, accumulate)
