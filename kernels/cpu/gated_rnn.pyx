# LSTM and GRU over a time-major sequence, forward and backward through time, one call each
# (a step is the T = 1 case). Sequences arrive flattened to (T*N, features) rows, C order,
# validated by fastlayers.backends.cpu.lstm and .gru; the caller keeps BLAS single-threaded. G*H is
# the width of the gate blocks (4H for the LSTM, 3H for the GRU), gates in PyTorch's order.
#
# Parallel plan: one OpenMP team per call. On packed weights (float32) the forward computes each
# step's input projection x[t] @ Wx with its h @ Wh, into rows that stay in cache for the cell;
# otherwise the projection of every step is one product split by row blocks of the T*N rows,
# and a barrier follows. The forward's recurrence (a step's products, then the gates fused on
# what they have just computed, in gated_cells.h) runs either
# by hidden units, when Wh is packed (float32) and the team's CPUs are free (by_units): each
# thread computes its units' columns of all gates for the whole batch and their cells, and the
# team meets once per step; or (rnn.pyx's
# plan) by sequences: each thread runs the whole recurrence of its own block of the batch, with
# no barrier per step. The backward runs by sequences. A forward that a
# backward will follow can keep its gates (the LSTM's activated (i, f, g, o), the GRU's (r, z,
# n, u_n)) in its pre-activations' rows: the backward then reads them. Without them, the backward
# recomputes them first (x @ Wx and h_prev @ Wh over all steps: two products, since all the
# states are known, then the activations). It runs the recurrence backwards, and after a second
# barrier computes the weight gradients by column blocks and dx by row blocks.
from cython cimport floating
from cython.parallel cimport parallel
from libc.string cimport memset

from _blas cimport gemm, single_threaded_blas
from _recurrent cimport (Blocks, barrier, block_start, block_stop, input_projection, step_product, team_size,
                         thread_blocks, thread_id)


cdef extern from "gated_cells.h" nogil:
    void lstm_cell_f32 "fl_lstm_cell_f32"(float* a, const float* u, const float* b, const float* c_prev,
                                          float* c, float* h, Py_ssize_t rows, Py_ssize_t H, Py_ssize_t j0,
                                          Py_ssize_t j1, Py_ssize_t ld, int keep)
    void lstm_cell_f64 "fl_lstm_cell_f64"(double* a, const double* u, const double* b, const double* c_prev,
                                          double* c, double* h, Py_ssize_t rows, Py_ssize_t H, Py_ssize_t j0,
                                          Py_ssize_t j1, Py_ssize_t ld, int keep)
    void lstm_activate_f32 "fl_lstm_activate_f32"(float* z, const float* b, Py_ssize_t rows, Py_ssize_t H,
                                                  Py_ssize_t ld)
    void lstm_activate_f64 "fl_lstm_activate_f64"(double* z, const double* b, Py_ssize_t rows, Py_ssize_t H,
                                                  Py_ssize_t ld)
    void lstm_cell_backward_f32 "fl_lstm_cell_backward_f32"(
        const float* gates, const float* c_prev, const float* c, const float* dhs, const float* dcs,
        const float* dh_next, float* dc_carry, float* dz, Py_ssize_t rows, Py_ssize_t H, Py_ssize_t ldg,
        Py_ssize_t ldz)
    void lstm_cell_backward_f64 "fl_lstm_cell_backward_f64"(
        const double* gates, const double* c_prev, const double* c, const double* dhs, const double* dcs,
        const double* dh_next, double* dc_carry, double* dz, Py_ssize_t rows, Py_ssize_t H, Py_ssize_t ldg,
        Py_ssize_t ldz)
    void gru_cell_f32 "fl_gru_cell_f32"(float* a, const float* u, const float* bx, const float* bh,
                                        const float* h_prev, float* h, Py_ssize_t rows, Py_ssize_t H, Py_ssize_t j0,
                                        Py_ssize_t j1, Py_ssize_t lda, Py_ssize_t ldu, int keep)
    void gru_cell_f64 "fl_gru_cell_f64"(double* a, const double* u, const double* bx, const double* bh,
                                        const double* h_prev, double* h, Py_ssize_t rows, Py_ssize_t H,
                                        Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t lda, Py_ssize_t ldu, int keep)
    void gru_activate_f32 "fl_gru_activate_f32"(float* a, const float* u, const float* bx, const float* bh,
                                                Py_ssize_t rows, Py_ssize_t H, Py_ssize_t lda, Py_ssize_t ldu)
    void gru_activate_f64 "fl_gru_activate_f64"(double* a, const double* u, const double* bx, const double* bh,
                                                Py_ssize_t rows, Py_ssize_t H, Py_ssize_t lda, Py_ssize_t ldu)
    void gru_cell_backward_f32 "fl_gru_cell_backward_f32"(
        const float* gates, const float* h_prev, const float* dhs, float* dh_carry, float* da, float* du,
        Py_ssize_t rows, Py_ssize_t H, Py_ssize_t ldg, Py_ssize_t ldd)
    void gru_cell_backward_f64 "fl_gru_cell_backward_f64"(
        const double* gates, const double* h_prev, const double* dhs, double* dh_carry, double* da, double* du,
        Py_ssize_t rows, Py_ssize_t H, Py_ssize_t ldg, Py_ssize_t ldd)


