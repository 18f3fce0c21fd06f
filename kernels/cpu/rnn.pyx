# Tanh RNN over a time-major sequence, forward and backward through time, in one call each
# (rnn_step is the T = 1 case). Sequences arrive flattened to (T*N, features) rows, C order,
# validated by fastlayers.backends.cpu.rnn; the caller keeps BLAS single-threaded.
#
# Parallel plan: one OpenMP team for the whole call. Products over all T*N rows are split into
# row blocks; the recurrent product of each step is split into column blocks of H, so a thread
# keeps its slice of Wh hot in cache, applies tanh (or its derivative) to the block it has just
# computed, and the work-sharing loop's closing barrier ends the step.
from cython.parallel cimport parallel, prange
from libc.math cimport tanh
from libc.string cimport memcpy, memset
cimport cython

from _blas cimport gemm, floating

# Column blocks are whole multiples of 16 elements (one 64-byte line of float32), so threads
# never write to the same cache line.
cdef enum:
    COLUMN_ALIGN = 16


cdef inline float _tanh_f32(float x) noexcept nogil:
    """tanh in float32 by Eigen's rational approximation (odd 13/even 6 minimax on [-7.9, 7.9],
    a few ulp): branch-free, so GCC vectorises the loops calling it, where libm's tanhf is a
    scalar call that cost more than the GEMMs. NaN propagates (the clamps keep it)."""
    cdef float x2, p, q
    if x > 7.90531110763549805:
        x = 7.90531110763549805
    if x < -7.90531110763549805:
        x = -7.90531110763549805
    x2 = x * x
    p = x2 * -2.76076847742355e-16 + 2.00018790482477e-13
    p = x2 * p + -8.60467152213735e-11
    p = x2 * p + 5.12229709037114e-08
    p = x2 * p + 1.48572235717979e-05
    p = x2 * p + 6.37261928875436e-04
    p = x2 * p + 4.89352455891786e-03
    q = x2 * 1.19825839466702e-06 + 1.18534705686654e-04
    q = x2 * q + 2.26843463243900e-03
    q = x2 * q + 4.89352518554385e-03
    return x * p / q


