# conv2d with one input channel per group (groups == C: depthwise, as in MobileNet), forward and
# backward, over NCHW. Output channel f reads input channel f // Fg (Fg filters per group, the
# channel multiplier). Every output plane is a sum of shifted, scaled input planes. Four kinds of
# plane loops, chosen by the wrapper (``loops``): ROWS (conv2d_depthwise_loops.h, any stride: a
# tap is one pass over an output row), PADDED (same header, forward at stride 1: a tap is one
# pass over a zero-padded copy of the plane), BLOCKED (conv2d_depthwise_blocked.h, output rows at least half
# a vector wide, its data gradient at stride 1 only: a block of output vectors in registers for all
# the taps, read from a padded copy) and SAME_3X3 (conv2d_depthwise_3x3.h: 3x3 filters, stride 1,
# padding 1, each vector column swept down the plane, no copy). A thread's workspace row holds its
# padded planes.
#
# Bounds: every size comes from the conv2d spec (fastlayers.ops.conv2d) and the wrapper
# (backends/cpu/conv2d.py) checks the arrays' shapes and the workspace's size against it
# (workspace_size).
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from _conv2d cimport Conv2dShape, conv2d_shape

cdef extern from "conv2d_depthwise_loops.h" nogil:
    float fl_dw_sum_float(const float* v, Py_ssize_t n)
    double fl_dw_sum_double(const double* v, Py_ssize_t n)
    void fl_dw_forward_float(const float* x, const float* w, float bias, float* y, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH,
                             Py_ssize_t SW, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW)
    void fl_dw_forward_double(const double* x, const double* w, double bias, double* y, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                              Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH,
                              Py_ssize_t DW)
    void fl_dw_backward_input_float(const float* dy, const float* w, float* dx, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH,
                                    Py_ssize_t SW, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW)
    void fl_dw_backward_input_double(const double* dy, const double* w, double* dx, Py_ssize_t H, Py_ssize_t W,
                                     Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH,
                                     Py_ssize_t SW, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW)
    void fl_dw_backward_weight_float(const float* dy, const float* x, float* dw, float* db, Py_ssize_t H,
                                     Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                     Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH,
                                     Py_ssize_t DW)
    void fl_dw_backward_weight_double(const double* dy, const double* x, double* dw, double* db, Py_ssize_t H,
                                      Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                      Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH,
                                      Py_ssize_t DW)
    void fl_dw_padded_forward_float(const float* x, const float* w, float bias, float* y, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t PT,
                                    Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW, float* scratch)
    void fl_dw_padded_forward_double(const double* x, const double* w, double bias, double* y, Py_ssize_t H,
                                     Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                     Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW, double* scratch)


