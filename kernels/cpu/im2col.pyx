# conv2d as matrix products: im2col + GEMM forward, GEMM + col2im backward, over NCHW.
#
# The work is cut into tiles: one group of a batch of `images` images, a band of `rows` output
# rows. A tile's column matrix (K x images*rows*OW, K = C/groups * KH * KW) lives in the calling
# thread's slice of the workspace, sized by the Python wrapper to stay in L2; its product with the
# weights is one single-threaded BLAS gemm (the wrapper holds BLAS to one thread for the call), so
# the parallel loop is ours and the workspace stays bounded whatever the batch. Several images
# share a tile only when each is one whole band (small planes): their columns side by side make
# the gemm wide enough for OpenBLAS's kernels, and its product is scattered back into NCHW.
#
# Bounds: every size comes from the conv2d spec (fastlayers.ops.conv2d), every array shape is checked
# by the wrapper (backends/cpu/conv2d.py) against it, and the gemm sizes fit in a C int.
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from _blas cimport gemm, single_threaded_blas
from _packed cimport FL_PANEL, pack_panels_f32, packed_product, panel_count
from _conv2d cimport Conv2dShape, TapColumns, conv2d_shape, lane_sum, tap_columns


cdef inline bint _is_pointwise(const Conv2dShape* s) noexcept nogil:
    """A 1x1 kernel, stride 1, no padding: the image itself is the column matrix."""
    return s.KH == 1 and s.KW == 1 and s.SH == 1 and s.SW == 1 and s.PT == 0 and s.PL == 0 \
        and s.OH == s.H and s.OW == s.W


