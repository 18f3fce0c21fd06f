# conv2d forward by Winograd's F(4x4, 3x3) over NCHW: for 3x3 kernels at stride 1 and dilation 1.
#
# The work is cut into tasks of one group, a block of ``rows`` consecutive tile rows (4 output
# rows each) of the batch, which may span images (small planes have few tiles; the GEMMs want
# P = rows x tiles_w of them), and a block of ``filters`` of the group's filters (all of them but
# on calls with too few tile rows to give every thread a task: a batch-1 small plane). A task
# transforms its input tiles into V (36, P, Cg), multiplies each of the 36 transformed positions
# by its filters' transformed filters U[xi] (Cg x filters) in one single-threaded BLAS gemm
# (M[xi] = V[xi] @ U[xi], tile-major as V, so that the transforms take channels and filters in
# a vector's lanes) and transforms M back into its band of y; the transforms are in
# winograd_f4x3.h. Tasks of one tile block and different filters each transform its input. V
# and M live in the calling thread's slice of the workspace, sized by the Python wrapper
# (backends/cpu/conv2d.py) to stay in cache. The band height does not
# depend on the thread count, and every output is written by one task: y is the same bit for bit
# at any thread count.
#
# Bounds: every size comes from the conv2d spec (fastlayers.ops.conv2d); the wrapper checks the
# arrays' shapes against it and that the gemm sizes fit a C int.
from cython cimport floating
from cython.parallel cimport prange, threadid

from _blas cimport gemm, single_threaded_blas
from _conv2d cimport Conv2dShape, conv2d_shape

cdef extern from "batch_norm_loops.h" nogil:
    double fl_bn_sum_float(const float* x, Py_ssize_t n, double shift, int square)
    double fl_bn_sum_double(const double* x, Py_ssize_t n, double shift, int square)

cdef extern from "winograd_f4x3.h" nogil:
    Py_ssize_t fl_wino_scratch(Py_ssize_t rows, Py_ssize_t tiles_w)
    Py_ssize_t FL_WINO_CHANNEL_LANES
    Py_ssize_t FL_WINO_FILTER_LANES
    void fl_wino_filter_float(const float* w, Py_ssize_t ld, Py_ssize_t nf, float* U, Py_ssize_t plane, int flip)
    void fl_wino_filter_double(const double* w, Py_ssize_t ld, Py_ssize_t nf, double* U, Py_ssize_t plane,
                               int flip)
    void fl_wino_filter_grad_float(const float* dU, Py_ssize_t runs, Py_ssize_t stride, Py_ssize_t plane,
                                   Py_ssize_t Cg, float* dw)
    void fl_wino_filter_grad_double(const double* dU, Py_ssize_t runs, Py_ssize_t stride, Py_ssize_t plane,
                                    Py_ssize_t Cg, double* dw)
    void fl_wino_input_float(const float* x, Py_ssize_t image, Py_ssize_t readable, float* V, Py_ssize_t ldv,
                             float* scratch, Py_ssize_t Cg, Py_ssize_t H, Py_ssize_t W, Py_ssize_t first,
                             Py_ssize_t rows, Py_ssize_t tiles_h, Py_ssize_t tiles_w, Py_ssize_t PT, Py_ssize_t PL)
    void fl_wino_input_double(const double* x, Py_ssize_t image, Py_ssize_t readable, double* V, Py_ssize_t ldv,
                              double* scratch, Py_ssize_t Cg, Py_ssize_t H, Py_ssize_t W, Py_ssize_t first,
                              Py_ssize_t rows, Py_ssize_t tiles_h, Py_ssize_t tiles_w, Py_ssize_t PT, Py_ssize_t PL)
    void fl_wino_output_float(const float* M, Py_ssize_t P, Py_ssize_t ldm, float* y, Py_ssize_t image,
                              const float* bias, Py_ssize_t nf, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t first,
                              Py_ssize_t rows, Py_ssize_t tiles_h, Py_ssize_t tiles_w, int pool, int relu)
    void fl_wino_output_double(const double* M, Py_ssize_t P, Py_ssize_t ldm, double* y, Py_ssize_t image,
                               const double* bias, Py_ssize_t nf, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t first,
                               Py_ssize_t rows, Py_ssize_t tiles_h, Py_ssize_t tiles_w, int pool, int relu)
    void fl_wino_grad_output_float(const float* dy, Py_ssize_t image, float* dM, Py_ssize_t P, float* scratch,
                                   Py_ssize_t Fg, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t first, Py_ssize_t rows,
                                   Py_ssize_t tiles_h, Py_ssize_t tiles_w)
    void fl_wino_grad_output_double(const double* dy, Py_ssize_t image, double* dM, Py_ssize_t P, double* scratch,
                                    Py_ssize_t Fg, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t first, Py_ssize_t rows,
                                    Py_ssize_t tiles_h, Py_ssize_t tiles_w)