cdef extern from "conv2d_depthwise_blocked.h" nogil:
    int FL_DWB_BYTES
    void fl_dwb_pad_float(const float* src, Py_ssize_t R, Py_ssize_t S, float* xp, Py_ssize_t Hp, Py_ssize_t Wp,
                          Py_ssize_t top, Py_ssize_t left)
    void fl_dwb_pad_double(const double* src, Py_ssize_t R, Py_ssize_t S, double* xp, Py_ssize_t Hp,
                           Py_ssize_t Wp, Py_ssize_t top, Py_ssize_t left)
    void fl_dwb_pad_phases_float(const float* src, Py_ssize_t R, Py_ssize_t S, float* xp, Py_ssize_t Hp,
                                 Py_ssize_t SW, Py_ssize_t Wh, Py_ssize_t top, Py_ssize_t left)
    void fl_dwb_pad_phases_double(const double* src, Py_ssize_t R, Py_ssize_t S, double* xp, Py_ssize_t Hp,
                                  Py_ssize_t SW, Py_ssize_t Wh, Py_ssize_t top, Py_ssize_t left)
    void fl_dwb_forward_float(const float* xp, Py_ssize_t ld, const Py_ssize_t* toff, const float* tw,
                              Py_ssize_t ntaps, float bias, float* out, Py_ssize_t OH, Py_ssize_t OW)
    void fl_dwb_forward_double(const double* xp, Py_ssize_t ld, const Py_ssize_t* toff, const double* tw,
                               Py_ssize_t ntaps, double bias, double* out, Py_ssize_t OH, Py_ssize_t OW)
    void fl_dwb_weight_float(const float* dy, Py_ssize_t OH, Py_ssize_t OW, const float* xp, Py_ssize_t ld,
                             const Py_ssize_t* toff, Py_ssize_t ntaps, float* dw)
    void fl_dwb_weight_double(const double* dy, Py_ssize_t OH, Py_ssize_t OW, const double* xp, Py_ssize_t ld,
                              const Py_ssize_t* toff, Py_ssize_t ntaps, double* dw)
    void fl_dwb_forward_float_narrow(const float* xp, Py_ssize_t ld, const Py_ssize_t* toff, const float* tw,
                                     Py_ssize_t ntaps, float bias, float* out, Py_ssize_t OH, Py_ssize_t OW)
    void fl_dwb_forward_double_narrow(const double* xp, Py_ssize_t ld, const Py_ssize_t* toff, const double* tw,
                                      Py_ssize_t ntaps, double bias, double* out, Py_ssize_t OH, Py_ssize_t OW)
    void fl_dwb_weight_float_narrow(const float* dy, Py_ssize_t OH, Py_ssize_t OW, const float* xp, Py_ssize_t ld,
                                    const Py_ssize_t* toff, Py_ssize_t ntaps, float* dw)
    void fl_dwb_weight_double_narrow(const double* dy, Py_ssize_t OH, Py_ssize_t OW, const double* xp,
                                     Py_ssize_t ld, const Py_ssize_t* toff, Py_ssize_t ntaps, double* dw)

cdef extern from "conv2d_depthwise_3x3.h" nogil:
    void fl_dw3_forward_float(const float* x, const float* tw, float bias, float* out, Py_ssize_t H, Py_ssize_t W)
    void fl_dw3_forward_double(const double* x, const double* tw, double bias, double* out, Py_ssize_t H,
                               Py_ssize_t W)
    void fl_dw3_weight_float(const float* dy, const float* x, float* dw, float* db, Py_ssize_t H, Py_ssize_t W)
    void fl_dw3_weight_double(const double* dy, const double* x, double* dw, double* db, Py_ssize_t H,
                              Py_ssize_t W)
    void fl_dw3_forward_float_narrow(const float* x, const float* tw, float bias, float* out, Py_ssize_t H,
                                     Py_ssize_t W)
    void fl_dw3_forward_double_narrow(const double* x, const double* tw, double bias, double* out, Py_ssize_t H,
                                      Py_ssize_t W)
    void fl_dw3_weight_float_narrow(const float* dy, const float* x, float* dw, float* db, Py_ssize_t H,
                                    Py_ssize_t W)
    void fl_dw3_weight_double_narrow(const double* dy, const double* x, double* dw, double* db, Py_ssize_t H,
                                     Py_ssize_t W)

# The plane loops (``loops`` of conv2d_forward and conv2d_backward).
cdef enum:
    LOOPS_ROWS = 0
    LOOPS_PADDED = 1
    LOOPS_BLOCKED = 2
    LOOPS_SAME_3X3 = 3
ROWS, PADDED, BLOCKED, SAME_3X3 = LOOPS_ROWS, LOOPS_PADDED, LOOPS_BLOCKED, LOOPS_SAME_3X3
# Bytes of the blocked and 3x3 loops' vectors: they need output rows (and, backward at stride 1,
# input rows) of at least half this many bytes (their narrow kernels below it).
VECTOR_BYTES = FL_DWB_BYTES


cdef inline void _blocked_forward(const floating* xp, Py_ssize_t ld, const Py_ssize_t* toff, const floating* tw,
                                  Py_ssize_t ntaps, floating bias, floating* out, Py_ssize_t OH,
                                  Py_ssize_t OW) noexcept nogil:
    """fl_dwb_forward on 32-byte vectors or, rows narrower, 16-byte."""
    cdef bint narrow = OW * sizeof(floating) < FL_DWB_BYTES
    if floating is float:
        if narrow:
            fl_dwb_forward_float_narrow(xp, ld, toff, tw, ntaps, bias, out, OH, OW)
        else:
            fl_dwb_forward_float(xp, ld, toff, tw, ntaps, bias, out, OH, OW)
    else:
        if narrow:
            fl_dwb_forward_double_narrow(xp, ld, toff, tw, ntaps, bias, out, OH, OW)
        else:
            fl_dwb_forward_double(xp, ld, toff, tw, ntaps, bias, out, OH, OW)