from _packed cimport FL_PANEL, pack_panels_f32, packed_gemm_avx2_f32, packed_gemm_f32

cdef extern from "packed_gemm.h" nogil:
    const char* clone_isa "fl_clone_isa"()


PANEL = FL_PANEL


def isa():
    """The instruction set the C helpers run with here (target_clones.h): "x86-64-v4", ..."""
    return clone_isa().decode()


cdef inline bint _packed_product(const floating* a, Py_ssize_t K, const float* packed, bint avx512, floating* c,
                                 Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t G, int accumulate=0) noexcept nogil:
    """c (rows x G) = a (rows x K) @ W (+ c with ``accumulate``) on W packed once (packed_gemm.h,
    float32, in its AVX-512 blocking or its AVX2 one), when it is given; False (nothing done)
    otherwise, for the caller's OpenBLAS path."""
    if floating is float:
        if packed != NULL:
            if avx512:
                packed_gemm_f32(a, K, packed, K, c, ldc, rows, G, accumulate)
            else:
                packed_gemm_avx2_f32(a, K, packed, K, c, ldc, rows, G, accumulate)
            return True
    return False


cdef inline void _lstm_cell(floating* a, const floating* u, const floating* b, const floating* c_prev,
                            floating* c, floating* h, Py_ssize_t rows, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                            Py_ssize_t ld, int keep) noexcept nogil:
    if floating is float:
        lstm_cell_f32(a, u, b, c_prev, c, h, rows, H, j0, j1, ld, keep)
    else:
        lstm_cell_f64(a, u, b, c_prev, c, h, rows, H, j0, j1, ld, keep)


cdef inline void _lstm_activate(floating* z, const floating* b, Py_ssize_t rows, Py_ssize_t H,
                                Py_ssize_t ld) noexcept nogil:
    if floating is float:
        lstm_activate_f32(z, b, rows, H, ld)
    else:
        lstm_activate_f64(z, b, rows, H, ld)


cdef inline void _lstm_cell_backward(const floating* gates, const floating* c_prev, const floating* c,
                                     const floating* dhs, const floating* dcs, const floating* dh_next,
                                     floating* dc_carry, floating* dz, Py_ssize_t rows, Py_ssize_t H, Py_ssize_t ldg,
                                     Py_ssize_t ldz) noexcept nogil:
    if floating is float:
        lstm_cell_backward_f32(gates, c_prev, c, dhs, dcs, dh_next, dc_carry, dz, rows, H, ldg, ldz)
    else:
        lstm_cell_backward_f64(gates, c_prev, c, dhs, dcs, dh_next, dc_carry, dz, rows, H, ldg, ldz)


cdef inline void _gru_cell(floating* a, const floating* u, const floating* bx, const floating* bh,
                           const floating* h_prev, floating* h, Py_ssize_t rows, Py_ssize_t H, Py_ssize_t j0,
                           Py_ssize_t j1, Py_ssize_t lda, Py_ssize_t ldu, int keep) noexcept nogil:
    if floating is float:
        gru_cell_f32(a, u, bx, bh, h_prev, h, rows, H, j0, j1, lda, ldu, keep)
    else:
        gru_cell_f64(a, u, bx, bh, h_prev, h, rows, H, j0, j1, lda, ldu, keep)


cdef inline void _gru_activate(floating* a, const floating* u, const floating* bx, const floating* bh,
                               Py_ssize_t rows, Py_ssize_t H, Py_ssize_t lda, Py_ssize_t ldu) noexcept nogil:
    if floating is float:
        gru_activate_f32(a, u, bx, bh, rows, H, lda, ldu)
    else:
        gru_activate_f64(a, u, bx, bh, rows, H, lda, ldu)


