# Tanh or relu RNN over a time-major sequence, forward and backward through time, in one call
# each (rnn_step is the T = 1 case). Sequences arrive flattened to (T*N, features) rows, C order,
# validated by fastlayers.backends.cpu.rnn; the caller keeps BLAS single-threaded.
#
# Parallel plan: one OpenMP team for the whole call. float32 with packed weights (packed_gemm.h,
# where the C helpers have AVX2 or AVX-512) multiplies Wx, Wh and Wh^T packed once per call into
# buffers the caller gives (each thread an equal share of the panels, then a barrier), each
# step's x[t] @ Wx computed with its h @ Wh into the step's rows of hs, which stay in cache for
# the activation. Otherwise (float64, a single step, or no packed buffers) the input projection
# of every step is one product split by row blocks of the T*N rows, then a barrier, and the
# steps' products go through OpenBLAS's small-matrix path (column chunks; one packed GEMM when
# the chunks would be too narrow). The recurrences run by sequences: the sequences of a batch are
# independent, so each thread runs the whole recurrence (every step's GEMM, then tanh or its
# derivative fused on the rows it has just computed) for its own block of the batch, without
# synchronising with the others: no barrier per step, which also keeps a loaded machine (a
# thread descheduled at a barrier stalls the team) from multiplying the time, and no state
# written by one core and read by the other at every step (measured: docs/performance.md, "rnn:
# packed weights"). The backward then (one barrier) computes the weight gradients over each
# thread's row block of the T*N rows into partial sums, which each thread adds up on its column
# block of H after a second barrier, and dx by row blocks.
# Blocks come from the thread id, not from prange: Cython's prange adds a barrier of its own per
# loop.
from cython cimport floating
from cython.parallel cimport parallel
from libc.math cimport tanh
from libc.string cimport memcpy, memset

from _blas cimport gemm, single_threaded_blas
from _packed cimport FL_PANEL, pack_panels_f32, packed_product, panel_count
from _recurrent cimport (Blocks, barrier, block_start, block_stop, input_projection, small_gemm_columns, team_size,
                         thread_blocks, thread_id)


cdef extern from "rnn_cells.h" nogil:
    void _bias_tanh_f32 "fl_rnn_bias_tanh_f32"(float* z, const float* b, Py_ssize_t rows, Py_ssize_t ld,
                                               Py_ssize_t c0, Py_ssize_t c1)
    void _times_derivative_f32 "fl_rnn_times_derivative_f32"(float* g, const float* dh, const float* h,
                                                             Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t c0,
                                                             Py_ssize_t c1, int relu)
    void _times_derivative_f64 "fl_rnn_times_derivative_f64"(double* g, const double* dh, const double* h,
                                                             Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t c0,
                                                             Py_ssize_t c1, int relu)
    void _column_sums_f32 "fl_rnn_column_sums_f32"(const float* z, Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t c0,
                                                   Py_ssize_t c1, float* sums)
    void _column_sums_f64 "fl_rnn_column_sums_f64"(const double* z, Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t c0,
                                                   Py_ssize_t c1, double* sums)


PANEL = FL_PANEL


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


cdef inline void _activate(floating* z, const floating* b, Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t c0,
                           Py_ssize_t c1, bint relu) noexcept nogil:
    if relu:
        _add_bias_relu(z, b, rows, ld, c0, c1)
    else:
        _add_bias_tanh(z, b, rows, ld, c0, c1)


cdef inline void _times_derivative(floating* g, const floating* dh, const floating* h, Py_ssize_t rows,
                                   Py_ssize_t ld, Py_ssize_t c0, Py_ssize_t c1, bint relu) noexcept nogil:
    """g[r, c0:c1] = (g + dh)[r, c0:c1] (g alone when dh is NULL) times the nonlinearity's
    derivative at its output h (rnn_cells.h)."""
    if floating is float:
        _times_derivative_f32(g, dh, h, rows, ld, c0, c1, relu)
    else:
        _times_derivative_f64(g, dh, h, rows, ld, c0, c1, relu)


cdef inline void _column_sums(const floating* z, Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t c0, Py_ssize_t c1,
                              floating* sums) noexcept nogil:
    """sums[c0:c1] = the column sums of z's first rows, added in order (rnn_cells.h)."""
    if floating is float:
        _column_sums_f32(z, rows, ld, c0, c1, sums)
    else:
        _column_sums_f64(z, rows, ld, c0, c1, sums)


cdef float* _packed(float[::1] packed, Py_ssize_t K, Py_ssize_t width) except? NULL:
    """The pointer of a buffer (NULL for None) that a weight (K, width) is packed into, once its
    size is known to be the panels' (packed_gemm.h)."""
    if packed is None:
        return NULL
    if packed.shape[0] != panel_count(width) * FL_PANEL * K:
        raise ValueError(f"a packed weight has {packed.shape[0]} elements, expected ceil({width} / {FL_PANEL}) * "
                         f"{FL_PANEL} * {K}")
    return &packed[0]