cdef inline void _blocked_weight(const floating* dy, Py_ssize_t OH, Py_ssize_t OW, const floating* xp, Py_ssize_t ld,
                                 const Py_ssize_t* toff, Py_ssize_t ntaps, floating* dw) noexcept nogil:
    """fl_dwb_weight, vectors as _blocked_forward's."""
    cdef bint narrow = OW * sizeof(floating) < FL_DWB_BYTES
    if floating is float:
        if narrow:
            fl_dwb_weight_float_narrow(dy, OH, OW, xp, ld, toff, ntaps, dw)
        else:
            fl_dwb_weight_float(dy, OH, OW, xp, ld, toff, ntaps, dw)
    else:
        if narrow:
            fl_dwb_weight_double_narrow(dy, OH, OW, xp, ld, toff, ntaps, dw)
        else:
            fl_dwb_weight_double(dy, OH, OW, xp, ld, toff, ntaps, dw)


cdef inline void _same_3x3_forward(const floating* x, const floating* tw, floating bias, floating* out, Py_ssize_t H,
                                   Py_ssize_t W) noexcept nogil:
    """out = the 3x3 filter tw over x, padding 1, on 32-byte vectors or, rows narrower, 16-byte."""
    cdef bint narrow = W * sizeof(floating) < FL_DWB_BYTES
    if floating is float:
        if narrow:
            fl_dw3_forward_float_narrow(x, tw, bias, out, H, W)
        else:
            fl_dw3_forward_float(x, tw, bias, out, H, W)
    else:
        if narrow:
            fl_dw3_forward_double_narrow(x, tw, bias, out, H, W)
        else:
            fl_dw3_forward_double(x, tw, bias, out, H, W)


cdef inline void _same_3x3_weight(const floating* dy, const floating* x, floating* dw, floating* db, Py_ssize_t H,
                                  Py_ssize_t W) noexcept nogil:
    """dw and db += one image's terms of the 3x3 filter, padding 1, vectors as _same_3x3_forward's."""
    cdef bint narrow = W * sizeof(floating) < FL_DWB_BYTES
    if floating is float:
        if narrow:
            fl_dw3_weight_float_narrow(dy, x, dw, db, H, W)
        else:
            fl_dw3_weight_float(dy, x, dw, db, H, W)
    else:
        if narrow:
            fl_dw3_weight_double_narrow(dy, x, dw, db, H, W)
        else:
            fl_dw3_weight_double(dy, x, dw, db, H, W)


def workspace_size(object geometry, int loops, bint backward):
    """Values of a thread's workspace row for ``loops``: none for ROWS and SAME_3X3; for PADDED
    (forward only) a padded plane and a widened output plane, (Hp + OH) * Wp with
    Hp = OH + DH*(KH-1), Wp = OW + DW*(KW-1); for BLOCKED the padded input plane, _padded_rows * SW * _phase_cells
    (Hp * Wp at stride 1), and backward at stride 1 the larger of that (the weight gradient's) and
    the data gradient's Fg padded gradient planes, Fg * (H + DH*(KH-1)) * (W + DW*(KW-1))."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef Py_ssize_t Wp = s.OW + s.DW * (s.KW - 1), Hp = s.OH + s.DH * (s.KH - 1)
    cdef Py_ssize_t blocked = _padded_rows(&s) * s.SW * _phase_cells(&s)
    if loops == LOOPS_PADDED:
        if backward:
            raise ValueError("the depthwise padded-plane loops have no backward")
        return (Hp + s.OH) * Wp
    if loops == LOOPS_BLOCKED:
        return max(blocked, s.Fg * _dx_plane(&s)) if backward and s.SH == 1 and s.SW == 1 else blocked
    return 0


cdef inline Py_ssize_t _padded_rows(const Conv2dShape* s) noexcept nogil:
    """Rows of the blocked loops' padded input plane: every row an output reads."""
    return (s.OH - 1) * s.SH + s.DH * (s.KH - 1) + 1


