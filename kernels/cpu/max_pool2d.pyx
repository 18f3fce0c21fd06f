# Max-pool 2-D forward and backward over NCHW planes, parallel over the N*C planes.
#
# Inputs are validated by the max_pool2d spec (fastlayers.ops.max_pool2d) (and the sizes below by the Python wrapper) before
# they get here: every pointer offset computed below stays inside its plane.
#
# Both directions are memory-bound once vectorised; the vector loops live in C: the 2x2 stride-2
# planes in max_pool2d_simd.h, the general forward in max_pool2d_phases.h.
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY
from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint64_t
from libc.string cimport memset

cdef extern from "max_pool2d_simd.h" nogil:
    # Planes of 2x2 stride-2 tiles, vectorised (the header says how and why in C); NULL indices:
    # the maxima only.
    void fl_pool_plane_2x2_float(const float* x, float* y, int64_t* indices, Py_ssize_t W, Py_ssize_t OH,
                                 Py_ssize_t OW, bint stream, bint relu)
    void fl_pool_plane_2x2_double(const double* x, double* y, int64_t* indices, Py_ssize_t W, Py_ssize_t OH,
                                  Py_ssize_t OW, bint stream, bint relu)
    Py_ssize_t fl_route_plane_2x2_float(const float* dy, const int64_t* indices, float* dx, Py_ssize_t W,
                                        Py_ssize_t OH, Py_ssize_t OW, bint stream)
    Py_ssize_t fl_route_plane_2x2_double(const double* dy, const int64_t* indices, double* dx, Py_ssize_t W,
                                         Py_ssize_t OH, Py_ssize_t OW, bint stream)
    int fl_pool_baseline_only

cdef extern from "max_pool2d_phases.h" nogil:
    # A plane of the general path (any window, stride, padding), over phase rows; NULL indices:
    # the maxima only.
    Py_ssize_t fl_pool_phase_cells(Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SW)
    void fl_pool_plane_phases_float(const float* x, float* y, int64_t* indices, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH,
                                    Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW, float* work)
    void fl_pool_plane_phases_double(const double* x, double* y, int64_t* indices, Py_ssize_t H, Py_ssize_t W,
                                     Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH,
                                     Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW, double* work)


def use_baseline_vectors(bint only):
    """Tests: run the 16-byte (SSE2) variants of the 2x2 planes and the general path even where
    AVX2 is there. Returns the previous setting."""
    global fl_pool_baseline_only
    previous = bool(fl_pool_baseline_only)
    fl_pool_baseline_only = only
    return previous


cdef inline bint _tiles_2x2(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                            Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW) noexcept nogil:
    """Whether the forward takes the 2x2 stride-2 path: whole tiles only (floor mode, or ceil mode
    with even sizes)."""
    return KH == 2 and KW == 2 and SH == 2 and SW == 2 and PH == 0 and PW == 0 and 2 * OH <= H and 2 * OW <= W


def phase_cells(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW):
    """Cells of work per thread the forward needs: the general path's phase rows
    (max_pool2d_phases.h); 0 where it takes the 2x2 path, which needs none."""
    return 0 if _tiles_2x2(H, W, OH, OW, KH, KW, SH, SW, PH, PW) else fl_pool_phase_cells(OW, KH, KW, SW)


# ---------------------------------------------------------------------------- forward


cdef void _pool_plane_scan(const floating* x, floating* y, int64_t* indices,
                           Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                           Py_ssize_t PH, Py_ssize_t PW) noexcept nogil:
    """Where the phase rows do not fit (windows wider than the input, whose taps would run KW
    times a row: 2**31 - 1 of them cost seconds a plane; offsets past int32; phase rows past the
    work budget): each output scans the cells of its window that lie inside the input. Same order
    and rule as max_pool2d_phases.h. NULL indices: the maxima only."""
    cdef Py_ssize_t oh, ow, ih, iw, ih_lo, ih_hi, iw_lo, iw_hi
    cdef int64_t best_index
    cdef floating best, v
    for oh in range(OH):
        ih_lo = max(oh * SH - PH, 0)
        ih_hi = min(oh * SH - PH + KH, H)
        for ow in range(OW):
            iw_lo = max(ow * SW - PW, 0)
            iw_hi = min(ow * SW - PW + KW, W)
            best = -INFINITY
            best_index = ih_lo * W + iw_lo
            for ih in range(ih_lo, ih_hi):
                for iw in range(iw_lo, iw_hi):
                    v = x[ih * W + iw]
                    if v > best or v != v:
                        best = v
                        best_index = ih * W + iw
            y[oh * OW + ow] = best
            if indices != NULL:
                indices[oh * OW + ow] = best_index