cdef int _check_packed(bint is_float, bint given) except -1:
    """Packed buffers hold float32 panels: a float64 call gets none."""
    if given and not is_float:
        raise ValueError("packed weights are float32 only")
    return 0


cdef void _packed_forward(const float* x, const float* h0, const float* b, float* hs, const float* Wx,
                          const float* Wh, float* packed_x, float* packed, Py_ssize_t TN, Py_ssize_t N,
                          Py_ssize_t D, Py_ssize_t H, bint relu, bint avx512, int num_threads) noexcept nogil:
    """rnn_forward on packed weights, for the calling thread's block of the batch: per step
    hs[t] = x[t] @ Wx, then += h_prev @ Wh, then the activation. Each element is the same sum
    (x's products in the order of k, then h's) whichever thread computes it, so the states do not
    depend on the thread count."""
    cdef Py_ssize_t T = TN // N, panels = panel_count(H)
    # Initialised only because Cython passes them into the team as firstprivate.
    cdef const float* h_prev = NULL
    cdef float* z = NULL
    cdef Py_ssize_t t = 0, n0 = 0, rows = 0, p0 = 0, p1 = 0
    with parallel(num_threads=num_threads):
        n0 = block_start(thread_id(), team_size(), N, 1)
        rows = block_stop(thread_id(), team_size(), N, 1) - n0
        p0 = block_start(thread_id(), team_size(), panels, 1)
        p1 = block_stop(thread_id(), team_size(), panels, 1)
        pack_panels_f32(Wx, H, 0, D, H, packed_x, p0, p1)
        pack_panels_f32(Wh, H, 0, H, H, packed, p0, p1)
        barrier()
        h_prev = h0 + n0 * H
        if rows > 0:
            for t in range(T):
                z = hs + (t * N + n0) * H
                packed_product(x + (t * N + n0) * D, D, packed_x, D, z, H, rows, H, False, avx512)
                packed_product(h_prev, H, packed, H, z, H, rows, H, True, avx512)
                _activate(z, b, rows, H, 0, H, relu)
                h_prev = z


def rnn_forward(const floating[:, ::1] x, const floating[:, ::1] h0 not None, const floating[:, ::1] Wx,
                const floating[:, ::1] Wh, const floating[::1] b, floating[:, ::1] hs,
                Py_ssize_t N, int num_threads, bint relu=False, float[::1] packed_x=None, float[::1] packed=None,
                bint avx512=False):
    """hs[t] = tanh(x[t] @ Wx + hs[t-1] @ Wh + b) (max(., 0) with ``relu``), hs[-1] = h0.

    x (T*N, D), hs (T*N, H), h0 (N, H), b (H,) or None; T*N, D, H >= 1. ``packed_x``,
    ``packed``: both None, or (float32) buffers of ceil(H / PANEL) * PANEL * D and
    ... * H elements that the kernel packs Wx and Wh into and multiplies (packed_gemm.h, in its
    AVX-512 blocking with ``avx512``, else its AVX2 one)."""
    cdef float* panels_x = _packed(packed_x, x.shape[1], Wh.shape[0])
    cdef float* panels_h = _packed(packed, Wh.shape[0], Wh.shape[0])
    if (panels_x == NULL) != (panels_h == NULL):
        raise ValueError("packed_x and packed are given together or not at all")
    _check_packed(floating is float, panels_h != NULL)
    single_threaded_blas()
    cdef Py_ssize_t TN = x.shape[0], D = x.shape[1], H = Wh.shape[0]
    cdef Py_ssize_t T = TN // N
    cdef const floating* h_init = &h0[0, 0]
    cdef const floating* bias = &b[0] if b is not None else NULL
    cdef const floating* px = &x[0, 0]
    cdef const floating* pWx = &Wx[0, 0]
    cdef const floating* pWh = &Wh[0, 0]
    cdef floating* phs = &hs[0, 0]
    if floating is float:
        if panels_h != NULL:
            with nogil:
                _packed_forward(px, h_init, bias, phs, pWx, pWh, panels_x, panels_h, TN, N, D, H, relu, avx512,
                                num_threads)
            return
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
                    _activate(z, bias, blk.rows, H, c0, c1, relu)
                    c0 = c1
                h_prev = z