cdef inline Py_ssize_t _phase_cells(const Conv2dShape* s) noexcept nogil:
    """Cells of one column phase of a row of the blocked loops' padded input plane: its Wp =
    (OW-1)*SW + DW*(KW-1) + 1 columns (every one an output reads) over SW, rounded up."""
    return ((s.OW - 1) * s.SW + s.DW * (s.KW - 1) + s.SW) // s.SW


cdef inline Py_ssize_t _dx_plane(const Conv2dShape* s) noexcept nogil:
    """Values of one padded gradient plane of the blocked data gradient."""
    return (s.H + s.DH * (s.KH - 1)) * (s.W + s.DW * (s.KW - 1))


cdef void _pad_blocked(const floating* x, const Conv2dShape* s, floating* xp) noexcept nogil:
    """The blocked loops' padded copy of the input plane x (phase-split at a column stride over 1)."""
    cdef Py_ssize_t Wh = _phase_cells(s), Hp = _padded_rows(s)
    if floating is float:
        if s.SW == 1:
            fl_dwb_pad_float(x, s.H, s.W, xp, Hp, Wh, s.PT, s.PL)
        else:
            fl_dwb_pad_phases_float(x, s.H, s.W, xp, Hp, s.SW, Wh, s.PT, s.PL)
    else:
        if s.SW == 1:
            fl_dwb_pad_double(x, s.H, s.W, xp, Hp, Wh, s.PT, s.PL)
        else:
            fl_dwb_pad_phases_double(x, s.H, s.W, xp, Hp, s.SW, Wh, s.PT, s.PL)


cdef Py_ssize_t* _tap_offsets(const Conv2dShape* s, bint data_gradient) except NULL:
    """The blocked loops' tap table (freed by the caller). Forward and weight gradient: tap
    (kh, kw) at kh*DH rows of the padded input, column phase (kw*DW) % SW, cell (kw*DW) // SW
    (at stride 1 kh*DH*Wp + kw*DW). Data gradient (stride 1): the taps (f, kh, kw) of the Fg
    filters of a channel, at f * plane + the mirrored tap, (KH-1-kh)*DH*Wq + (KW-1-kw)*DW of the
    padded gradient planes (Wq = W + DW*(KW-1))."""
    cdef Py_ssize_t planes = s.Fg if data_gradient else 1, f, kh, kw, t = 0
    cdef Py_ssize_t Wq = s.W + s.DW * (s.KW - 1), Wh = _phase_cells(s)
    cdef Py_ssize_t* toff = <Py_ssize_t*>malloc(planes * s.KH * s.KW * sizeof(Py_ssize_t))
    if toff == NULL:
        raise MemoryError()
    for f in range(planes):
        for kh in range(s.KH):
            for kw in range(s.KW):
                if data_gradient:
                    toff[t] = f * _dx_plane(s) + (s.KH - 1 - kh) * s.DH * Wq + (s.KW - 1 - kw) * s.DW
                else:
                    toff[t] = kh * s.DH * s.SW * Wh + (kw * s.DW) % s.SW * Wh + (kw * s.DW) // s.SW
                t += 1
    return toff


