# What the recurrent kernels share: the thread team's blocks and barrier, and the GEMM shapes
# that keep OpenBLAS on its fast small-matrix path. Sequences arrive flattened to (T*N, features)
# rows in C order, so step t of sequence n is row t*N + n.
from cython cimport floating

from _blas cimport gemm

# Column blocks are whole multiples of 16 elements (one 64-byte line of float32), so threads
# never write to the same cache line.
cdef enum:
    COLUMN_ALIGN = 16
    # OpenBLAS (0.3.30, SkylakeX kernels, also on Zen 4) multiplies without packing its operands
    # when M*N*K stays under about 10^6, which saves repacking Wh at every step (measured:
    # docs/performance.md). A step's product is therefore computed
    # in column chunks under this size, unless that would make the chunks narrower than
    # MIN_CHUNK columns.
    SMALL_GEMM_MNK = 1 << 19
    MIN_CHUNK = 32
    # A product too deep for such chunks is cut into slices of K added up when each slice keeps
    # at least MIN_DEPTH of K (a few rows: a step's product); with many rows c would be re-read
    # per slice, and one packed GEMM amortises its packing over the rows instead.
    MIN_DEPTH = 256
    PANEL_ROWS = 32


cdef extern from *:
    """
    /* Inside Cython's `with parallel()`: the team's size (OpenMP may grant fewer threads than
       asked) and a barrier (orphaned: it binds to the enclosing parallel region). */
    #ifdef _OPENMP
    #include <omp.h>
    static inline int fl_team_size(void) { return omp_get_num_threads(); }
    static inline int fl_thread_id(void) { return omp_get_thread_num(); }
    static inline void fl_team_barrier(void) {
        #pragma omp barrier
    }
    #else
    static inline int fl_team_size(void) { return 1; }
    static inline int fl_thread_id(void) { return 0; }
    static inline void fl_team_barrier(void) {}
    #endif
    """
    int team_size "fl_team_size"() noexcept nogil
    int thread_id "fl_thread_id"() noexcept nogil
    void barrier "fl_team_barrier"() noexcept nogil