cdef enum:
    POSITIONS = 36  # of a 6x6 transformed tile
    TILE = 4  # output rows and columns of a tile

TILE_SIZE = TILE


cdef inline Py_ssize_t _lanes_padded(Py_ssize_t n) noexcept nogil:
    """The length of V's and M's rows for n channels or filters: whole vectors of the transforms."""
    return (n + FL_WINO_CHANNEL_LANES - 1) // FL_WINO_CHANNEL_LANES * FL_WINO_CHANNEL_LANES


def workspace_size(Py_ssize_t Cg, Py_ssize_t Fg, Py_ssize_t rows, Py_ssize_t tiles_w):
    """Values of one thread's workspace: V, M and the transforms' scratch, for tasks of ``Fg``
    filters."""
    return POSITIONS * (_lanes_padded(Cg) + _lanes_padded(Fg)) * rows * tiles_w + fl_wino_scratch(rows, tiles_w)


def transform_filters(const floating[:, :, :, ::1] w, floating[:, :, :, ::1] U, Py_ssize_t groups,
                      int num_threads, bint flipped=False):
    """U (groups, 36, Cg, Fg) = G w[f, c] G^T for the filters w (F, Cg, 3, 3), F = groups * Fg:
    computed in double and rounded once to w's type: a task a channel of a group, its filters in
    blocks of FL_WINO_FILTER_LANES, so that each of U's rows is written in order by one task
    (tasks of filter blocks over all channels wrote each row in as many visits as blocks, several
    times slower on wide layers: docs/performance.md). ``flipped``: the data gradient's filters
    instead, U (groups, 36, Fg, Cg) = G w[f, c] rotated 180 degrees G^T (dy's Fg channels in,
    dx's Cg out), read from w in place."""
    cdef Py_ssize_t F = w.shape[0], Fg = F // groups, Cg = w.shape[1], task, gi, t, q, lane
    # A task's channel and its filters (the lanes): (c, f) of the forward's filters, (f, c) flipped.
    cdef Py_ssize_t channels = Fg if flipped else Cg, lanes = Cg if flipped else Fg
    cdef Py_ssize_t blocks = (lanes + FL_WINO_FILTER_LANES - 1) // FL_WINO_FILTER_LANES
    cdef Py_ssize_t ld = 9 if flipped else Cg * 9
    cdef const floating* first
    if w.shape[2] != 3 or w.shape[3] != 3 or F % groups:
        raise ValueError(f"w must be (groups * Fg, Cg, 3, 3) filters, got {w.shape[0]}x{w.shape[1]}x{w.shape[2]}x"
                         f"{w.shape[3]} for {groups} groups")
    if U.shape[0] != groups or U.shape[1] != POSITIONS or U.shape[2] != channels or U.shape[3] != lanes:
        raise ValueError(f"U must be ({groups}, {POSITIONS}, {channels}, {lanes})")
    for task in prange(groups * channels, nogil=True, schedule="static", num_threads=num_threads):
        gi = task // channels
        t = task % channels
        for q in range(blocks):
            lane = q * FL_WINO_FILTER_LANES
            first = &w[gi * Fg + t, lane, 0, 0] if flipped else &w[gi * Fg + lane, t, 0, 0]
            if floating is float:
                fl_wino_filter_float(first, ld, min(FL_WINO_FILTER_LANES, lanes - lane), &U[gi, 0, t, lane],
                                     channels * lanes, flipped)
            else:
                fl_wino_filter_double(first, ld, min(FL_WINO_FILTER_LANES, lanes - lane), &U[gi, 0, t, lane],
                                      channels * lanes, flipped)