cdef inline void _zero(floating* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        a[i] = 0


cdef inline bint _keeps_width(const Conv2dShape* s) noexcept nogil:
    """Stride 1, no dilation and OW == W along the rows (a "same" padding): a tap's columns of
    consecutive output rows are consecutive input rows shifted by one offset, one run of memory."""
    return s.SH == 1 and s.SW == 1 and s.DW == 1 and s.OW == s.W


cdef void _im2col_runs(const floating* x, floating* col, Py_ssize_t ld, const Conv2dShape* s,
                       Py_ssize_t oh0, Py_ssize_t rows) noexcept nogil:
    """_im2col where _keeps_width: the rows a tap (c, kh, kw) sees inside the input are one run
    of x shifted by kw - PL columns, copied at once; then, in each row, the |shift| columns that
    fall in the padding (which the run filled from the neighbouring row) are zeroed, and so are
    the rows above and below the input. About 5x faster than row by row on 8-16 wide planes,
    where a row's copy costs more in set-up than in moving."""
    cdef Py_ssize_t c, kh, kw, r, r0, r1, ih0, shift, n, W = s.W
    cdef floating* dst
    cdef const floating* src
    for c in range(s.Cg):
        for kh in range(s.KH):
            ih0 = oh0 - s.PT + kh * s.DH  # the input row output row oh0 reads
            r0 = min(rows, max(0, -ih0))  # rows [r0, r1) of the band read inside the input
            r1 = max(r0, min(rows, s.H - ih0))
            for kw in range(s.KW):
                dst = col + ((c * s.KH + kh) * s.KW + kw) * ld
                shift = kw - s.PL
                memset(dst, 0, r0 * W * sizeof(floating))
                memset(dst + r1 * W, 0, (rows - r1) * W * sizeof(floating))
                if r1 == r0:
                    continue
                n = (r1 - r0) * W - (shift if shift >= 0 else -shift)
                src = x + (c * s.H + ih0 + r0) * W  # the run's first input row, column 0
                if shift >= 0:
                    if n > 0:
                        memcpy(dst + r0 * W, src + shift, n * sizeof(floating))
                    for r in range(r0, r1):  # the last `shift` columns of each row
                        memset(dst + (r + 1) * W - min(shift, W), 0, min(shift, W) * sizeof(floating))
                else:
                    if n > 0:
                        memcpy(dst + r0 * W - shift, src, n * sizeof(floating))
                    for r in range(r0, r1):  # the first `-shift` columns of each row
                        memset(dst + r * W, 0, min(-shift, W) * sizeof(floating))


cdef void _im2col(const floating* x, floating* col, Py_ssize_t ld, const Conv2dShape* s,
                  Py_ssize_t oh0, Py_ssize_t rows) noexcept nogil:
    """Columns of output rows [oh0, oh0 + rows) of one image's group: x (Cg, H, W) ->
    col (K, rows * OW), rows ``ld`` apart: row (c, kh, kw) of col holds what tap (kh, kw) of
    channel c sees, zero where it falls in the padding."""
    if _keeps_width(s):
        _im2col_runs(x, col, ld, s, oh0, rows)
        return
    # Rows are copied by loops, not memcpy/memset calls (setup.py keeps GCC from turning them
    # back into calls): on small planes a row is a few elements and the call's cost dominated.
    cdef Py_ssize_t c, kh, kw, r, ih, ow, lo, hi
    cdef TapColumns cols
    cdef floating* dst
    cdef const floating* src
    for kw in range(s.KW):
        cols = tap_columns(s, kw)
        # A tap that sees no column has lo == hi, which may lie past OW: the zeros stop at OW.
        lo, hi = min(cols.lo, s.OW), min(cols.hi, s.OW)
        for c in range(s.Cg):
            for kh in range(s.KH):
                for r in range(rows):
                    dst = col + ((c * s.KH + kh) * s.KW + kw) * ld + r * s.OW
                    ih = (oh0 + r) * s.SH - s.PT + kh * s.DH
                    if ih < 0 or ih >= s.H:
                        _zero(dst, s.OW)
                        continue
                    src = x + (c * s.H + ih) * s.W + cols.iw0
                    _zero(dst, lo)
                    if s.SW == 1:
                        for ow in range(lo, hi):
                            dst[ow] = src[ow]
                    else:
                        for ow in range(lo, hi):
                            dst[ow] = src[ow * s.SW]
                    _zero(dst + hi, s.OW - hi)


cdef inline const floating* _columns(const floating* x, floating* tile, const Conv2dShape* s, bint pointwise,
                                    Py_ssize_t oh0, Py_ssize_t rows) noexcept nogil:
    """The gemm operand (K x rows * OW) of output rows [oh0, oh0 + rows) of one image's group
    x (Cg, H, W): for a pointwise convolution x's band itself (leading dimension H * W), else its
    columns built in ``tile`` (leading dimension rows * OW)."""
    if pointwise:
        return x + oh0 * s.OW
    _im2col(x, tile, rows * s.OW, s, oh0, rows)
    return tile


cdef void _col2im_runs(floating* col, Py_ssize_t ld, floating* x, const Conv2dShape* s,
                       Py_ssize_t oh0, Py_ssize_t rows, Py_ssize_t channels) noexcept nogil:
    """_col2im where _keeps_width, as _im2col_runs copies: the entries of each row that came
    from the padding are zeroed in col (a workspace), then each tap's rows inside the input are
    added into x as one run."""
    cdef Py_ssize_t c, kh, kw, r, r0, r1, ih0, shift, i, n, W = s.W
    cdef floating* src
    cdef floating* dst
    for c in range(channels):
        for kh in range(s.KH):
            ih0 = oh0 - s.PT + kh * s.DH
            r0 = min(rows, max(0, -ih0))
            r1 = max(r0, min(rows, s.H - ih0))
            if r1 == r0:
                continue
            for kw in range(s.KW):
                src = col + ((c * s.KH + kh) * s.KW + kw) * ld + r0 * W
                dst = x + (c * s.H + ih0 + r0) * W
                shift = kw - s.PL
                if shift >= 0:
                    for r in range(r1 - r0):
                        memset(src + (r + 1) * W - min(shift, W), 0, min(shift, W) * sizeof(floating))
                    n = (r1 - r0) * W - shift
                    dst = dst + shift
                else:
                    for r in range(r1 - r0):
                        memset(src + r * W, 0, min(-shift, W) * sizeof(floating))
                    n = (r1 - r0) * W + shift
                    src = src - shift
                for i in range(n):
                    dst[i] += src[i]


cdef void _col2im(floating* col, Py_ssize_t ld, floating* x, const Conv2dShape* s,
                  Py_ssize_t oh0, Py_ssize_t rows, Py_ssize_t channels) noexcept nogil:
    """The adjoint of _im2col for ``channels`` channels: add col (channels * KH * KW, rows * OW;
    rows ``ld`` apart) into x (channels, H, W) where each entry came from; padding entries are
    dropped (where _keeps_width, zeroed in col first)."""
    if _keeps_width(s):
        _col2im_runs(col, ld, x, s, oh0, rows, channels)
        return
    cdef Py_ssize_t c, kh, kw, r, ih, ow
    cdef TapColumns cols
    cdef const floating* src
    cdef floating* dst
    for c in range(channels):
        for kh in range(s.KH):
            for r in range(rows):
                ih = (oh0 + r) * s.SH - s.PT + kh * s.DH
                if ih < 0 or ih >= s.H:
                    continue
                dst = x + (c * s.H + ih) * s.W
                for kw in range(s.KW):
                    cols = tap_columns(s, kw)
                    src = col + ((c * s.KH + kh) * s.KW + kw) * ld + r * s.OW
                    if s.SW == 1:
                        for ow in range(cols.lo, cols.hi):
                            dst[ow + cols.iw0] += src[ow]
                    else:
                        for ow in range(cols.lo, cols.hi):
                            dst[ow * s.SW + cols.iw0] += src[ow]


cdef void _forward_images(const floating* x, const floating* w_group, const floating* b_group, floating* y,
                         floating* work, const Conv2dShape* s, Py_ssize_t count) noexcept nogil:
    """One group of ``count`` whole images (x and y at their first image's group; b_group NULL
    for no bias): their columns side by side in ``work`` (K x count*OH*OW), one gemm into the
    rest of ``work`` (Fg x count*OH*OW), scattered into y with the bias added."""
    cdef Py_ssize_t P = s.OH * s.OW, cols = count * P
    cdef Py_ssize_t j, f, p
    cdef floating* col = work
    cdef floating* prod = work + s.K * cols
    cdef floating* dst
    cdef const floating* src
    cdef floating bias = 0
    for j in range(count):
        _im2col(x + j * s.C * s.H * s.W, col + j * P, cols, s, 0, s.OH)
    gemm(False, False, <int>s.Fg, <int>cols, <int>s.K, <floating>1, w_group, <int>s.K, col, <int>cols,
         <floating>0, prod, <int>cols)
    for j in range(count):
        for f in range(s.Fg):
            dst = y + (j * s.F + f) * P
            src = prod + f * cols + j * P
            if b_group != NULL:
                bias = b_group[f]
            for p in range(P):
                dst[p] = src[p] + bias


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                   const floating[::1] b, floating[:, :, :, ::1] y,
                   floating[:, ::1] workspace, object geometry, Py_ssize_t rows, Py_ssize_t images,
                   Py_ssize_t filters, int num_threads):
    """y = conv2d(x, w) (+ b; None for no bias). A tile is one group of ``images`` images (a last
    batch may have fewer), of ``rows`` output rows (a last band may have fewer) and of ``filters``
    of the group's filters (a last block may have fewer); ``images`` > 1 needs ``rows`` == OH,
    ``filters`` == Fg and a non-pointwise convolution. A tile builds its band's columns itself:
    tiles of one band but other filters build the same ones (where the weights outweigh the
    columns, as on small planes with many filters, splitting the filters costs less than
    splitting the band). ``workspace`` is (num_threads, K * rows * OW) for one image a tile,
    (num_threads, (K + Fg) * images * OH * OW) for several. Each output element is written by
    exactly one gemm whose shape depends on ``rows``, ``images`` and ``filters`` only, so y is
    the same bit for bit for the same tiles at any thread count."""
    single_threaded_blas()
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef bint has_bias = b is not None
    cdef Py_ssize_t bands = (s.OH + rows - 1) // rows
    cdef Py_ssize_t batches = (s.N + images - 1) // images
    cdef Py_ssize_t blocks = (s.Fg + filters - 1) // filters
    cdef Py_ssize_t tiles = batches * s.G * bands * blocks
    cdef Py_ssize_t HW = s.H * s.W, OHW = s.OH * s.OW
    cdef bint pointwise = _is_pointwise(&s)
    cdef Py_ssize_t t, n, gi, oh0, band_rows, f, f0, nf, p, P
    cdef const floating* col
    cdef floating* y_tile
    cdef int ldb
    # Dynamic: a tile's result does not depend on which thread computes it, and on a loaded
    # machine a thread that is descheduled for a while no longer holds up the whole call.
    for t in prange(tiles, nogil=True, schedule="dynamic", num_threads=num_threads):
        n = (t // (s.G * bands * blocks)) * images
        gi = (t // (bands * blocks)) % s.G
        if images > 1:
            _forward_images(&x[n, gi * s.Cg, 0, 0], &w[gi * s.Fg, 0, 0, 0],
                            &b[gi * s.Fg] if has_bias else NULL, &y[n, gi * s.Fg, 0, 0],
                            &workspace[threadid(), 0], &s, min(images, s.N - n))
            continue
        oh0 = ((t // blocks) % bands) * rows
        band_rows = min(rows, s.OH - oh0)
        f0 = gi * s.Fg + (t % blocks) * filters  # the tile's first filter
        nf = min(filters, (gi + 1) * s.Fg - f0)
        P = band_rows * s.OW
        y_tile = &y[n, f0, 0, 0] + oh0 * s.OW
        col = _columns(&x[n, gi * s.Cg, 0, 0], &workspace[threadid(), 0], &s, pointwise, oh0, band_rows)
        ldb = <int>HW if pointwise else <int>P
        if has_bias:
            for f in range(nf):
                for p in range(P):
                    y_tile[f * OHW + p] = b[f0 + f]
        gemm(False, False, <int>nf, <int>P, <int>s.K, <floating>1, &w[f0, 0, 0, 0], <int>s.K,
             col, ldb, <floating>(1 if has_bias else 0), y_tile, <int>OHW)


cdef void _backward_images(const floating* dy, const floating* x, const floating* w_group, floating* dx,
                          floating* dw_group, floating* db_group, floating* work, const Conv2dShape* s,
                          Py_ssize_t count) noexcept nogil:
    """One group of ``count`` whole images (dy, x and dx at their first image's group; dx NULL:
    no input gradient): dy gathered (Fg x count*OH*OW) and the columns of x side by side (K x
    count*OH*OW) in ``work``, dw_group (Fg x K) += one gemm over all their columns, db_group (Fg)
    += their sums; then the columns of dx, one gemm, added into dx image by image."""
    cdef Py_ssize_t P = s.OH * s.OW, cols = count * P, HW = s.H * s.W
    cdef Py_ssize_t j, f
    cdef floating* col = work
    cdef floating* dy_cols = work + s.K * cols
    cdef floating* dcol = dy_cols + s.Fg * cols
    for j in range(count):
        _im2col(x + j * s.C * HW, col + j * P, cols, s, 0, s.OH)
        for f in range(s.Fg):
            memcpy(dy_cols + f * cols + j * P, dy + (j * s.F + f) * P, P * sizeof(floating))
    gemm(False, True, <int>s.Fg, <int>s.K, <int>cols, <floating>1, dy_cols, <int>cols, col, <int>cols,
         <floating>1, dw_group, <int>s.K)
    for f in range(s.Fg):
        db_group[f] += lane_sum(dy_cols + f * cols, cols)
    if dx == NULL:
        return
    gemm(True, False, <int>s.K, <int>cols, <int>s.Fg, <floating>1, w_group, <int>s.K, dy_cols, <int>cols,
         <floating>0, dcol, <int>cols)
    for j in range(count):
        memset(dx + j * s.C * HW, 0, s.Cg * HW * sizeof(floating))
        _col2im(dcol + j * P, cols, dx + j * s.C * HW, s, 0, s.OH, s.Cg)


def conv2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                    floating[:, ::1] dw_partial, floating[:, ::1] db_partial,
                    floating[:, ::1] workspace, object geometry, Py_ssize_t rows, Py_ssize_t images,
                    int num_threads):
    """dx (None: not computed), and per-thread partial sums of dw and db, of y = conv2d(x, w) + b
    given dy.

    Parallel over tasks of one group of ``images`` images (a last batch may have fewer; ``images``
    > 1 needs ``rows`` == OH and a non-pointwise convolution), or without dx and with one image a
    task, of one band of output rows: a task owns its slice of dx (so col2im needs no atomics)
    and adds its dw (F * K) and db (F) into its thread's row of ``dw_partial``/``db_partial`` (zeroed by the caller, which sums the rows in order). A task
    with one image goes through bands of ``rows`` output rows. ``workspace`` is (num_threads,
    2 * K * rows * OW) for one image a task (the columns of x and of dx), (num_threads, (2 * K +
    Fg) * images * OH * OW) for several (and dy's). With a static schedule a thread's tasks and
    their order depend only on the thread count, so results are reproducible bit for bit at a
    given thread count."""
    single_threaded_blas()
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef bint input_grad = dx is not None
    cdef Py_ssize_t bands = (s.OH + rows - 1) // rows
    cdef Py_ssize_t batches = (s.N + images - 1) // images
    cdef Py_ssize_t HW = s.H * s.W, OHW = s.OH * s.OW
    cdef Py_ssize_t tile = s.K * rows * s.OW  # the columns of x, then those of dx
    cdef bint pointwise = _is_pointwise(&s)
    cdef Py_ssize_t task, n, gi, band, oh0, band_rows, f, P, tid
    cdef const floating* col
    cdef const floating* dy_tile
    cdef const floating* w_group
    cdef floating* dx_group
    cdef floating* dw_group
    cdef int ldb
    # Without dx the bands of one image are independent tasks too (with dx they would add into
    # the same rows of dx): so few images still keep every thread busy.
    cdef Py_ssize_t split = bands if not input_grad and images == 1 else 1
    cdef Py_ssize_t band0, band1
    for task in prange(batches * s.G * split, nogil=True, schedule="static", num_threads=num_threads):
        tid = threadid()
        n = (task // (s.G * split)) * images
        gi = (task // split) % s.G
        band0 = task % split if split > 1 else 0
        band1 = band0 + 1 if split > 1 else bands
        dx_group = &dx[n, gi * s.Cg, 0, 0] if input_grad else NULL
        w_group = &w[gi * s.Fg, 0, 0, 0]
        dw_group = &dw_partial[tid, gi * s.Fg * s.K]
        if images > 1:
            _backward_images(&dy[n, gi * s.Fg, 0, 0], &x[n, gi * s.Cg, 0, 0], w_group, dx_group, dw_group,
                             &db_partial[tid, gi * s.Fg], &workspace[tid, 0], &s, min(images, s.N - n))
            continue
        if input_grad and not pointwise:
            memset(dx_group, 0, s.Cg * HW * sizeof(floating))
        for band in range(band0, band1):
            oh0 = band * rows
            band_rows = min(rows, s.OH - oh0)
            P = band_rows * s.OW
            dy_tile = &dy[n, gi * s.Fg, 0, 0] + oh0 * s.OW
            col = _columns(&x[n, gi * s.Cg, 0, 0], &workspace[tid, 0], &s, pointwise, oh0, band_rows)
            ldb = <int>HW if pointwise else <int>P
            # dw_g (Fg x K) += dy_tile (Fg x P) @ col^T
            gemm(False, True, <int>s.Fg, <int>s.K, <int>P, <floating>1, dy_tile, <int>OHW,
                 col, ldb, <floating>1, dw_group, <int>s.K)
            if split > 1:
                for f in range(gi * s.Fg, (gi + 1) * s.Fg):
                    db_partial[tid, f] += lane_sum(&dy[n, f, 0, 0] + oh0 * s.OW, P)
            if not input_grad:
                continue
            # dcol (K x P) = w_g^T (K x Fg) @ dy_tile; the pointwise dcol is dx's band itself
            if pointwise:
                gemm(True, False, <int>s.K, <int>P, <int>s.Fg, <floating>1, w_group, <int>s.K,
                     dy_tile, <int>OHW, <floating>0, dx_group + oh0 * s.OW, <int>HW)
            else:
                gemm(True, False, <int>s.K, <int>P, <int>s.Fg, <floating>1, w_group, <int>s.K,
                     dy_tile, <int>OHW, <floating>0, &workspace[tid, tile], <int>P)
                _col2im(&workspace[tid, tile], P, dx_group, &s, oh0, band_rows, s.Cg)
        if split == 1:
            for f in range(gi * s.Fg, (gi + 1) * s.Fg):
                db_partial[tid, f] += lane_sum(&dy[n, f, 0, 0], OHW)


cdef void _weight_grad_block(const floating* dy, const floating* x_block, floating* dw_block,
                             floating* col_tile, float* panels, const Conv2dShape* s, Py_ssize_t rows,
                             Py_ssize_t channels, bint avx512) noexcept nogil:
    """dw_block (Fg x channels * KH * KW, leading dimension K: columns c0 * KH * KW.. of dw_g) =
    one (image, group) plane's products for a block of its input channels (x_block: channels
    c0.., H, W), band by band of ``rows`` output rows (the block's columns built in col_tile; the
    first band's product overwrites dw_block, so it needs no zeroing, which on a large weight
    costs a pass over it). With ``panels`` (float32 only: room for panel_count(channels * KH *
    KW) panels of the band's positions), the columns are packed there and multiplied by
    packed_gemm.h's register blocks (``avx512``: its AVX-512 blocking) instead of a gemm."""
    cdef Conv2dShape b = s[0]  # the block's channels as a group of their own
    b.Cg = channels
    b.K = channels * s.KH * s.KW
    cdef Py_ssize_t OHW = s.OH * s.OW, band, oh0, band_rows, P
    cdef bint pointwise = _is_pointwise(s)
    cdef const floating* col
    for band in range((s.OH + rows - 1) // rows):
        oh0 = band * rows
        band_rows = min(rows, s.OH - oh0)
        P = band_rows * s.OW
        col = _columns(x_block, col_tile, &b, pointwise, oh0, band_rows)
        if floating is float:
            if panels != NULL:  # dw_block (Fg x b.K) = dy's band (Fg x P) @ col^T (P x b.K), packed
                pack_panels_f32(col, s.H * s.W if pointwise else P, True, P, b.K, panels, 0, panel_count(b.K))
                packed_product(dy + oh0 * s.OW, OHW, panels, P, dw_block, s.K, s.Fg, b.K, band > 0, avx512)
                continue
        gemm(False, True, <int>s.Fg, <int>b.K, <int>P, <floating>1, dy + oh0 * s.OW, <int>OHW,
             col, <int>(s.H * s.W if pointwise else P), <floating>(1 if band > 0 else 0), dw_block, <int>s.K)


cdef inline void _bias_grad_plane(const floating* dy, floating* db_group, const Conv2dShape* s) noexcept nogil:
    """db_group (Fg) += one (image, group) plane's dy sums."""
    cdef Py_ssize_t OHW = s.OH * s.OW, f
    for f in range(s.Fg):
        db_group[f] += lane_sum(dy + f * OHW, OHW)


cdef void _input_grad_block(const floating* dy, const floating* w_block, floating* dx_block,
                            floating* dcol, const Conv2dShape* s, Py_ssize_t rows,
                            Py_ssize_t channels) noexcept nogil:
    """dx_block (channels, H, W) of one (image, group) plane: band by band of ``rows`` output
    rows, the block's columns (channels * KH * KW x band) = its rows of w_g^T (w_block: columns
    c0 * KH * KW .. of w_g, Fg x K) @ dy's band, added in by col2im; a pointwise convolution's
    columns are dx's band itself."""
    cdef Py_ssize_t HW = s.H * s.W, OHW = s.OH * s.OW, band, oh0, band_rows, P
    cdef bint pointwise = _is_pointwise(s)
    if not pointwise:
        memset(dx_block, 0, channels * HW * sizeof(floating))
    for band in range((s.OH + rows - 1) // rows):
        oh0 = band * rows
        band_rows = min(rows, s.OH - oh0)
        P = band_rows * s.OW
        if pointwise:
            gemm(True, False, <int>channels, <int>P, <int>s.Fg, <floating>1, w_block, <int>s.K,
                 dy + oh0 * s.OW, <int>OHW, <floating>0, dx_block + oh0 * s.OW, <int>HW)
        else:
            gemm(True, False, <int>(channels * s.KH * s.KW), <int>P, <int>s.Fg, <floating>1, w_block,
                 <int>s.K, dy + oh0 * s.OW, <int>OHW, <floating>0, dcol, <int>P)
            _col2im(dcol, P, dx_block, s, oh0, band_rows, channels)


def panels_size(Py_ssize_t channels, object geometry, Py_ssize_t rows):
    """Values of one thread's packed columns in the small-batch dw (conv2d_backward_small_batch's
    ``panels``): the panels of a block of ``channels`` input channels over a band of ``rows``."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    return panel_count(channels * s.KH * s.KW) * FL_PANEL * min(rows, s.OH) * s.OW


def conv2d_backward_small_batch(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                                const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                                floating[:, ::1] dw_partial, floating[:, ::1] db_partial,
                                floating[:, ::1] workspace, object geometry, Py_ssize_t rows,
                                Py_ssize_t channels, int num_threads, float[:, ::1] panels=None,
                                bint avx512=False):
    """dx (None: not computed), and per-image partial sums of dw and db, for batches with fewer
    (image, group) planes than threads. Tasks, per plane and block of ``channels`` input
    channels: first the block's columns of dw (into its image's row of ``dw_partial``, which the
    caller sums in order; the first block's task also adds the plane's db into the row of
    ``db_partial`` it zeroed), then the block's slice of dx; taken dynamically, so the dx blocks
    fill the threads around the longer dw tasks. ``workspace`` is (num_threads, K * rows * OW);
    ``panels`` (float32; None: dw by gemms) (num_threads, panels_size(channels, geometry, rows)),
    where dw's products run on packed columns (_weight_grad_block; ``avx512`` as for
    rnn_forward). Every task's products depend on ``rows``, ``channels`` and whether ``panels``
    is given only: the same arguments give the same bits at any thread count."""
    single_threaded_blas()
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef Py_ssize_t blocks = (s.Cg + channels - 1) // channels
    cdef Py_ssize_t planes = s.N * s.G
    cdef Py_ssize_t task, n, gi, c0, b
    cdef bint input_grad = dx is not None
    cdef float* packed = NULL
    cdef Py_ssize_t panel_values = 0
    if panels is not None:
        if floating is not float:
            raise TypeError("panels are float32 only: dw's products in double run on gemms")
        if panels.shape[0] < num_threads or panels.shape[1] < panels_size(channels, geometry, rows):
            raise ValueError(f"panels must be at least ({num_threads}, {panels_size(channels, geometry, rows)})")
        packed, panel_values = &panels[0, 0], panels.shape[1]
    for task in prange((2 if input_grad else 1) * planes * blocks, nogil=True, schedule="dynamic",
                       num_threads=num_threads):
        b = task % (planes * blocks)
        n = b // (s.G * blocks)
        gi = (b // blocks) % s.G
        c0 = (b % blocks) * channels
        if task < planes * blocks:
            _weight_grad_block(&dy[n, gi * s.Fg, 0, 0], &x[n, gi * s.Cg + c0, 0, 0],
                               &dw_partial[n, gi * s.Fg * s.K + c0 * s.KH * s.KW], &workspace[threadid(), 0],
                               NULL if packed == NULL else packed + threadid() * panel_values, &s, rows,
                               min(channels, s.Cg - c0), avx512)
            if c0 == 0:
                _bias_grad_plane(&dy[n, gi * s.Fg, 0, 0], &db_partial[n, gi * s.Fg], &s)
        else:
            _input_grad_block(&dy[n, gi * s.Fg, 0, 0], &w[gi * s.Fg, c0, 0, 0], &dx[n, gi * s.Cg + c0, 0, 0],
                              &workspace[threadid(), 0], &s, rows, min(channels, s.Cg - c0))