cdef inline Py_ssize_t _block_width(Py_ssize_t count, Py_ssize_t size, Py_ssize_t align) noexcept nogil:
    """Width of each of ``count`` blocks covering range(size), a multiple of ``align``; block i
    is [min(i * width, size), min((i + 1) * width, size)), trailing blocks may be empty."""
    return ((size + count - 1) // count + align - 1) // align * align


cdef extern from *:
    """
    /* An orphaned barrier binds to the enclosing parallel region: Cython's prange inside
       `with parallel()` is `omp for nowait`, so steps that read another thread's results wait
       here. */
    static inline void rnn_barrier(void) {
    #ifdef _OPENMP
        #pragma omp barrier
    #endif
    }
    """
    void barrier "rnn_barrier"() noexcept nogil


cdef inline void _add_bias_tanh(floating* z, const floating* b, Py_ssize_t rows, Py_ssize_t ld,
                                Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """z[r, c0:c1] = tanh(z[r, c0:c1] + b[c0:c1]) for r < rows (b may be NULL)."""
    cdef Py_ssize_t r, j
    cdef floating* row
    for r in range(rows):
        row = z + r * ld
        if b != NULL:
            for j in range(c0, c1):
                row[j] = row[j] + b[j]
        for j in range(c0, c1):
            if floating is float:
                row[j] = _tanh_f32(row[j])
            else:
                row[j] = tanh(row[j])


@cython.boundscheck(False)
@cython.wraparound(False)
def rnn_forward(const floating[:, ::1] x, const floating[:, ::1] h0, const floating[:, ::1] Wx,
                const floating[:, ::1] Wh, const floating[::1] b, floating[:, ::1] hs,
                Py_ssize_t N, int num_threads):
    """hs[t] = tanh(x[t] @ Wx + hs[t-1] @ Wh + b), hs[-1] = h0 (zeros when None).

    x (T*N, D), hs (T*N, H), h0 (N, H) or None, b (H,) or None; T*N, D, H >= 1."""
    cdef Py_ssize_t TN = x.shape[0], D = x.shape[1], H = Wh.shape[0]
    cdef Py_ssize_t T = TN // N
    cdef Py_ssize_t row_width = _block_width(num_threads, TN, 1)
    cdef Py_ssize_t col_width = _block_width(num_threads, H, COLUMN_ALIGN)
    cdef const floating* h_init = &h0[0, 0] if h0 is not None else NULL
    cdef const floating* bias = &b[0] if b is not None else NULL
    cdef const floating* px = &x[0, 0]
    cdef const floating* pWx = &Wx[0, 0]
    cdef const floating* pWh = &Wh[0, 0]
    cdef floating* phs = &hs[0, 0]
    cdef const floating* h_prev
    cdef Py_ssize_t t = 0, blk, r0, r1, c0, c1
    with nogil, parallel(num_threads=num_threads):
        # The input projection of every step at once: hs = x @ Wx.
        for blk in prange(num_threads, schedule="static"):
            r0 = min(blk * row_width, TN)
            r1 = min(r0 + row_width, TN)
            if r1 > r0:
                gemm(False, False, <int>(r1 - r0), <int>H, <int>D, <floating>1, px + r0 * D, <int>D,
                     pWx, <int>H, <floating>0, phs + r0 * H, <int>H)
        barrier()
        for t in range(T):
            for blk in prange(num_threads, schedule="static"):
                c0 = min(blk * col_width, H)
                c1 = min(c0 + col_width, H)
                if c1 > c0:
                    h_prev = h_init
                    if t > 0:
                        h_prev = phs + (t - 1) * N * H
                    if h_prev != NULL:
                        gemm(False, False, <int>N, <int>(c1 - c0), <int>H, <floating>1, h_prev, <int>H,
                             pWh + c0, <int>H, <floating>1, phs + t * N * H + c0, <int>H)
                    _add_bias_tanh(phs + t * N * H, bias, N, H, c0, c1)
            barrier()


@cython.boundscheck(False)
@cython.wraparound(False)
def rnn_backward(const floating[:, ::1] dhs, const floating[:, ::1] x, const floating[:, ::1] h0,
                 const floating[:, ::1] Wx, const floating[:, ::1] Wh, const floating[:, ::1] hs,
                 floating[:, ::1] dz, floating[:, ::1] dx, floating[:, ::1] dh0,
                 floating[:, ::1] dWx, floating[:, ::1] dWh, floating[::1] db,
                 Py_ssize_t N, int num_threads):
    """Backward through time of rnn_forward.

    dhs, hs, dz (workspace) (T*N, H); x, dx (T*N, D); h0 (N, H) or None; dh0 (N, H); dWx (D, H);
    dWh (H, H); db (H,). Every output is overwritten. dWx, dWh and db sum over steps in a fixed
    order for a given thread count, so results are reproducible run to run."""
    cdef Py_ssize_t TN = x.shape[0], D = x.shape[1], H = Wh.shape[0]
    cdef Py_ssize_t T = TN // N
    cdef Py_ssize_t row_width = _block_width(num_threads, TN, 1)
    cdef Py_ssize_t col_width = _block_width(num_threads, H, COLUMN_ALIGN)
    cdef const floating* h_init = &h0[0, 0] if h0 is not None else NULL
    cdef const floating* px = &x[0, 0]
    cdef const floating* pWx = &Wx[0, 0]
    cdef const floating* pWh = &Wh[0, 0]
    cdef const floating* phs = &hs[0, 0]
    cdef const floating* pdhs = &dhs[0, 0]
    cdef floating* pdz = &dz[0, 0]
    cdef floating* pdx = &dx[0, 0]
    cdef floating* pdh0 = &dh0[0, 0]
    cdef floating* pdWx = &dWx[0, 0]
    cdef floating* pdWh = &dWh[0, 0]
    cdef floating* pdb = &db[0]
    cdef floating* g
    cdef const floating* h
    cdef Py_ssize_t t = 0, blk, r, j, r0, r1, c0, c1
    with nogil, parallel(num_threads=num_threads):
        # dz[t] = (dhs[t] + dz[t+1] @ Wh^T) * (1 - hs[t]^2), from the last step back.
        for t in range(T - 1, -1, -1):
            for blk in prange(num_threads, schedule="static"):
                c0 = min(blk * col_width, H)
                c1 = min(c0 + col_width, H)
                if c1 > c0:
                    for r in range(N):
                        memcpy(pdz + (t * N + r) * H + c0, pdhs + (t * N + r) * H + c0,
                               (c1 - c0) * sizeof(floating))
                    if t < T - 1:
                        # Columns c0:c1 of dz[t+1] @ Wh^T are dz[t+1] @ (rows c0:c1 of Wh)^T.
                        gemm(False, True, <int>N, <int>(c1 - c0), <int>H, <floating>1, pdz + (t + 1) * N * H,
                             <int>H, pWh + c0 * H, <int>H, <floating>1, pdz + t * N * H + c0, <int>H)
                    for r in range(N):
                        g = pdz + (t * N + r) * H
                        h = phs + (t * N + r) * H
                        for j in range(c0, c1):
                            g[j] = g[j] * (1 - h[j] * h[j])
            barrier()
        # Weight gradients over all steps, by column blocks: dWx = x^T dz,
        # dWh = hs[:-1]^T dz[1:] + h0^T dz[0], db = column sums of dz, dh0 = dz[0] @ Wh^T.
        for blk in prange(num_threads, schedule="static"):
            c0 = min(blk * col_width, H)
            c1 = min(c0 + col_width, H)
            if c1 > c0:
                gemm(True, False, <int>D, <int>(c1 - c0), <int>TN, <floating>1, px, <int>D,
                     pdz + c0, <int>H, <floating>0, pdWx + c0, <int>H)
                if T > 1:
                    gemm(True, False, <int>H, <int>(c1 - c0), <int>(TN - N), <floating>1, phs, <int>H,
                         pdz + N * H + c0, <int>H, <floating>0, pdWh + c0, <int>H)
                else:
                    for r in range(H):
                        memset(pdWh + r * H + c0, 0, (c1 - c0) * sizeof(floating))
                if h_init != NULL:
                    gemm(True, False, <int>H, <int>(c1 - c0), <int>N, <floating>1, h_init, <int>H,
                         pdz + c0, <int>H, <floating>1, pdWh + c0, <int>H)
                gemm(False, True, <int>N, <int>(c1 - c0), <int>H, <floating>1, pdz, <int>H,
                     pWh + c0 * H, <int>H, <floating>0, pdh0 + c0, <int>H)
                memset(pdb + c0, 0, (c1 - c0) * sizeof(floating))
                for r in range(TN):
                    g = pdz + r * H
                    for j in range(c0, c1):
                        pdb[j] = pdb[j] + g[j]
        # dx = dz @ Wx^T for all steps, by row blocks (dz is complete: the loop above ended with
        # a barrier and only reads it).
        for blk in prange(num_threads, schedule="static"):
            r0 = min(blk * row_width, TN)
            r1 = min(r0 + row_width, TN)
            if r1 > r0:
                gemm(False, True, <int>(r1 - r0), <int>D, <int>H, <floating>1, pdz + r0 * H, <int>H,
                     pWx, <int>H, <floating>0, pdx + r0 * D, <int>D)
