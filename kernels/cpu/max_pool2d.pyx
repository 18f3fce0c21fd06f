# Max-pool 2-D forward and backward over NCHW planes, parallel over the N*C planes.
#
# Inputs are validated by the max_pool2d spec (fastlayers.ops.max_pool2d) (and the sizes below by the Python wrapper) before
# they get here: every pointer offset computed below stays inside its plane.
#
# Both directions are memory-bound once vectorised; the vector row loops live in
# max_pool2d_simd.h. The forward works a row of outputs at a time, the running maximum and its
# index kept in the output row itself (in L1) rather than in scratch buffers.
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memset

cdef extern from "max_pool2d_simd.h" nogil:
    # The 2x2 stride-2 rows, vectorised with SSE2 (the header says why they are C).
    void fl_pool_row_2x2_float(const float* x0, const float* x1, float* y, int64_t* indices,
                               Py_ssize_t OW, int64_t first, int64_t W, bint stream)
    void fl_pool_row_2x2_double(const double* x0, const double* x1, double* y, int64_t* indices,
                                Py_ssize_t OW, int64_t first, int64_t W, bint stream)
    Py_ssize_t fl_route_row_2x2_float(const float* dy, const int64_t* indices, float* r0, float* r1,
                                      Py_ssize_t OW, int64_t first, int64_t W, bint stream)
    Py_ssize_t fl_route_row_2x2_double(const double* dy, const int64_t* indices, double* r0, double* r1,
                                       Py_ssize_t OW, int64_t first, int64_t W, bint stream)
    void fl_store_fence()
    # One window tap of the general path, vectorised over the output columns.
    void fl_pool_tap_float(const float* x_row, float* y_row, int64_t* i_row, Py_ssize_t ow_lo,
                           Py_ssize_t ow_hi, Py_ssize_t SW, Py_ssize_t off, int64_t row_first)
    void fl_pool_tap_double(const double* x_row, double* y_row, int64_t* i_row, Py_ssize_t ow_lo,
                            Py_ssize_t ow_hi, Py_ssize_t SW, Py_ssize_t off, int64_t row_first)


# ---------------------------------------------------------------------------- forward


cdef void _pool_plane_2x2(const floating* x, floating* y, int64_t* indices,
                          Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, bint stream) noexcept nogil:
    cdef Py_ssize_t oh
    for oh in range(OH):
        if floating is float:
            fl_pool_row_2x2_float(x + 2 * oh * W, x + (2 * oh + 1) * W, y + oh * OW, indices + oh * OW,
                                  OW, 2 * oh * W, W, stream)
        else:
            fl_pool_row_2x2_double(x + 2 * oh * W, x + (2 * oh + 1) * W, y + oh * OW, indices + oh * OW,
                                   OW, 2 * oh * W, W, stream)
    if stream:
        fl_store_fence()