def max_pool2d_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, int64_t[:, :, ::1] indices,
                       int KH, int KW, int SH, int SW, int PH, int PW, bint stream, bint relu,
                       floating[:, ::1] work, int num_threads):
    """x (P, H, W) -> y, indices (P, OH, OW); P = N*C planes, all sizes > 0, geometry validated
    (every window holds at least one input cell). The first maximum wins, of several NaNs the
    last (as in PyTorch). ``indices`` None: the maxima only (inference), the same values.
    ``stream``: write the outputs around the cache (2x2 stride-2 path only). ``relu``: each
    plane's maxima through a ReLU once it is pooled, while it is in cache (relu.pyx's rule: NaN
    and -0.0 stay); the indices are the maxima's either way.
    ``work`` (at least num_threads rows, of at least one cell): each thread's phase rows for the
    general path, taken when a row holds ``phase_cells(...)`` (and KW <= W, KH * W < 2**31);
    otherwise each output scans its window."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2]
    cdef Py_ssize_t p
    cdef int64_t* index_base = NULL
    if work.shape[0] < 1 or work.shape[1] < 1:
        raise ValueError("work must have at least one cell")
    if indices is not None:
        if indices.shape[0] != P or indices.shape[1] != OH or indices.shape[2] != OW:
            raise ValueError("indices must have y's shape")
        index_base = &indices[0, 0, 0]
    cdef bint tiles_2x2 = _tiles_2x2(H, W, OH, OW, KH, KW, SH, SW, PH, PW)
    cdef bint phases = (KW <= W and <int64_t>KH * W < INT32_MAX and work.shape[0] >= num_threads
                        and work.shape[1] >= fl_pool_phase_cells(OW, KH, KW, SW))
    if num_threads == 1:  # no OpenMP region: entering one costs more than a small batch's planes
        with nogil:
            for p in range(P):
                _pool_plane(x, y, index_base, p, KH, KW, SH, SW, PH, PW, stream, relu, tiles_2x2, phases,
                            &work[0, 0])
        return
    for p in prange(P, nogil=True, schedule="guided", num_threads=num_threads):
        _pool_plane(x, y, index_base, p, KH, KW, SH, SW, PH, PW, stream, relu, tiles_2x2, phases,
                    &work[threadid(), 0] if phases else NULL)  # a row per thread only for phase rows


cdef void _pool_plane(const floating[:, :, ::1] x, floating[:, :, ::1] y, int64_t* index_base, Py_ssize_t p,
                      Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW,
                      bint stream, bint relu, bint tiles_2x2, bint phases, floating* work) noexcept nogil:
    """Plane p of max_pool2d_forward, by the path it chose; ``work``: this thread's phase rows."""
    cdef Py_ssize_t H = x.shape[1], W = x.shape[2], OH = y.shape[1], OW = y.shape[2], i
    cdef floating* plane = &y[p, 0, 0]
    cdef int64_t* plane_indices = NULL if index_base == NULL else index_base + p * OH * OW
    if tiles_2x2:  # the ReLU inside, in registers
        if floating is float:
            fl_pool_plane_2x2_float(&x[p, 0, 0], plane, plane_indices, W, OH, OW, stream, relu)
        else:
            fl_pool_plane_2x2_double(&x[p, 0, 0], plane, plane_indices, W, OH, OW, stream, relu)
        return
    if phases:
        if floating is float:
            fl_pool_plane_phases_float(&x[p, 0, 0], plane, plane_indices, H, W, OH, OW, KH, KW,
                                       SH, SW, PH, PW, work)
        else:
            fl_pool_plane_phases_double(&x[p, 0, 0], plane, plane_indices, H, W, OH, OW, KH, KW,
                                        SH, SW, PH, PW, work)
    else:
        _pool_plane_scan(&x[p, 0, 0], plane, plane_indices, H, W, OH, OW, KH, KW, SH, SW, PH, PW)
    if relu:
        for i in range(OH * OW):
            plane[i] = 0 if plane[i] < 0 else plane[i]


# ---------------------------------------------------------------------------- backward


