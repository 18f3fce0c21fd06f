# Tanh or relu RNN over a time-major sequence, forward and backward through time, in one call
# each (rnn_step is the T = 1 case). Sequences arrive flattened to (T*N, features) rows, C order,
# validated by fastlayers.backends.cpu.rnn; the caller keeps BLAS single-threaded.
#
# Parallel plan: one OpenMP team for the whole call. The sequences of a batch are independent, so
# each thread runs the whole recurrence (every step's GEMM, then tanh or its derivative fused on
# the rows it has just computed) for its own block of the batch, without synchronising with the
# others: no barrier per step, which also keeps a loaded machine (a thread descheduled at a
# barrier stalls the team) from multiplying the time. Products over all steps (the input
# projection, dx) are split by row blocks of the T*N rows and weight gradients by column blocks
# of H, one barrier between them and the recurrence. Blocks come from the thread id, not from
# prange: Cython's prange adds a barrier of its own per loop.
from cython cimport floating
from cython.parallel cimport parallel
from libc.math cimport tanh
from libc.string cimport memcpy, memset

from _blas cimport gemm, single_threaded_blas
from _recurrent cimport Blocks, input_projection, barrier, small_gemm_columns, thread_blocks


cdef extern from "rnn_cells.h" nogil:
    void _bias_tanh_f32 "fl_rnn_bias_tanh_f32"(float* z, const float* b, Py_ssize_t rows, Py_ssize_t ld,
                                               Py_ssize_t c0, Py_ssize_t c1)