cdef void _pool_plane(const floating* x, floating* y, int64_t* indices,
                      Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                      Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                      Py_ssize_t PH, Py_ssize_t PW) noexcept nogil:
    """Any window, stride, padding and ceil mode. Each output row starts at -inf with the index
    of its window's first input cell, then every window tap (kh, kw) in row-major order updates
    the whole row (fl_pool_tap_*: vectorised over the output columns whose tap is an input cell).
    Padded cells are never visited, so they never win."""
    cdef Py_ssize_t oh, ow, ih, ih_lo, ih_hi, kw, ow_lo, ow_hi, last
    cdef floating* y_row
    cdef int64_t* i_row
    cdef const floating* x_row
    for oh in range(OH):
        ih_lo = max(oh * SH - PH, 0)
        ih_hi = min(oh * SH - PH + KH, H)
        y_row = y + oh * OW
        i_row = indices + oh * OW
        for ow in range(OW):
            y_row[ow] = -INFINITY
            i_row[ow] = ih_lo * W + max(ow * SW - PW, 0)
        for ih in range(ih_lo, ih_hi):
            x_row = x + ih * W
            for kw in range(KW):
                # Columns ow whose tap iw = ow * SW - PW + kw lies in [0, W).
                ow_lo = (PW - kw + SW - 1) // SW if PW > kw else 0
                last = W - 1 + PW - kw
                ow_hi = min(OW, last // SW + 1) if last >= 0 else 0
                if floating is float:
                    fl_pool_tap_float(x_row, y_row, i_row, ow_lo, ow_hi, SW, kw - PW, ih * W)
                else:
                    fl_pool_tap_double(x_row, y_row, i_row, ow_lo, ow_hi, SW, kw - PW, ih * W)


cdef void _pool_plane_wide(const floating* x, floating* y, int64_t* indices,
                           Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                           Py_ssize_t PH, Py_ssize_t PW) noexcept nogil:
    """_pool_plane for windows wider than the input (KW > W): each output scans the cells of its
    window that lie inside the input, where a loop over the window's taps would run KW times a
    row (2**31 - 1 of them cost seconds a plane). Same order and rule as fl_pool_tap_*."""
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
            indices[oh * OW + ow] = best_index


def max_pool2d_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, int64_t[:, :, ::1] indices,
                       int KH, int KW, int SH, int SW, int PH, int PW, bint stream, int num_threads):
    """x (P, H, W) -> y, indices (P, OH, OW); P = N*C planes, all sizes > 0, geometry validated
    (every window holds at least one input cell). The first maximum wins, of several NaNs the
    last (as in PyTorch).
    ``stream``: write the outputs around the cache (2x2 stride-2 path only)."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2]
    cdef Py_ssize_t p
    # Whole 2x2 tiles only: floor mode, or ceil mode with even sizes.
    cdef bint tiles_2x2 = (KH == 2 and KW == 2 and SH == 2 and SW == 2 and PH == 0 and PW == 0
                           and 2 * OH <= H and 2 * OW <= W)
    for p in prange(P, nogil=True, schedule="guided", num_threads=num_threads):
        if tiles_2x2:
            _pool_plane_2x2(&x[p, 0, 0], &y[p, 0, 0], &indices[p, 0, 0], W, OH, OW, stream)
        elif KW > W:
            _pool_plane_wide(&x[p, 0, 0], &y[p, 0, 0], &indices[p, 0, 0], H, W, OH, OW, KH, KW, SH, SW, PH, PW)
        else:
            _pool_plane(&x[p, 0, 0], &y[p, 0, 0], &indices[p, 0, 0], H, W, OH, OW, KH, KW, SH, SW, PH, PW)


# ---------------------------------------------------------------------------- backward


cdef Py_ssize_t _route_tiles_2x2(const floating* dy, const int64_t* indices, floating* dx,
                                 Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, bint stream) noexcept nogil:
    """_route_tiles for 2x2 tiles, one pass over each output row."""
    cdef Py_ssize_t oh, matched = 0
    for oh in range(OH):
        if floating is float:
            matched += fl_route_row_2x2_float(dy + oh * OW, indices + oh * OW, dx + 2 * oh * W,
                                              dx + (2 * oh + 1) * W, OW, 2 * oh * W, W, stream)
        else:
            matched += fl_route_row_2x2_double(dy + oh * OW, indices + oh * OW, dx + 2 * oh * W,
                                               dx + (2 * oh + 1) * W, OW, 2 * oh * W, W, stream)
    if stream:
        fl_store_fence()
    return matched


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
    cdef Py_ssize_t p, matched, bad = 0
    cdef bint tiled = H % OH == 0 and W % OW == 0
    cdef Py_ssize_t TH = H // OH, TW = W // OW
    for p in prange(P, nogil=True, schedule="guided", num_threads=num_threads):
        matched = -1
        if tiled and TH == 2 and TW == 2:
            matched = _route_tiles_2x2(&dy[p, 0, 0], &indices[p, 0, 0], &dx[p, 0, 0], W, OH, OW, stream)
        elif tiled:
            matched = _route_tiles(&dy[p, 0, 0], &indices[p, 0, 0], &dx[p, 0, 0], W, OH, OW, TH, TW)
        if matched != OH * OW:
            bad += _scatter_add(&dy[p, 0, 0], &indices[p, 0, 0], &dx[p, 0, 0], H * W, OH * OW)
    return bad