cdef Py_ssize_t _route_tiles(const floating* dy, const int64_t* indices, floating* dx,
                             Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t TH, Py_ssize_t TW) noexcept nogil:
    """Split the (OH*TH, OW*TW) plane into OH x OW tiles of TH x TW cells and write every cell of
    dx once: the gradient of its tile's output where the tile's index points at it, else 0.
    Returns how many indices pointed inside their own tile (OH*OW when all did: dx is then the
    exact scatter-add, with no separate zeroing pass)."""
    cdef Py_ssize_t oh, ow, kh, kw, ih, iw, matched = 0
    cdef const int64_t* i_row
    cdef const floating* g_row
    cdef floating* dx_row
    cdef bint hit
    for oh in range(OH):
        i_row = indices + oh * OW
        g_row = dy + oh * OW
        for kh in range(TH):
            ih = oh * TH + kh
            dx_row = dx + ih * W
            for kw in range(TW):
                for ow in range(OW):
                    iw = ow * TW + kw
                    hit = i_row[ow] == ih * W + iw
                    dx_row[iw] = g_row[ow] if hit else 0
                    matched += hit
    return matched


cdef Py_ssize_t _scatter_add(const floating* dy, const int64_t* indices, floating* dx,
                             Py_ssize_t HW, Py_ssize_t Q) noexcept nogil:
    """Zero dx (HW cells) and add each of the Q gradients at its index. Returns the number of
    indices outside [0, HW): skipped, never written."""
    cdef Py_ssize_t q, bad = 0
    cdef int64_t i
    memset(dx, 0, HW * sizeof(floating))
    for q in range(Q):
        i = indices[q]
        if i < 0 or i >= HW:
            bad += 1
        else:
            dx[i] += dy[q]
    return bad


def count_out_of_range(const int64_t[::1] indices, int64_t plane, int num_threads):
    """How many of ``indices`` lie outside [0, plane): one pass, in parallel (the check of a
    caller's buffer before the backward writes it; NumPy's min and max took two serial passes)."""
    cdef Py_ssize_t i
    cdef Py_ssize_t bad = 0
    for i in prange(indices.shape[0], nogil=True, schedule="static", num_threads=num_threads):
        bad += <uint64_t>indices[i] >= <uint64_t>plane  # a negative index wraps past any plane
    return bad


def max_pool2d_backward(const floating[:, :, ::1] dy, const int64_t[:, :, ::1] indices,
                        floating[:, :, ::1] dx, bint stream, int num_threads):
    """Route dy (P, OH, OW) into dx (P, H, W) at indices (flat ih*W+iw per plane), adding where
    several outputs share an index. All sizes > 0. Returns the number of indices outside
    [0, H*W) (skipped, never written; the caller raises).

    When the outputs tile the plane (H, W multiples of OH, OW: e.g. any non-overlapping pool
    without a partial window) each tile is written once, skipping the zeroing pass; a plane with
    an index outside its tile (overlapping windows, foreign indices) is redone by scatter-add.
    ``stream``: write 2x2 tiles around the cache."""
    cdef Py_ssize_t P = dy.shape[0], OH = dy.shape[1], OW = dy.shape[2]
    cdef Py_ssize_t H = dx.shape[1], W = dx.shape[2]
    cdef Py_ssize_t p, bad = 0
    if num_threads == 1:  # no OpenMP region: entering one costs more than a small batch's planes
        with nogil:
            for p in range(P):
                bad += _route_plane(&dy[p, 0, 0], &indices[p, 0, 0], &dx[p, 0, 0], H, W, OH, OW, stream)
        return bad
    for p in prange(P, nogil=True, schedule="guided", num_threads=num_threads):
        bad += _route_plane(&dy[p, 0, 0], &indices[p, 0, 0], &dx[p, 0, 0], H, W, OH, OW, stream)
    return bad


cdef Py_ssize_t _route_plane(const floating* dy, const int64_t* indices, floating* dx, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t OH, Py_ssize_t OW, bint stream) noexcept nogil:
    """One plane of max_pool2d_backward; returns its count of indices outside [0, H*W)."""
    cdef Py_ssize_t matched = -1
    if H % OH == 0 and W % OW == 0:
        if H // OH == 2 and W // OW == 2:
            if floating is float:
                matched = fl_route_plane_2x2_float(dy, indices, dx, W, OH, OW, stream)
            else:
                matched = fl_route_plane_2x2_double(dy, indices, dx, W, OH, OW, stream)
        else:
            matched = _route_tiles(dy, indices, dx, W, OH, OW, H // OH, W // OW)
    if matched != OH * OW:
        return _scatter_add(dy, indices, dx, H * W, OH * OW)
    return 0