cdef inline void _gru_cell_backward(const floating* gates, const floating* h_prev, const floating* dhs,
                                    floating* dh_carry, floating* da, floating* du, Py_ssize_t rows, Py_ssize_t H,
                                    Py_ssize_t ldg, Py_ssize_t ldd) noexcept nogil:
    if floating is float:
        gru_cell_backward_f32(gates, h_prev, dhs, dh_carry, da, du, rows, H, ldg, ldd)
    else:
        gru_cell_backward_f64(gates, h_prev, dhs, dh_carry, da, du, rows, H, ldg, ldd)


cdef inline void _previous_state_product(const floating* h0, const floating* hs, const floating* Wh, floating* z,
                                         Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t N, Py_ssize_t H,
                                         Py_ssize_t width, Py_ssize_t ldz, floating beta) noexcept nogil:
    """Rows [r0, r1) of z (T*N x width, row stride ldz) = h_prev @ Wh + beta * z, where h_prev of
    row t*N + n is h0[n] for t = 0 and hs[(t-1)*N + n] after."""
    cdef Py_ssize_t split = min(max(r0, N), r1)
    if split > r0:
        gemm(False, False, <int>(split - r0), <int>width, <int>H, <floating>1, h0 + r0 * H, <int>H, Wh, <int>width,
             beta, z + r0 * ldz, <int>ldz)
    if r1 > split:
        gemm(False, False, <int>(r1 - split), <int>width, <int>H, <floating>1, hs + (split - N) * H, <int>H, Wh,
             <int>width, beta, z + split * ldz, <int>ldz)


cdef inline void _parameter_gradients(const floating* x, const floating* h0, const floating* hs,
                                      const floating* Wx, const floating* dx_side, const floating* dh_side,
                                      floating* dx, floating* dWx, floating* dWh, floating* dbx, floating* dbh,
                                      Blocks blk, Py_ssize_t TN, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
                                      Py_ssize_t width) noexcept nogil:
    """After the recurrence: this thread's columns of dWx = x^T dx_side, dWh = h_prev^T dh_side
    (h_prev as in _previous_state_product), dbx and dbh their column sums (rows added in order,
    so the result is reproducible; dbh skipped when NULL), and its rows of dx = dx_side @ Wx^T.
    dx_side and dh_side (T*N x width) are the gradients of the pre-activations on the x and the
    h side (the same array for the LSTM)."""
    cdef Py_ssize_t r, j, c0 = blk.c0, c1 = blk.c1
    cdef const floating* row
    if c1 > c0:
        gemm(True, False, <int>D, <int>(c1 - c0), <int>TN, <floating>1, x, <int>D, dx_side + c0, <int>width,
             <floating>0, dWx + c0, <int>width)
        if TN > N:
            gemm(True, False, <int>H, <int>(c1 - c0), <int>(TN - N), <floating>1, hs, <int>H,
                 dh_side + N * width + c0, <int>width, <floating>0, dWh + c0, <int>width)
        else:
            for r in range(H):
                memset(dWh + r * width + c0, 0, (c1 - c0) * sizeof(floating))
        gemm(True, False, <int>H, <int>(c1 - c0), <int>N, <floating>1, h0, <int>H, dh_side + c0, <int>width,
             <floating>1, dWh + c0, <int>width)
        memset(dbx + c0, 0, (c1 - c0) * sizeof(floating))
        for r in range(TN):
            row = dx_side + r * width
            for j in range(c0, c1):
                dbx[j] = dbx[j] + row[j]
        if dbh != NULL:
            memset(dbh + c0, 0, (c1 - c0) * sizeof(floating))
            for r in range(TN):
                row = dh_side + r * width
                for j in range(c0, c1):
                    dbh[j] = dbh[j] + row[j]
    if blk.r1 > blk.r0:
        gemm(False, True, <int>(blk.r1 - blk.r0), <int>D, <int>width, <floating>1, dx_side + blk.r0 * width,
             <int>width, Wx, <int>width, <floating>0, dx + blk.r0 * D, <int>D)