cdef void _packed_recurrence_backward(const float* dhs, const float* hs, const float* Wh, float* packed_t, float* dz,
                                      float* dh0, Py_ssize_t TN, Py_ssize_t N, Py_ssize_t H, bint relu,
                                      bint avx512) noexcept nogil:
    """Inside the team: rnn_backward's recurrence on Wh^T packed (each thread an equal share of
    the panels, then a barrier), dz[t] = (dhs[t] + dz[t+1] @ Wh^T) * f'(hs[t]) from the last step
    back and dh0 = dz[0] @ Wh^T, for the calling thread's block of the batch. Each element is the
    same sum whichever thread computes it."""
    cdef Py_ssize_t T = TN // N, t, row
    cdef Py_ssize_t n0 = block_start(thread_id(), team_size(), N, 1)
    cdef Py_ssize_t rows = block_stop(thread_id(), team_size(), N, 1) - n0
    pack_panels_f32(Wh, H, 1, H, H, packed_t, block_start(thread_id(), team_size(), panel_count(H), 1),
                    block_stop(thread_id(), team_size(), panel_count(H), 1))
    barrier()
    if rows == 0:
        return
    for t in range(T - 1, -1, -1):
        row = t * N + n0
        if t < T - 1:
            packed_product(dz + (row + N) * H, H, packed_t, H, dz + row * H, H, rows, H, False, avx512)
            _times_derivative(dz + row * H, dhs + row * H, hs + row * H, rows, H, 0, H, relu)
        else:
            memcpy(dz + row * H, dhs + row * H, rows * H * sizeof(float))
            _times_derivative(dz + row * H, NULL, hs + row * H, rows, H, 0, H, relu)
    packed_product(dz + n0 * H, H, packed_t, H, dh0 + n0 * H, H, rows, H, False, avx512)


cdef inline void _weight_gradients(const floating* x, const floating* h0, const floating* hs, const floating* dz,
                                   floating* dWx, floating* dWh, floating* partial, Blocks blk, Py_ssize_t TN,
                                   Py_ssize_t N, Py_ssize_t D, Py_ssize_t H) noexcept nogil:
    """Inside the team, after dz is complete: dWx = x^T dz and dWh = h_prev^T dz (h_prev of row
    t*N + n: h0[n] for t = 0, hs[(t-1)*N + n] after), each thread over its rows [r0, r1) of the
    T*N, thread 0 into dWx and dWh, thread i > 0 into the (D + H) x H block i - 1 of ``partial``
    (dWx's rows, then dWh's); then, after a barrier, each thread adds the blocks to its columns
    [c0, c1) in the order of i. Split by rows rather than by columns, every operand is read and
    packed (by OpenBLAS) by one thread only: by columns each thread packed all of x and hs. The
    sums are in a fixed order for a given thread count."""
    cdef Py_ssize_t tid = thread_id(), team = team_size(), split = min(max(blk.r0, N), blk.r1), i, r, j
    cdef floating* gx = dWx if tid == 0 else partial + (tid - 1) * (D + H) * H
    cdef floating* gh = dWh if tid == 0 else gx + D * H
    cdef const floating* p
    if blk.r1 > blk.r0:
        gemm(True, False, <int>D, <int>H, <int>(blk.r1 - blk.r0), <floating>1, x + blk.r0 * D, <int>D,
             dz + blk.r0 * H, <int>H, <floating>0, gx, <int>H)
        if split > blk.r0:
            gemm(True, False, <int>H, <int>H, <int>(split - blk.r0), <floating>1, h0 + blk.r0 * H, <int>H,
                 dz + blk.r0 * H, <int>H, <floating>0, gh, <int>H)
        if blk.r1 > split:
            gemm(True, False, <int>H, <int>H, <int>(blk.r1 - split), <floating>1, hs + (split - N) * H, <int>H,
                 dz + split * H, <int>H, <floating>1 if split > blk.r0 else <floating>0, gh, <int>H)
    else:
        memset(gx, 0, D * H * sizeof(floating))
        memset(gh, 0, H * H * sizeof(floating))
    barrier()
    for i in range(team - 1):
        p = partial + i * (D + H) * H
        for r in range(D + H):
            gx = (dWx + r * H) if r < D else (dWh + (r - D) * H)
            for j in range(blk.c0, blk.c1):
                gx[j] = gx[j] + p[r * H + j]