cdef inline void _add_bias_tanh(floating* z, const floating* b, Py_ssize_t rows, Py_ssize_t ld,
                                Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """z[r, c0:c1] = tanh(z[r, c0:c1] + b[c0:c1]) for r < rows (b may be NULL)."""
    cdef Py_ssize_t r, j
    cdef floating* row
    if floating is float:
        _bias_tanh_f32(z, b, rows, ld, c0, c1)
    else:
        for r in range(rows):
            row = z + r * ld
            for j in range(c0, c1):
                row[j] = tanh(row[j] + b[j] if b != NULL else row[j])


cdef inline void _add_bias_relu(floating* z, const floating* b, Py_ssize_t rows, Py_ssize_t ld,
                                Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """z[r, c0:c1] = max(z[r, c0:c1] + b[c0:c1], 0) for r < rows (b may be NULL); NaN propagates
    and -inf gives 0, as in the reference."""
    cdef Py_ssize_t r, j
    cdef floating v
    cdef floating* row
    for r in range(rows):
        row = z + r * ld
        for j in range(c0, c1):
            v = row[j] + b[j] if b != NULL else row[j]
            row[j] = v if (v > 0 or v != v) else 0


def rnn_forward(const floating[:, ::1] x, const floating[:, ::1] h0 not None, const floating[:, ::1] Wx,
                const floating[:, ::1] Wh, const floating[::1] b, floating[:, ::1] hs,
                Py_ssize_t N, int num_threads, bint relu=False):
    """hs[t] = tanh(x[t] @ Wx + hs[t-1] @ Wh + b) (max(., 0) with ``relu``), hs[-1] = h0.

    x (T*N, D), hs (T*N, H), h0 (N, H), b (H,) or None; T*N, D, H >= 1."""
    single_threaded_blas()
    cdef Py_ssize_t TN = x.shape[0], D = x.shape[1], H = Wh.shape[0]
    cdef Py_ssize_t T = TN // N
    cdef const floating* h_init = &h0[0, 0]
    cdef const floating* bias = &b[0] if b is not None else NULL
    cdef const floating* px = &x[0, 0]
    cdef const floating* pWx = &Wx[0, 0]
    cdef const floating* pWh = &Wh[0, 0]
    cdef floating* phs = &hs[0, 0]
    # Initialised only because Cython passes them into the team as firstprivate.
    cdef const floating* h_prev = NULL
    cdef floating* z = NULL
    cdef Py_ssize_t t = 0, chunk = 0, c0 = 0, c1 = 0
    cdef Blocks blk
    with nogil, parallel(num_threads=num_threads):
        blk = thread_blocks(TN, N, H)
        # The input projection of every step at once: hs = x @ Wx.
        if blk.r1 > blk.r0:
            input_projection(px + blk.r0 * D, pWx, H, phs + blk.r0 * H, H, blk.r1 - blk.r0, D, H)
        barrier()
        if blk.rows > 0:
            chunk = small_gemm_columns(blk.rows, H)
            if chunk == 0:  # one packed GEMM per step
                chunk = H
            h_prev = h_init + blk.n0 * H
            for t in range(T):
                z = phs + (t * N + blk.n0) * H
                c0 = 0
                while c0 < H:
                    c1 = min(c0 + chunk, H)
                    gemm(False, False, <int>blk.rows, <int>(c1 - c0), <int>H, <floating>1, h_prev, <int>H,
                         pWh + c0, <int>H, <floating>1, z + c0, <int>H)
                    if relu:
                        _add_bias_relu(z, bias, blk.rows, H, c0, c1)
                    else:
                        _add_bias_tanh(z, bias, blk.rows, H, c0, c1)
                    c0 = c1
                h_prev = z


def rnn_backward(const floating[:, ::1] dhs, const floating[:, ::1] x, const floating[:, ::1] h0 not None,
                 const floating[:, ::1] Wx, const floating[:, ::1] WhT, const floating[:, ::1] hs,
                 floating[:, ::1] dz, floating[:, ::1] dx, floating[:, ::1] dh0,
                 floating[:, ::1] dWx, floating[:, ::1] dWh, floating[::1] db,
                 Py_ssize_t N, int num_threads, bint relu=False):
    """Backward through time of rnn_forward (``relu`` as there).

    dhs, hs, dz (workspace) (T*N, H); x, dx (T*N, D); h0 (N, H); dh0 (N, H); dWx (D, H);
    dWh (H, H); db (H,). WhT is Wh transposed (C order): the products with Wh^T then have the
    same untransposed form as the forward's, which OpenBLAS runs on its small-matrix path (with
    a transposed operand it packs). Every output is overwritten. dWx, dWh and db sum over steps in a fixed
    order for a given thread count, so results are reproducible run to run."""
    single_threaded_blas()
    cdef Py_ssize_t TN = x.shape[0], D = x.shape[1], H = WhT.shape[0]
    cdef Py_ssize_t T = TN // N
    cdef const floating* h_init = &h0[0, 0]
    cdef const floating* px = &x[0, 0]
    cdef const floating* pWx = &Wx[0, 0]
    cdef const floating* pWhT = &WhT[0, 0]
    cdef const floating* phs = &hs[0, 0]
    cdef const floating* pdhs = &dhs[0, 0]
    cdef floating* pdz = &dz[0, 0]
    cdef floating* pdx = &dx[0, 0]
    cdef floating* pdh0 = &dh0[0, 0]
    cdef floating* pdWx = &dWx[0, 0]
    cdef floating* pdWh = &dWh[0, 0]
    cdef floating* pdb = &db[0]
    # Initialised only because Cython passes them into the team as firstprivate.
    cdef floating* g = NULL
    cdef const floating* h = NULL
    cdef Py_ssize_t t = 0, r = 0, j = 0, chunk = 0, k0 = 0, k1 = 0, r0 = 0, r1 = 0, n0 = 0, rows = 0, c0 = 0, c1 = 0
    cdef Blocks blk
    with nogil, parallel(num_threads=num_threads):
        blk = thread_blocks(TN, N, H)
        r0, r1, n0, rows, c0, c1 = blk.r0, blk.r1, blk.n0, blk.rows, blk.c0, blk.c1
        # dz[t] = (dhs[t] + dz[t+1] @ Wh^T) * (1 - hs[t]^2), from the last step back, for this
        # thread's sequences (contiguous rows t*N + n0 ...). relu's factor is (hs[t] > 0): its
        # output is positive exactly where its input was (0 at 0, as in PyTorch).
        if rows > 0:
            chunk = small_gemm_columns(rows, H)
            if chunk == 0:  # one packed GEMM per step
                chunk = H
            for t in range(T - 1, -1, -1):
                g = pdz + (t * N + n0) * H
                h = phs + (t * N + n0) * H
                memcpy(g, pdhs + (t * N + n0) * H, rows * H * sizeof(floating))
                k0 = 0
                while k0 < H:
                    k1 = min(k0 + chunk, H)
                    if t < T - 1:
                        gemm(False, False, <int>rows, <int>(k1 - k0), <int>H, <floating>1, g + N * H, <int>H,
                             pWhT + k0, <int>H, <floating>1, g + k0, <int>H)
                    for r in range(rows):
                        for j in range(k0, k1):
                            if relu:
                                g[r * H + j] = g[r * H + j] if h[r * H + j] > 0 else 0
                            else:
                                g[r * H + j] = g[r * H + j] * (1 - h[r * H + j] * h[r * H + j])
                    k0 = k1
        barrier()
        # From here dz is complete and only read. Weight gradients over all steps, by column
        # blocks: dWx = x^T dz, dWh = hs[:-1]^T dz[1:] + h0^T dz[0], db = column sums of dz
        # (rows added in order), dh0 = dz[0] @ Wh^T.
        if c1 > c0:
            gemm(True, False, <int>D, <int>(c1 - c0), <int>TN, <floating>1, px, <int>D,
                 pdz + c0, <int>H, <floating>0, pdWx + c0, <int>H)
            if T > 1:
                gemm(True, False, <int>H, <int>(c1 - c0), <int>(TN - N), <floating>1, phs, <int>H,
                     pdz + N * H + c0, <int>H, <floating>0, pdWh + c0, <int>H)
            else:
                for r in range(H):
                    memset(pdWh + r * H + c0, 0, (c1 - c0) * sizeof(floating))
            gemm(True, False, <int>H, <int>(c1 - c0), <int>N, <floating>1, h_init, <int>H,
                 pdz + c0, <int>H, <floating>1, pdWh + c0, <int>H)
            gemm(False, False, <int>N, <int>(c1 - c0), <int>H, <floating>1, pdz, <int>H,
                 pWhT + c0, <int>H, <floating>0, pdh0 + c0, <int>H)
            memset(pdb + c0, 0, (c1 - c0) * sizeof(floating))
            for r in range(TN):
                g = pdz + r * H
                for j in range(c0, c1):
                    pdb[j] = pdb[j] + g[j]
        # dx = dz @ Wx^T for all steps, by row blocks.
        if r1 > r0:
            gemm(False, True, <int>(r1 - r0), <int>D, <int>H, <floating>1, pdz + r0 * H, <int>H,
                 pWx, <int>H, <floating>0, pdx + r0 * D, <int>D)