cdef void _block(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] U, const floating[::1] b,
                 bint has_bias, floating[:, :, :, ::1] y, floating* V, const Conv2dShape* s, Py_ssize_t gi,
                 Py_ssize_t f0, Py_ssize_t nf, Py_ssize_t first, Py_ssize_t rows, Py_ssize_t tiles_h,
                 Py_ssize_t tiles_w, bint pool, bint relu) noexcept nogil:
    """Filters [f0, f0 + nf) of group gi on tile rows [first, first + rows) of the batch (row R:
    image R // tiles_h, tile row R % tiles_h). V: the thread's workspace, (36, P, ldv) then M
    (36, P, ldm) then the transforms' scratch. ``pool``, ``relu``: y's epilogue (conv2d_forward)."""
    cdef Py_ssize_t P = rows * tiles_w, ldv = _lanes_padded(s.Cg), ldm = _lanes_padded(nf), xi
    cdef Py_ssize_t readable = (s.N * s.C - gi * s.Cg) * s.H * s.W
    cdef floating* M = V + POSITIONS * P * ldv
    cdef floating* scratch = M + POSITIONS * P * ldm
    cdef const floating* bias = &b[gi * s.Fg + f0] if has_bias else NULL
    cdef Py_ssize_t plane = (s.OH // 2) * (s.OW // 2) if pool else s.OH * s.OW  # y's
    if floating is float:
        fl_wino_input_float(&x[0, gi * s.Cg, 0, 0], s.C * s.H * s.W, readable, V, ldv, scratch, s.Cg, s.H, s.W,
                            first, rows, tiles_h, tiles_w, s.PT, s.PL)
    else:
        fl_wino_input_double(&x[0, gi * s.Cg, 0, 0], s.C * s.H * s.W, readable, V, ldv, scratch, s.Cg, s.H, s.W,
                             first, rows, tiles_h, tiles_w, s.PT, s.PL)
    for xi in range(POSITIONS):
        # M[xi] (P x nf) = V[xi] (P x Cg) @ U[gi, xi, :, f0:f0 + nf] (Cg x nf)
        gemm(False, False, <int>P, <int>nf, <int>s.Cg, <floating>1, V + xi * P * ldv, <int>ldv,
             &U[gi, xi, 0, f0], <int>s.Fg, <floating>0, M + xi * P * ldm, <int>ldm)
    if floating is float:
        fl_wino_output_float(M, P, ldm, &y[0, gi * s.Fg + f0, 0, 0], s.F * plane, bias, nf, s.OH, s.OW,
                             first, rows, tiles_h, tiles_w, pool, relu)
    else:
        fl_wino_output_double(M, P, ldm, &y[0, gi * s.Fg + f0, 0, 0], s.F * plane, bias, nf, s.OH, s.OW,
                              first, rows, tiles_h, tiles_w, pool, relu)


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] U, const floating[::1] b,
                   floating[:, :, :, ::1] y, floating[:, ::1] workspace, object geometry, Py_ssize_t rows,
                   Py_ssize_t filters, int num_threads, bint pool=False, bint relu=False):
    """y = conv2d(x, w) (+ b; None for no bias) for 3x3 kernels, stride 1, dilation 1. ``U`` is
    (groups, 36, Cg, Fg), the transformed filters (transform_filters); ``workspace`` (num_threads,
    workspace_size(Cg, filters, rows, tiles_w)); ``rows``: tile rows per task (across images);
    ``filters``: filters per task (1 to Fg). ``pool``: y (N, F, OH // 2, OW // 2) is the 2x2
    stride-2 max-pool of the convolution instead; ``relu``: y through a ReLU (after the pool)."""
    single_threaded_blas()
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef Py_ssize_t OH = s.OH // 2 if pool else s.OH, OW = s.OW // 2 if pool else s.OW
    if y.shape[0] != s.N or y.shape[1] != s.F or y.shape[2] != OH or y.shape[3] != OW:
        raise ValueError(f"y must be ({s.N}, {s.F}, {OH}, {OW})")
    cdef bint has_bias = b is not None
    cdef Py_ssize_t tiles_h = (s.OH + TILE - 1) // TILE, tiles_w = (s.OW + TILE - 1) // TILE
    cdef Py_ssize_t total = s.N * tiles_h, blocks, fblocks, task, gi, first, f0
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if filters < 1 or filters > s.Fg:
        raise ValueError(f"filters must be from 1 to {s.Fg}, got {filters}")
    if U.shape[0] != s.G or U.shape[1] != POSITIONS or U.shape[2] != s.Cg or U.shape[3] != s.Fg:
        raise ValueError(f"U must be ({s.G}, {POSITIONS}, {s.Cg}, {s.Fg}), got "
                         f"({U.shape[0]}, {U.shape[1]}, {U.shape[2]}, {U.shape[3]})")
    blocks, fblocks = (total + rows - 1) // rows, (s.Fg + filters - 1) // filters
    if workspace.shape[0] < num_threads or workspace.shape[1] < workspace_size(s.Cg, filters, rows, tiles_w):
        raise ValueError(f"workspace must be at least ({num_threads}, {workspace_size(s.Cg, filters, rows, tiles_w)})")
    for task in prange(s.G * blocks * fblocks, nogil=True, schedule="dynamic", num_threads=num_threads):
        gi = task // (blocks * fblocks)
        first = (task // fblocks % blocks) * rows
        f0 = task % fblocks * filters
        _block(x, U, b, has_bias, y, &workspace[threadid(), 0], &s, gi, f0, min(filters, s.Fg - f0), first,
               min(rows, total - first), tiles_h, tiles_w, pool, relu)


cdef void _weight_block(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dU,
                        floating* V, const Conv2dShape* s, Py_ssize_t gi, Py_ssize_t first, Py_ssize_t rows,
                        Py_ssize_t tiles_h, Py_ssize_t tiles_w) noexcept nogil:
    """dU[gi, xi] += dM[xi] @ V[xi]^T over tile rows [first, first + rows) of the batch: V from x
    (as in _block), dM the transformed gradients of the same tiles of dy, in M's place."""
    cdef Py_ssize_t P = rows * tiles_w, ldv = _lanes_padded(s.Cg), xi
    cdef Py_ssize_t readable = (s.N * s.C - gi * s.Cg) * s.H * s.W
    cdef floating* dM = V + POSITIONS * P * ldv
    cdef floating* scratch = dM + POSITIONS * s.Fg * P
    if floating is float:
        fl_wino_input_float(&x[0, gi * s.Cg, 0, 0], s.C * s.H * s.W, readable, V, ldv, scratch, s.Cg, s.H, s.W,
                            first, rows, tiles_h, tiles_w, s.PT, s.PL)
        fl_wino_grad_output_float(&dy[0, gi * s.Fg, 0, 0], s.F * s.OH * s.OW, dM, P, scratch, s.Fg, s.OH, s.OW,
                                  first, rows, tiles_h, tiles_w)
    else:
        fl_wino_input_double(&x[0, gi * s.Cg, 0, 0], s.C * s.H * s.W, readable, V, ldv, scratch, s.Cg, s.H, s.W,
                             first, rows, tiles_h, tiles_w, s.PT, s.PL)
        fl_wino_grad_output_double(&dy[0, gi * s.Fg, 0, 0], s.F * s.OH * s.OW, dM, P, scratch, s.Fg, s.OH, s.OW,
                                   first, rows, tiles_h, tiles_w)
    for xi in range(POSITIONS):
        # dU[gi, xi] (Fg x Cg) += dM[xi] (Fg x P) @ V[xi] (P x Cg)
        gemm(False, False, <int>s.Fg, <int>s.Cg, <int>P, <floating>1, dM + xi * s.Fg * P, <int>P,
             V + xi * P * ldv, <int>ldv, <floating>1, &dU[gi, xi, 0, 0], <int>s.Cg)


def conv2d_backward_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                           floating[:, :, :, :, ::1] dU, floating[:, ::1] workspace, object geometry,
                           Py_ssize_t rows, int num_threads):
    """dU[q] += the transformed weight gradient (groups, 36, Fg, Cg) of the q-th of ``dU.shape[0]``
    consecutive runs of tasks (tasks as in conv2d_forward; dU zeroed by the caller): each run
    sums its tasks in order on one thread, so every partial is the same at any thread count.
    ``workspace`` as for conv2d_forward."""
    single_threaded_blas()
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef Py_ssize_t tiles_h = (s.OH + TILE - 1) // TILE, tiles_w = (s.OW + TILE - 1) // TILE
    cdef Py_ssize_t total = s.N * tiles_h, blocks, tasks, runs = dU.shape[0], q, task, gi, first
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    blocks = (total + rows - 1) // rows
    tasks = s.G * blocks
    if dU.shape[1] != s.G or dU.shape[2] != POSITIONS or dU.shape[3] != s.Fg or dU.shape[4] != s.Cg or runs > tasks:
        raise ValueError(f"dU must be (runs <= {tasks}, {s.G}, {POSITIONS}, {s.Fg}, {s.Cg})")
    if workspace.shape[0] < num_threads or workspace.shape[1] < workspace_size(s.Cg, s.Fg, rows, tiles_w):
        raise ValueError(f"workspace must be at least ({num_threads}, {workspace_size(s.Cg, s.Fg, rows, tiles_w)})")
    for q in prange(runs, nogil=True, schedule="dynamic", num_threads=num_threads):
        for task in range(q * tasks // runs, (q + 1) * tasks // runs):
            gi = task // blocks
            first = (task % blocks) * rows
            _weight_block(x, dy, dU[q], &workspace[threadid(), 0], &s, gi, first, min(rows, total - first),
                          tiles_h, tiles_w)


def filters_grad(const floating[:, :, :, :, ::1] dU, floating[:, :, :, ::1] dw, int num_threads):
    """dw (F, Cg, 3, 3) = G^T (dU summed over its first axis, the runs) G for the transformed
    weight gradient dU (runs, groups, 36, Fg, Cg): in double, rounded once to dw's type."""
    cdef Py_ssize_t runs = dU.shape[0], groups = dU.shape[1], Fg = dU.shape[3], Cg = dU.shape[4], f
    if dU.shape[2] != POSITIONS or dw.shape[0] != groups * Fg or dw.shape[1] != Cg or dw.shape[2] != 3 \
            or dw.shape[3] != 3 or runs < 1:
        raise ValueError(f"dU must be (runs >= 1, groups, {POSITIONS}, Fg, Cg) and dw (groups * Fg, Cg, 3, 3)")
    for f in prange(groups * Fg, nogil=True, schedule="static", num_threads=num_threads):
        if floating is float:
            fl_wino_filter_grad_float(&dU[0, f // Fg, 0, f % Fg, 0], runs, groups * POSITIONS * Fg * Cg, Fg * Cg, Cg,
                                      &dw[f, 0, 0, 0])
        else:
            fl_wino_filter_grad_double(&dU[0, f // Fg, 0, f % Fg, 0], runs, groups * POSITIONS * Fg * Cg, Fg * Cg,
                                       Cg, &dw[f, 0, 0, 0])


def bias_grad(const floating[:, :, ::1] dy, floating[::1] db, int num_threads):
    """db[c] = the sum of dy[:, c, :] (N, C, cells of a plane): each plane summed in double
    (batch_norm_loops.h), the planes in order, rounded once; a channel a task, so the bits do not
    depend on the thread count. NumPy's sum over the same axes runs on one thread."""
    cdef Py_ssize_t N = dy.shape[0], C = dy.shape[1], S = dy.shape[2], n, c
    cdef double total
    if db.shape[0] != C:
        raise ValueError(f"db must have {C} entries, got {db.shape[0]}")
    for c in prange(C, nogil=True, schedule="static", num_threads=num_threads):
        total = 0
        for n in range(N):
            if floating is float:
                total = total + fl_bn_sum_float(&dy[n, c, 0], S, 0.0, 0)
            else:
                total = total + fl_bn_sum_double(&dy[n, c, 0], S, 0.0, 0)
        db[c] = <floating>total