def rnn_backward(const floating[:, ::1] dhs, const floating[:, ::1] x, const floating[:, ::1] h0 not None,
                 const floating[:, ::1] Wx, const floating[:, ::1] Wh, const floating[:, ::1] WhT,
                 const floating[:, ::1] hs, floating[:, ::1] dz, floating[:, ::1] dx, floating[:, ::1] dh0,
                 floating[:, ::1] dWx, floating[:, ::1] dWh, floating[::1] db, floating[::1] partial,
                 Py_ssize_t N, int num_threads, bint relu=False, float[::1] packed_t=None, bint avx512=False):
    """Backward through time of rnn_forward (``relu`` as there).

    dhs, hs, dz (workspace) (T*N, H); x, dx (T*N, D); h0 (N, H); dh0 (N, H); dWx (D, H);
    dWh (H, H); db (H,); Wh (H, H); partial: a workspace of (num_threads - 1) * (D + H) * H
    elements (None for one thread), the other threads' shares of the weight gradients. The
    products with Wh^T (the per-step dz[t+1] @ Wh^T and dh0 = dz[0] @ Wh^T) multiply ``packed_t``, a (float32) buffer of ceil(H / PANEL) * PANEL * H
    elements the kernel packs Wh^T into (packed_gemm.h, ``avx512`` as for rnn_forward), or where
    that is None ``WhT``, Wh transposed (C order): they then have the same untransposed form as
    the forward's, which OpenBLAS runs on its small-matrix path (with a transposed operand it
    packs). WhT may be None when packed_t is given. Every output is overwritten. dWx, dWh and db
    sum over steps in a fixed order for a given thread count, so results are reproducible run to
    run; on packed_t, dz (so db) and dh0 are the same sums at any thread count."""
    cdef float* panels_t = _packed(packed_t, Wh.shape[0], Wh.shape[0])
    _check_packed(floating is float, panels_t != NULL)
    if WhT is None and panels_t == NULL:
        raise ValueError("the backward needs Wh^T (WhT) when it gets no packed copy (packed_t)")
    cdef Py_ssize_t partial_size = (max(num_threads, 1) - 1) * (x.shape[1] + Wh.shape[0]) * Wh.shape[0]
    if (0 if partial is None else partial.shape[0]) < partial_size:
        raise ValueError(f"partial holds {0 if partial is None else partial.shape[0]} elements, {num_threads} threads "
                         f"need (threads - 1) * (D + H) * H = {partial_size}")
    single_threaded_blas()
    cdef Py_ssize_t TN = x.shape[0], D = x.shape[1], H = Wh.shape[0]
    cdef Py_ssize_t T = TN // N
    cdef const floating* h_init = &h0[0, 0]
    cdef const floating* px = &x[0, 0]
    cdef const floating* pWx = &Wx[0, 0]
    cdef const floating* pWh = &Wh[0, 0]
    cdef const floating* pWhT = &WhT[0, 0] if WhT is not None else NULL
    cdef const floating* phs = &hs[0, 0]
    cdef const floating* pdhs = &dhs[0, 0]
    cdef floating* pdz = &dz[0, 0]
    cdef floating* pdx = &dx[0, 0]
    cdef floating* pdh0 = &dh0[0, 0]
    cdef floating* pdWx = &dWx[0, 0]
    cdef floating* pdWh = &dWh[0, 0]
    cdef floating* pdb = &db[0]
    cdef floating* ppart = &partial[0] if partial is not None and partial.shape[0] > 0 else NULL
    # Initialised only because Cython passes them into the team as firstprivate.
    cdef floating* g = NULL
    cdef const floating* h = NULL
    cdef Py_ssize_t t = 0, chunk = 0, k0 = 0, k1 = 0, r0 = 0, r1 = 0, n0 = 0, rows = 0, c0 = 0, c1 = 0
    cdef Blocks blk
    with nogil, parallel(num_threads=num_threads):
        blk = thread_blocks(TN, N, H)
        r0, r1, n0, rows, c0, c1 = blk.r0, blk.r1, blk.n0, blk.rows, blk.c0, blk.c1
        # dz[t] = (dhs[t] + dz[t+1] @ Wh^T) * (1 - hs[t]^2), from the last step back, for this
        # thread's sequences (contiguous rows t*N + n0 ...); relu's factor is (hs[t] > 0).
        if floating is float:
            if panels_t != NULL:
                _packed_recurrence_backward(pdhs, phs, pWh, panels_t, pdz, pdh0, TN, N, H, relu, avx512)
        if panels_t == NULL and rows > 0:
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
                    _times_derivative(g, NULL, h, rows, H, k0, k1, relu)
                    k0 = k1
        barrier()
        # From here dz is complete and only read.
        _weight_gradients(px, h_init, phs, pdz, pdWx, pdWh, ppart, blk, TN, N, D, H)
        if c1 > c0:
            if panels_t == NULL:
                gemm(False, False, <int>N, <int>(c1 - c0), <int>H, <floating>1, pdz, <int>H,
                     pWhT + c0, <int>H, <floating>0, pdh0 + c0, <int>H)
            _column_sums(pdz, TN, H, c0, c1, pdb)
        # dx = dz @ Wx^T for all steps, by row blocks.
        if r1 > r0:
            gemm(False, True, <int>(r1 - r0), <int>D, <int>H, <floating>1, pdz + r0 * H, <int>H,
                 pWx, <int>H, <floating>0, pdx + r0 * D, <int>D)