cdef inline Py_ssize_t _block_width(Py_ssize_t count, Py_ssize_t size, Py_ssize_t align) noexcept nogil:
    """Width of each of ``count`` blocks covering range(size), a multiple of ``align``; block i
    is [block_start, block_stop), trailing blocks may be empty."""
    return ((size + count - 1) // count + align - 1) // align * align


cdef inline Py_ssize_t block_start(Py_ssize_t i, Py_ssize_t count, Py_ssize_t size,
                                   Py_ssize_t align) noexcept nogil:
    return min(i * _block_width(count, size, align), size)


cdef inline Py_ssize_t block_stop(Py_ssize_t i, Py_ssize_t count, Py_ssize_t size,
                                  Py_ssize_t align) noexcept nogil:
    return min(block_start(i, count, size, align) + _block_width(count, size, align), size)


cdef struct Blocks:
    # One thread's share of a call (the parallel plan of rnn.pyx): rows [r0, r1) of the T*N rows
    # of all steps, the sequences [n0, n0 + rows) of the batch, columns [c0, c1) of the weight
    # gradients (COLUMN_ALIGN-aligned).
    Py_ssize_t r0, r1, n0, rows, c0, c1


cdef inline Blocks thread_blocks(Py_ssize_t TN, Py_ssize_t N, Py_ssize_t width) noexcept nogil:
    """The calling thread's Blocks, inside ``with parallel()``, for T*N rows, N sequences and
    weight gradients ``width`` columns wide."""
    cdef Py_ssize_t tid = thread_id(), team = team_size()
    cdef Blocks b
    b.r0 = block_start(tid, team, TN, 1)
    b.r1 = block_stop(tid, team, TN, 1)
    b.n0 = block_start(tid, team, N, 1)
    b.rows = block_stop(tid, team, N, 1) - b.n0
    b.c0 = block_start(tid, team, width, COLUMN_ALIGN)
    b.c1 = block_stop(tid, team, width, COLUMN_ALIGN)
    return b


cdef inline Py_ssize_t small_gemm_columns(Py_ssize_t rows, Py_ssize_t K) noexcept nogil:
    """Columns per GEMM call that keep a (rows x K) @ (K x columns) product under OpenBLAS's
    small-matrix size (see SMALL_GEMM_MNK); 0 when that would be fewer than MIN_CHUNK."""
    cdef Py_ssize_t columns = SMALL_GEMM_MNK // max(rows * K, 1) // COLUMN_ALIGN * COLUMN_ALIGN
    return columns if columns >= MIN_CHUNK else 0


cdef inline void _column_chunks(const floating* a, Py_ssize_t lda, const floating* B, Py_ssize_t ldb, floating* c,
                                Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t K, Py_ssize_t width, Py_ssize_t chunk,
                                floating beta) noexcept nogil:
    """c (rows x width) = a (rows x K) @ B (K x width) + beta * c, ``chunk`` columns per GEMM."""
    cdef Py_ssize_t c0 = 0, c1
    while c0 < width:
        c1 = min(c0 + chunk, width)
        gemm(False, False, <int>rows, <int>(c1 - c0), <int>K, <floating>1, a, <int>lda, B + c0, <int>ldb,
             beta, c + c0, <int>ldc)
        c0 = c1


cdef inline void step_product(const floating* a, const floating* B, Py_ssize_t ldb, floating* c, Py_ssize_t ldc,
                              Py_ssize_t rows, Py_ssize_t K, Py_ssize_t width, floating beta) noexcept nogil:
    """c (rows x width) = a (rows x K) @ B (K x width) + beta * c, all C order with row strides
    K, ldb, ldc, on the small-matrix path: in column chunks under its size, and when K is too deep
    for chunks of MIN_CHUNK columns (the backward's dz @ Wh^T, K = G*H), in slices of K added up
    (c is a step's rows, small enough to stay in cache). One packed GEMM when the slices would be
    thinner than MIN_DEPTH."""
    cdef Py_ssize_t chunk = small_gemm_columns(rows, K), depth = K, k0 = 0, k1
    if chunk == 0:
        depth = SMALL_GEMM_MNK // max(rows * MIN_CHUNK, 1)
        chunk = MIN_CHUNK
        if depth < MIN_DEPTH:
            _column_chunks(a, K, B, ldb, c, ldc, rows, K, width, width, beta)
            return
    while k0 < K:
        k1 = min(k0 + depth, K)
        _column_chunks(a + k0, K, B + k0 * ldb, ldb, c, ldc, rows, k1 - k0, width, chunk,
                       beta if k0 == 0 else <floating>1)
        k0 = k1


cdef inline void input_projection(const floating* x, const floating* Wx, Py_ssize_t ldw, floating* z, Py_ssize_t ldz,
                                  Py_ssize_t rows, Py_ssize_t D, Py_ssize_t width) noexcept nogil:
    """z (rows x width) = x (rows x D) @ Wx (D x width), Wx and z with row strides ldw and ldz, in
    panels of PANEL_ROWS rows and column chunks under the small-matrix size (unpacked, faster than
    one packed GEMM), or as one GEMM when D is too large for that."""
    cdef Py_ssize_t p0 = 0, p1
    if small_gemm_columns(PANEL_ROWS, D) == 0:
        gemm(False, False, <int>rows, <int>width, <int>D, <floating>1, x, <int>D, Wx, <int>ldw,
             <floating>0, z, <int>ldz)
        return
    while p0 < rows:
        p1 = min(p0 + PANEL_ROWS, rows)
        step_product(x + p0 * D, Wx, ldw, z + p0 * ldz, ldz, p1 - p0, D, width, <floating>0)
        p0 = p1