cdef void _forward_plane(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, floating bias,
                         floating[:, :, :, ::1] y, const Conv2dShape* s, Py_ssize_t n, Py_ssize_t f, int loops,
                         const Py_ssize_t* toff, floating* scratch) noexcept nogil:
    """y[n, f] by ``loops`` (``scratch``: the thread's workspace row)."""
    cdef const floating* xc = &x[n, f // s.Fg, 0, 0]
    cdef Py_ssize_t ld = s.SH * s.SW * _phase_cells(s)  # the padded input's cells between output rows
    if loops == LOOPS_SAME_3X3:
        _same_3x3_forward(xc, &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W)
    elif loops == LOOPS_BLOCKED:
        _pad_blocked(xc, s, scratch)
        _blocked_forward(scratch, ld, toff, &w[f, 0, 0, 0], s.KH * s.KW, bias, &y[n, f, 0, 0], s.OH, s.OW)
    elif floating is float:
        if loops == LOOPS_PADDED:
            fl_dw_padded_forward_float(xc, &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W, s.OH, s.OW, s.KH, s.KW,
                                       s.PT, s.PL, s.DH, s.DW, scratch)
        else:
            fl_dw_forward_float(xc, &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W, s.OH, s.OW, s.KH, s.KW, s.SH,
                                s.SW, s.PT, s.PL, s.DH, s.DW)
    else:
        if loops == LOOPS_PADDED:
            fl_dw_padded_forward_double(xc, &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W, s.OH, s.OW, s.KH, s.KW,
                                        s.PT, s.PL, s.DH, s.DW, scratch)
        else:
            fl_dw_forward_double(xc, &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W, s.OH, s.OW, s.KH, s.KW, s.SH,
                                 s.SW, s.PT, s.PL, s.DH, s.DW)


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, const floating[::1] b,
                   floating[:, :, :, ::1] y, floating[:, ::1] workspace, object geometry, int loops,
                   int num_threads):
    """y = conv2d(x, w) (+ b; None for no bias) for C/groups == 1 by ``loops`` (ROWS; PADDED at
    stride 1; BLOCKED with OW of at least half a vector; SAME_3X3 for 3x3 filters at stride 1, dilation
    1 and padding 1 with W of at least half a vector): one task per output plane.
    ``workspace`` (num_threads, workspace_size(geometry, loops, False)), or None where that is 0."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef bint has_bias = b is not None, has_workspace = workspace is not None
    cdef Py_ssize_t task
    cdef Py_ssize_t* toff = _tap_offsets(&s, False)
    try:
        for task in prange(s.N * s.F, nogil=True, schedule="static", num_threads=num_threads):
            _forward_plane(x, w, b[task % s.F] if has_bias else 0, y, &s, task // s.F, task % s.F, loops, toff,
                           &workspace[threadid(), 0] if has_workspace else NULL)
    finally:
        free(toff)


cdef void _input_plane(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                       const Conv2dShape* s, Py_ssize_t n, Py_ssize_t c, int loops, const Py_ssize_t* toff,
                       floating* scratch) noexcept nogil:
    """dx[n, c]: the adjoint of the forward from the Fg output planes that read input channel c.
    BLOCKED: a forward over those planes, each padded by (KH-1)*DH - PT rows on top and
    (KW-1)*DW - PL columns on the left (negative: cropped), with the taps mirrored (toff)."""
    cdef Py_ssize_t f, plane = _dx_plane(s), Wq = s.W + s.DW * (s.KW - 1), Hq = s.H + s.DH * (s.KH - 1)
    cdef Py_ssize_t top = (s.KH - 1) * s.DH - s.PT, left = (s.KW - 1) * s.DW - s.PL
    cdef floating mirrored[9]
    if loops == LOOPS_SAME_3X3:  # the forward with the filter mirrored (Fg == 1)
        for f in range(9):
            mirrored[f] = w[c, 0, 2 - f // 3, 2 - f % 3]
        _same_3x3_forward(&dy[n, c, 0, 0], mirrored, 0, &dx[n, c, 0, 0], s.H, s.W)
        return
    if loops == LOOPS_BLOCKED and s.SH == 1 and s.SW == 1:
        for f in range(s.Fg):
            if floating is float:
                fl_dwb_pad_float(&dy[n, c * s.Fg + f, 0, 0], s.OH, s.OW, scratch + f * plane, Hq, Wq, top, left)
            else:
                fl_dwb_pad_double(&dy[n, c * s.Fg + f, 0, 0], s.OH, s.OW, scratch + f * plane, Hq, Wq, top, left)
        _blocked_forward(scratch, Wq, toff, &w[c * s.Fg, 0, 0, 0], s.Fg * s.KH * s.KW, 0, &dx[n, c, 0, 0], s.H,
                         s.W)
        return
    memset(&dx[n, c, 0, 0], 0, s.H * s.W * sizeof(floating))
    for f in range(c * s.Fg, (c + 1) * s.Fg):
        if floating is float:
            fl_dw_backward_input_float(&dy[n, f, 0, 0], &w[f, 0, 0, 0], &dx[n, c, 0, 0], s.H, s.W, s.OH, s.OW,
                                       s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH, s.DW)
        else:
            fl_dw_backward_input_double(&dy[n, f, 0, 0], &w[f, 0, 0, 0], &dx[n, c, 0, 0], s.H, s.W, s.OH, s.OW,
                                        s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH, s.DW)


cdef void _weight_image(const floating* dy, const floating* x, floating* dw, floating* db, const Conv2dShape* s,
                        int loops, const Py_ssize_t* toff, floating* scratch) noexcept nogil:
    """dw (KH, KW) and db += one image's terms of one filter (dy and x: its planes)."""
    cdef Py_ssize_t ld = s.SH * s.SW * _phase_cells(s)  # the padded input's cells between output rows
    if loops == LOOPS_SAME_3X3:
        _same_3x3_weight(dy, x, dw, db, s.H, s.W)
    elif loops == LOOPS_BLOCKED:
        _pad_blocked(x, s, scratch)
        _blocked_weight(dy, s.OH, s.OW, scratch, ld, toff, s.KH * s.KW, dw)
        if floating is float:
            db[0] += fl_dw_sum_float(dy, s.OH * s.OW)
        else:
            db[0] += fl_dw_sum_double(dy, s.OH * s.OW)
    elif floating is float:
        fl_dw_backward_weight_float(dy, x, dw, db, s.H, s.W, s.OH, s.OW, s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH,
                                    s.DW)
    else:
        fl_dw_backward_weight_double(dy, x, dw, db, s.H, s.W, s.OH, s.OW, s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH,
                                     s.DW)