cdef float* _packed(float[::1] packed, Py_ssize_t K, Py_ssize_t G, Py_ssize_t blocks=1) except? NULL:
    """The pointer of the buffer (NULL for None) a weight (K, G) is packed into in panels, once
    its size is known to be the panels': of its ``blocks`` column blocks (the gates) in turn, each
    in whole panels."""
    if packed is None:
        return NULL
    if packed.shape[0] != blocks * ((G // blocks + FL_PANEL - 1) // FL_PANEL) * FL_PANEL * K:
        raise ValueError(f"a packed weight has {packed.shape[0]} elements, expected {blocks} * "
                         f"ceil({G // blocks} / {FL_PANEL}) * {FL_PANEL} * {K}")
    return &packed[0]


cdef int _check_forward(float* packed_x, float* packed, Py_ssize_t a_rows, Py_ssize_t TN, Py_ssize_t N,
                        bint keep) except -1:
    """Packed weights come both or neither, and the pre-activations a hold the rows the forward
    writes (_forward: T*N, or the step's N on packed weights unless ``keep``)."""
    cdef Py_ssize_t needed = TN if keep or packed_x == NULL else N
    if (packed_x == NULL) != (packed == NULL):
        raise ValueError("packed_x and packed are given together or not at all")
    if a_rows < needed:
        raise ValueError(f"a has {a_rows} rows, this forward writes {needed}")
    return 0


cdef const floating* _transposed(const floating[:, ::1] WhT, const float* packed) except? NULL:
    """The pointer of the backward's Wh^T (NULL for None), which must be given when its packed
    copy is not."""
    if WhT is None:
        if packed == NULL:
            raise ValueError("the backward needs Wh^T (WhT) when it gets no packed copy (packed_t)")
        return NULL
    return &WhT[0, 0]


cdef inline void _gate_columns_product(const floating* h, Py_ssize_t K, const float* packed, bint avx512,
                                       floating* u, Py_ssize_t ldu, Py_ssize_t rows, Py_ssize_t G, Py_ssize_t H,
                                       Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """Columns g*H + [j0, j1) of u (rows x G) = h (rows x K) @ W for every gate block g, W (K x G)
    packed gate by gate (each block in whole panels, see _packed's ``blocks``); j0 a multiple of
    FL_PANEL."""
    cdef Py_ssize_t g, panels = (H + FL_PANEL - 1) // FL_PANEL
    if floating is float:
        for g in range(G // H):
            if avx512:
                packed_gemm_f32(h, K, packed + (g * panels + j0 // FL_PANEL) * K * FL_PANEL, K, u + g * H + j0, ldu,
                                rows, j1 - j0, 0)
            else:
                packed_gemm_avx2_f32(h, K, packed + (g * panels + j0 // FL_PANEL) * K * FL_PANEL, K,
                                     u + g * H + j0, ldu, rows, j1 - j0, 0)


cdef inline void _pack_gates(const floating* W, Py_ssize_t ldw, Py_ssize_t K, Py_ssize_t G, Py_ssize_t H,
                             float* packed, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """Panels [p0, p1) of every gate block of W (K x G, rows ldw apart) packed gate by gate, each
    block in whole panels (the layout _packed checks), float32."""
    cdef Py_ssize_t g, panels = (H + FL_PANEL - 1) // FL_PANEL
    if floating is float:
        for g in range(G // H):
            pack_panels_f32(W + g * H, ldw, 0, K, H, packed + g * panels * K * FL_PANEL, p0, p1)


cdef inline void _pack_transpose(const floating* Wh, Py_ssize_t G, Py_ssize_t H, float* packed) noexcept nogil:
    """This thread's share of the panels of Wh^T (G x H; Wh (H x G) in C order) packed into
    ``packed`` (float32; nothing when NULL), inside the team, before a barrier."""
    cdef Py_ssize_t panels = (H + FL_PANEL - 1) // FL_PANEL
    if floating is float:
        if packed != NULL:
            pack_panels_f32(Wh, G, 1, G, H, packed, block_start(thread_id(), team_size(), panels, 1),
                            block_stop(thread_id(), team_size(), panels, 1))


cdef void _forward(const floating* x, const floating* Wx, const floating* Wh, const floating* h0, const floating* c0,
                   const floating* bx, const floating* bh, floating* hs, floating* cs, floating* a, floating* u,
                   Py_ssize_t TN, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H, Py_ssize_t G, Py_ssize_t ldw,
                   Py_ssize_t lda, Py_ssize_t ldu, int keep, float* packed_x, float* packed,
                   bint avx512, bint by_units, int num_threads) noexcept nogil:
    """The LSTM forward (c0 and cs given) or the GRU's (c0 = cs = NULL, bh given): per step
    a = x[t] @ Wx, u = h_prev @ Wh (beta = 0: a buffer that stays in cache; accumulating into a
    instead reads it back from memory at every step) and the cell, which overwrites a's rows
    with the gates when ``keep``. Wx, Wh, a and u have rows ldw, lda, ldu >= G apart (see
    fastlayers.backends.cpu._gated; lda >= 4H when keep); ``packed_x``, ``packed``: buffers
    (float32, given together) the team packs Wx and Wh into, gate by gate for packed_gemm.h,
    and multiplies, or NULL; ``avx512``: their blocking. On packed weights a step's x[t] @ Wx
    is computed with its h @ Wh, by the same thread and for the same columns, so a holds N rows
    (the step's, written again at every step) unless ``keep`` (all T*N, the gates); without,
    a = x @ Wx of all steps comes first, one product split by rows, and a holds T*N rows.

    The steps split two ways. With ``packed`` and ``by_units``, by columns: each thread owns a
    block of the hidden
    units (whole panels) and computes, for the whole batch, the columns of u of its units' gates
    (reading only its part of Wh, which stays in its core's cache from step to step), then the
    cell of its units; the team meets once per step, as the next step reads all of h. Otherwise
    by rows: each thread runs the recurrence of its own block of the batch (on the packed Wh, or
    OpenBLAS's small-matrix path), with no barrier per step. Either way each element is the same sum, in the order
    of k, whatever the thread count. Each thread packs the panels it multiplies when it owns
    units, or an equal share of them before a barrier when all threads read all of them."""
    cdef Py_ssize_t T = TN // N, panels = (H + FL_PANEL - 1) // FL_PANEL
    cdef bint units = packed != NULL and by_units
    cdef bint all_rows = keep or packed_x == NULL  # a holds every step's rows, not only the current step's
    # Initialised only because Cython passes them into the team as firstprivate.
    cdef const floating* h_prev = NULL
    cdef const floating* c_prev = NULL
    cdef floating* ut = NULL
    cdef floating* at = NULL
    cdef Py_ssize_t t = 0, row = 0, j0 = 0, j1 = 0, n0 = 0, rows = 0
    cdef Blocks blk
    with parallel(num_threads=num_threads):
        blk = thread_blocks(TN, N, G)
        if units:
            j0 = block_start(thread_id(), team_size(), H, FL_PANEL)
            j1 = block_stop(thread_id(), team_size(), H, FL_PANEL)
            n0 = 0
            rows = N
        else:
            j0 = 0
            j1 = H
            n0 = blk.n0
            rows = blk.rows
        if packed_x == NULL:
            if blk.r1 > blk.r0:
                input_projection(x + blk.r0 * D, Wx, ldw, a + blk.r0 * lda, lda, blk.r1 - blk.r0, D, G)
            barrier()
        elif units:
            if j1 > j0:
                _pack_gates(Wx, ldw, D, G, H, packed_x, j0 // FL_PANEL, (j1 + FL_PANEL - 1) // FL_PANEL)
                _pack_gates(Wh, ldw, H, G, H, packed, j0 // FL_PANEL, (j1 + FL_PANEL - 1) // FL_PANEL)
        else:
            _pack_gates(Wx, ldw, D, G, H, packed_x, block_start(thread_id(), team_size(), panels, 1),
                        block_stop(thread_id(), team_size(), panels, 1))
            _pack_gates(Wh, ldw, H, G, H, packed, block_start(thread_id(), team_size(), panels, 1),
                        block_stop(thread_id(), team_size(), panels, 1))
            barrier()
        h_prev = h0 + n0 * H
        c_prev = c0 + n0 * H if c0 != NULL else NULL
        ut = u + n0 * ldu
        for t in range(T):
            row = t * N + n0
            at = a + (row if all_rows else n0) * lda
            if rows > 0 and j1 > j0:
                if packed != NULL:
                    _gate_columns_product(x + row * D, D, packed_x, avx512, at, lda, rows, G, H, j0, j1)
                    _gate_columns_product(h_prev, H, packed, avx512, ut, ldu, rows, G, H, j0, j1)
                else:
                    step_product(h_prev, Wh, ldw, ut, ldu, rows, H, G, <floating>0)
                if cs != NULL:
                    _lstm_cell(at, ut, bx, c_prev, cs + row * H, hs + row * H, rows, H, j0, j1, lda, keep)
                else:
                    _gru_cell(at, ut, bx, bh, h_prev, hs + row * H, rows, H, j0, j1, lda, ldu, keep)
            if units:
                barrier()
            c_prev = cs + row * H if cs != NULL else NULL
            h_prev = hs + row * H


def lstm_forward(const floating[:, ::1] x, const floating[:, ::1] h0 not None, const floating[:, ::1] c0 not None,
                 const floating[:, ::1] Wx, const floating[:, ::1] Wh, const floating[::1] b not None,
                 floating[:, ::1] hs, floating[:, ::1] cs, floating[:, ::1] a, floating[:, ::1] u, Py_ssize_t N,
                 bint keep, float[::1] packed_x, float[::1] packed, bint avx512, bint by_units,
                 int num_threads):
    """cs[t] = f cs[t-1] + i g, hs[t] = o tanh(cs[t]) with (i, f, g, o) the activated
    x[t] @ Wx + hs[t-1] @ Wh + b; hs[-1] = h0, cs[-1] = c0. With ``keep``, a's rows end holding
    the gates (i, f, g, o) (the backward's saved gates).

    x (T*N, D), hs, cs (T*N, H), h0, c0 (N, H), b (4H,); Wx (D, ldw), Wh (H, ldw) and the
    workspaces a (T*N rows, or N on packed weights without ``keep``, lda), u (N, ldu) hold 4H
    columns in rows at least 4H long; T*N, D, H >= 1. ``packed_x``, ``packed``: both None, or
    (float32) buffers the kernel packs Wx and Wh into, gate by gate in panels (packed_gemm.h),
    each gate's H columns in whole panels, 4 * ceil(H / PANEL) * D * PANEL and
    4 * ceil(H / PANEL) * H * PANEL elements; ``avx512``: multiply them in packed_gemm.h's
    AVX-512 blocking (else its AVX2 one; either is correct on any CPU); ``by_units``: with them,
    split each step among the threads by hidden units (a barrier per step) rather than by
    sequences (see _forward)."""
    single_threaded_blas()
    cdef float* px = _packed(packed_x, x.shape[1], b.shape[0], 4)
    cdef float* pp = _packed(packed, Wh.shape[0], b.shape[0], 4)
    _check_forward(px, pp, a.shape[0], x.shape[0], N, keep)
    with nogil:
        _forward(&x[0, 0], &Wx[0, 0], &Wh[0, 0], &h0[0, 0], &c0[0, 0], &b[0], NULL, &hs[0, 0], &cs[0, 0], &a[0, 0],
                 &u[0, 0], x.shape[0], N, x.shape[1], h0.shape[1], b.shape[0], Wh.shape[1], a.shape[1], u.shape[1],
                 keep, px, pp, avx512, by_units, num_threads)


def lstm_backward(const floating[:, ::1] dhs, const floating[:, ::1] dcs, const floating[:, ::1] x,
                  const floating[:, ::1] h0 not None, const floating[:, ::1] c0 not None,
                  const floating[:, ::1] Wx, const floating[:, ::1] Wh, const floating[:, ::1] WhT,
                  const floating[::1] b not None, const floating[:, ::1] hs, const floating[:, ::1] cs,
                  const floating[:, ::1] gates, bint recompute, floating[:, ::1] dz, floating[:, ::1] dx,
                  floating[:, ::1] dh0, floating[:, ::1] dc0, floating[:, ::1] dWx, floating[:, ::1] dWh,
                  floating[::1] db, float[::1] packed_t, bint avx512, Py_ssize_t N, int num_threads):
    """Backward through time of lstm_forward.

    dhs, hs, cs (T*N, H), dcs the same or None (zeros); x, dx (T*N, D); h0, c0, dh0, dc0 (N, H);
    Wx, dWx (D, 4H); Wh, dWh (H, 4H); b, db (4H,); gates (T*N, ldg >= 4H): the forward's kept
    gates, read only, or with ``recompute`` a workspace the gates are recomputed into; dz
    (T*N, 4H) a workspace. The per-step dz @ Wh^T multiplies ``packed_t``, a (float32) buffer the
    kernel packs Wh^T into in panels (packed_gemm.h, in the AVX-512 blocking with ``avx512``;
    Wh is then read in C order, rows 4H long), or where that is None
    ``WhT``, Wh^T in C order (4H, H) in rows at least H long (the untransposed form OpenBLAS runs
    on its small-matrix path); WhT may be None when packed_t is given. Every output is
    overwritten; dWx, dWh and db sum over steps in a fixed order for a given thread count, so
    results are reproducible run to run."""
    single_threaded_blas()
    cdef float* pt = _packed(packed_t, Wh.shape[1], Wh.shape[0])
    cdef const floating* pwt = _transposed(WhT, pt)
    cdef Py_ssize_t ldwt = WhT.shape[1] if pwt != NULL else 0
    cdef Py_ssize_t TN = x.shape[0], D = x.shape[1], H = Wh.shape[0], G = Wh.shape[1], ldg = gates.shape[1]
    cdef Py_ssize_t T = TN // N
    cdef const floating* ph0 = &h0[0, 0]
    cdef const floating* pc0 = &c0[0, 0]
    cdef const floating* phs = &hs[0, 0]
    cdef const floating* pcs = &cs[0, 0]
    cdef const floating* pdhs = &dhs[0, 0]
    cdef const floating* pdcs = &dcs[0, 0] if dcs is not None else NULL
    cdef floating* pg = <floating*>&gates[0, 0]  # written only with recompute (then writable)
    cdef floating* pdz = &dz[0, 0]
    cdef floating* pdh = NULL  # this thread's rows of dh0 and dc0, which carry dh and dc
    cdef floating* pdc = NULL
    # Initialised only because Cython passes them into the team as firstprivate.
    cdef floating* zt = NULL
    cdef const floating* c_prev = NULL
    cdef Py_ssize_t t = 0, row = 0
    cdef Blocks blk
    with nogil, parallel(num_threads=num_threads):
        blk = thread_blocks(TN, N, G)
        if recompute and blk.r1 > blk.r0:
            input_projection(&x[0, 0] + blk.r0 * D, &Wx[0, 0], G, pg + blk.r0 * ldg, ldg, blk.r1 - blk.r0, D, G)
            _previous_state_product(ph0, phs, &Wh[0, 0], pg, blk.r0, blk.r1, N, H, G, ldg, <floating>1)
            _lstm_activate(pg + blk.r0 * ldg, &b[0], blk.r1 - blk.r0, H, ldg)
        _pack_transpose(&Wh[0, 0], G, H, pt)
        barrier()
        # From the last step back, for this thread's sequences: dz[t] from dhs[t], dcs[t] and the
        # carries dh (= dz[t+1] @ Wh^T) and dc.
        if blk.rows > 0:
            pdh = &dh0[0, 0] + blk.n0 * H
            pdc = &dc0[0, 0] + blk.n0 * H
            memset(pdh, 0, blk.rows * H * sizeof(floating))
            memset(pdc, 0, blk.rows * H * sizeof(floating))
            for t in range(T - 1, -1, -1):
                row = t * N + blk.n0
                zt = pdz + row * G
                c_prev = pc0 + blk.n0 * H if t == 0 else pcs + (row - N) * H
                _lstm_cell_backward(pg + row * ldg, c_prev, pcs + row * H, pdhs + row * H,
                                    pdcs + row * H if pdcs != NULL else NULL, pdh, pdc, zt, blk.rows, H, ldg, G)
                if not _packed_product(zt, G, pt, avx512, pdh, H, blk.rows, H):
                    step_product(zt, pwt, ldwt, pdh, H, blk.rows, G, H, <floating>0)
        barrier()
        _parameter_gradients(&x[0, 0], ph0, phs, &Wx[0, 0], pdz, pdz, &dx[0, 0], &dWx[0, 0], &dWh[0, 0], &db[0],
                             NULL, blk, TN, N, D, H, G)


def gru_forward(const floating[:, ::1] x, const floating[:, ::1] h0 not None, const floating[:, ::1] Wx,
                const floating[:, ::1] Wh, const floating[::1] bx not None, const floating[::1] bh not None,
                floating[:, ::1] hs, floating[:, ::1] a, floating[:, ::1] u, Py_ssize_t N, bint keep,
                float[::1] packed_x, float[::1] packed, bint avx512, bint by_units, int num_threads):
    """hs[t] = n + z (hs[t-1] - n) with r, z, n the GRU gates of a[t] = x[t] @ Wx + bx and
    u = hs[t-1] @ Wh + bh; hs[-1] = h0. With ``keep``, a's rows end holding the gates (r, z, n,
    u_n) (the backward's saved gates).

    x (T*N, D), hs (T*N, H), h0 (N, H), bx, bh (3H,); Wx (D, ldw), Wh (H, ldw) and the
    workspaces a (rows as for lstm_forward, lda), u (N, ldu) hold 3H columns in rows at least 3H
    long (a: 4H with ``keep``); T*N, D, H >= 1. ``packed_x``, ``packed``, ``by_units`` as for
    lstm_forward (3 gates)."""
    single_threaded_blas()
    cdef float* px = _packed(packed_x, x.shape[1], bx.shape[0], 3)
    cdef float* pp = _packed(packed, Wh.shape[0], bx.shape[0], 3)
    _check_forward(px, pp, a.shape[0], x.shape[0], N, keep)
    with nogil:
        _forward(&x[0, 0], &Wx[0, 0], &Wh[0, 0], &h0[0, 0], NULL, &bx[0], &bh[0], &hs[0, 0], NULL, &a[0, 0],
                 &u[0, 0], x.shape[0], N, x.shape[1], h0.shape[1], bx.shape[0], Wh.shape[1], a.shape[1],
                 u.shape[1], keep, px, pp, avx512, by_units, num_threads)


def gru_backward(const floating[:, ::1] dhs, const floating[:, ::1] x, const floating[:, ::1] h0 not None,
                 const floating[:, ::1] Wx, const floating[:, ::1] Wh, const floating[:, ::1] WhT,
                 const floating[::1] bx not None, const floating[::1] bh not None, const floating[:, ::1] hs,
                 const floating[:, ::1] gates, bint recompute, floating[:, ::1] da, floating[:, ::1] du,
                 floating[:, ::1] dx, floating[:, ::1] dh0, floating[:, ::1] dWx, floating[:, ::1] dWh,
                 floating[::1] dbx, floating[::1] dbh, float[::1] packed_t, bint avx512, Py_ssize_t N,
                 int num_threads):
    """Backward through time of gru_forward.

    dhs, hs (T*N, H); x, dx (T*N, D); h0, dh0 (N, H); Wx, dWx (D, 3H); Wh, dWh (H, 3H);
    WhT (3H, H) or None, ``packed_t`` and ``avx512`` as for lstm_backward; bx, bh, dbx, dbh
    (3H,); gates (T*N, ldg >= 4H): the forward's kept gates, read only, or with ``recompute`` a
    workspace the gates are recomputed into; workspaces da, du (T*N, 3H). Every output is
    overwritten, in a fixed order for a given thread count."""
    single_threaded_blas()
    cdef float* pt = _packed(packed_t, Wh.shape[1], Wh.shape[0])
    cdef const floating* pwt = _transposed(WhT, pt)
    cdef Py_ssize_t ldwt = WhT.shape[1] if pwt != NULL else 0
    cdef Py_ssize_t TN = x.shape[0], D = x.shape[1], H = Wh.shape[0], G = Wh.shape[1], ldg = gates.shape[1]
    cdef Py_ssize_t T = TN // N
    cdef const floating* ph0 = &h0[0, 0]
    cdef const floating* phs = &hs[0, 0]
    cdef const floating* pdhs = &dhs[0, 0]
    cdef floating* pg = <floating*>&gates[0, 0]  # written only with recompute (then writable)
    cdef floating* pda = &da[0, 0]
    cdef floating* pdu = &du[0, 0]
    cdef floating* pdh = NULL  # this thread's rows of dh0, which carry dh
    # Initialised only because Cython passes them into the team as firstprivate.
    cdef const floating* h_prev = NULL
    cdef Py_ssize_t t = 0, row = 0
    cdef Blocks blk
    with nogil, parallel(num_threads=num_threads):
        blk = thread_blocks(TN, N, G)
        if recompute and blk.r1 > blk.r0:
            # a = x @ Wx into the gates' rows, u = h_prev @ Wh into du (free until the recurrence),
            # which the activation turns into the gates.
            input_projection(&x[0, 0] + blk.r0 * D, &Wx[0, 0], G, pg + blk.r0 * ldg, ldg, blk.r1 - blk.r0, D, G)
            _previous_state_product(ph0, phs, &Wh[0, 0], pdu, blk.r0, blk.r1, N, H, G, G, <floating>0)
            _gru_activate(pg + blk.r0 * ldg, pdu + blk.r0 * G, &bx[0], &bh[0], blk.r1 - blk.r0, H, ldg, G)
        _pack_transpose(&Wh[0, 0], G, H, pt)
        barrier()
        # From the last step back: the carry dL/dh_prev = dh z + du[t] @ Wh^T.
        if blk.rows > 0:
            pdh = &dh0[0, 0] + blk.n0 * H
            memset(pdh, 0, blk.rows * H * sizeof(floating))
            for t in range(T - 1, -1, -1):
                row = t * N + blk.n0
                h_prev = ph0 + blk.n0 * H if t == 0 else phs + (row - N) * H
                _gru_cell_backward(pg + row * ldg, h_prev, pdhs + row * H, pdh, pda + row * G, pdu + row * G,
                                   blk.rows, H, ldg, G)
                if not _packed_product(pdu + row * G, G, pt, avx512, pdh, H, blk.rows, H, 1):
                    step_product(pdu + row * G, pwt, ldwt, pdh, H, blk.rows, G, H, <floating>1)
        barrier()
        _parameter_gradients(&x[0, 0], ph0, phs, &Wx[0, 0], pda, pdu, &dx[0, 0], &dWx[0, 0], &dWh[0, 0], &dbx[0],
                             &dbh[0], blk, TN, N, D, H, G)