cdef void _weight_channel(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x, floating[:, :, :, ::1] dw,
                          floating[::1] db, const Conv2dShape* s, Py_ssize_t f, int loops, const Py_ssize_t* toff,
                          floating* scratch) noexcept nogil:
    """dw[f] and db[f], summed over the images in order."""
    cdef Py_ssize_t n
    memset(&dw[f, 0, 0, 0], 0, s.KH * s.KW * sizeof(floating))
    db[f] = 0
    for n in range(s.N):
        _weight_image(&dy[n, f, 0, 0], &x[n, f // s.Fg, 0, 0], &dw[f, 0, 0, 0], &db[f], s, loops, toff, scratch)


def conv2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx, floating[:, :, :, ::1] dw,
                    floating[::1] db, floating[:, ::1] workspace, object geometry, int loops, int num_threads):
    """dx (None: not computed), dw and db of y = conv2d(x, w) + b given dy, for C/groups == 1, by
    ``loops`` as in conv2d_forward but PADDED, which has no backward (BLOCKED: dx by it at stride 1,
    with W of at least half a vector, else by the row loops; SAME_3X3: one filter per channel). Tasks: the N*C input planes of dx,
    then the F filters of dw and db (each summed over the images in order), so every output is
    written by one task in a fixed order whatever the thread count.
    ``workspace`` (num_threads, workspace_size(geometry, loops, True)), or None where that is 0."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef Py_ssize_t task, planes = s.N * s.C if dx is not None else 0
    cdef floating* scratch
    cdef bint has_workspace = workspace is not None
    cdef Py_ssize_t* weight_taps = _tap_offsets(&s, False)
    cdef Py_ssize_t* input_taps = NULL
    try:
        input_taps = _tap_offsets(&s, True)
        for task in prange(planes + s.F, nogil=True, schedule="guided", num_threads=num_threads):
            scratch = &workspace[threadid(), 0] if has_workspace else NULL
            if task < planes:
                _input_plane(dy, w, dx, &s, task // s.C, task % s.C, loops, input_taps, scratch)
            else:
                _weight_channel(dy, x, dw, db, &s, task - planes, loops, weight_taps, scratch)
    finally:
        free(weight_taps)
        free(input_taps)
