# conv2d with one input channel per group (groups == C: depthwise, as in MobileNet), forward and
# backward, over NCHW. Output channel f reads input channel f // Fg (Fg filters per group, the
# channel multiplier). Every output plane is a sum of shifted, scaled input planes: the plane loops
# are in conv2d_depthwise_loops.h: row loops for any stride, and at stride 1, where the caller gives
# a workspace, the padded-plane loops (a tap is one pass over the plane; a thread's workspace row
# holds its padded planes).
#
# Bounds: every size comes from the conv2d spec (fastlayers.ops.conv2d) and the wrapper
# (backends/cpu/conv2d.py) checks the arrays' shapes against it.
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from _conv2d cimport Conv2dShape, conv2d_shape

cdef extern from "conv2d_depthwise_loops.h" nogil:
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
    void fl_dw_padded_backward_input_float(const float* dy, const float* w, float* dx, Py_ssize_t Fg, Py_ssize_t H,
                                           Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                           Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW, float* scratch)
    void fl_dw_padded_backward_input_double(const double* dy, const double* w, double* dx, Py_ssize_t Fg,
                                            Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH,
                                            Py_ssize_t KW, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW,
                                            double* scratch)
    void fl_dw_padded_backward_weight_float(const float* dy, const float* x, float* dw, float* db, Py_ssize_t H,
                                            Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                            Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW, float* scratch)
    void fl_dw_padded_backward_weight_double(const double* dy, const double* x, double* dw, double* db, Py_ssize_t H,
                                             Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH,
                                             Py_ssize_t KW, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH,
                                             Py_ssize_t DW, double* scratch)


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, const floating[::1] b,
                   floating[:, :, :, ::1] y, floating[:, ::1] workspace, object geometry, int num_threads):
    """y = conv2d(x, w) (+ b; None for no bias) for C/groups == 1: one task per output plane.
    ``workspace`` (num_threads, (Hp + OH) * Wp) for the padded-plane loops (stride 1 only), or None."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef bint has_bias = b is not None, padded = workspace is not None
    cdef Py_ssize_t task, n, f
    cdef floating bias
    for task in prange(s.N * s.F, nogil=True, schedule="static", num_threads=num_threads):
        n = task // s.F
        f = task % s.F
        bias = b[f] if has_bias else 0
        if floating is float:
            if padded:
                fl_dw_padded_forward_float(&x[n, f // s.Fg, 0, 0], &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W,
                                           s.OH, s.OW, s.KH, s.KW, s.PT, s.PL, s.DH, s.DW, &workspace[threadid(), 0])
            else:
                fl_dw_forward_float(&x[n, f // s.Fg, 0, 0], &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W, s.OH,
                                    s.OW, s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH, s.DW)
        else:
            if padded:
                fl_dw_padded_forward_double(&x[n, f // s.Fg, 0, 0], &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W,
                                            s.OH, s.OW, s.KH, s.KW, s.PT, s.PL, s.DH, s.DW, &workspace[threadid(), 0])
            else:
                fl_dw_forward_double(&x[n, f // s.Fg, 0, 0], &w[f, 0, 0, 0], bias, &y[n, f, 0, 0], s.H, s.W, s.OH,
                                     s.OW, s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH, s.DW)

cdef void _input_plane(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                       const Conv2dShape* s, Py_ssize_t n, Py_ssize_t c, floating* scratch) noexcept nogil:
    """dx[n, c]: the adjoint of the forward from the Fg output planes that read input channel c
    (``scratch``: the padded-plane loops' workspace, or NULL for the row loops)."""
    cdef Py_ssize_t f
    if scratch != NULL:
        if floating is float:
            fl_dw_padded_backward_input_float(&dy[n, c * s.Fg, 0, 0], &w[c * s.Fg, 0, 0, 0], &dx[n, c, 0, 0], s.Fg,
                                              s.H, s.W, s.OH, s.OW, s.KH, s.KW, s.PT, s.PL, s.DH, s.DW, scratch)
        else:
            fl_dw_padded_backward_input_double(&dy[n, c * s.Fg, 0, 0], &w[c * s.Fg, 0, 0, 0], &dx[n, c, 0, 0], s.Fg,
                                               s.H, s.W, s.OH, s.OW, s.KH, s.KW, s.PT, s.PL, s.DH, s.DW, scratch)
        return
    memset(&dx[n, c, 0, 0], 0, s.H * s.W * sizeof(floating))
    for f in range(c * s.Fg, (c + 1) * s.Fg):
        if floating is float:
            fl_dw_backward_input_float(&dy[n, f, 0, 0], &w[f, 0, 0, 0], &dx[n, c, 0, 0], s.H, s.W, s.OH, s.OW,
                                       s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH, s.DW)
        else:
            fl_dw_backward_input_double(&dy[n, f, 0, 0], &w[f, 0, 0, 0], &dx[n, c, 0, 0], s.H, s.W, s.OH, s.OW,
                                        s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH, s.DW)


cdef void _weight_channel(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x, floating[:, :, :, ::1] dw,
                          floating[::1] db, const Conv2dShape* s, Py_ssize_t f, floating* scratch) noexcept nogil:
    """dw[f] and db[f], summed over the images in order (``scratch`` as in _input_plane)."""
    cdef Py_ssize_t n
    memset(&dw[f, 0, 0, 0], 0, s.KH * s.KW * sizeof(floating))
    db[f] = 0
    for n in range(s.N):
        if floating is float:
            if scratch != NULL:
                fl_dw_padded_backward_weight_float(&dy[n, f, 0, 0], &x[n, f // s.Fg, 0, 0], &dw[f, 0, 0, 0], &db[f],
                                                   s.H, s.W, s.OH, s.OW, s.KH, s.KW, s.PT, s.PL, s.DH, s.DW, scratch)
            else:
                fl_dw_backward_weight_float(&dy[n, f, 0, 0], &x[n, f // s.Fg, 0, 0], &dw[f, 0, 0, 0], &db[f], s.H,
                                            s.W, s.OH, s.OW, s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH, s.DW)
        else:
            if scratch != NULL:
                fl_dw_padded_backward_weight_double(&dy[n, f, 0, 0], &x[n, f // s.Fg, 0, 0], &dw[f, 0, 0, 0], &db[f],
                                                    s.H, s.W, s.OH, s.OW, s.KH, s.KW, s.PT, s.PL, s.DH, s.DW, scratch)
            else:
                fl_dw_backward_weight_double(&dy[n, f, 0, 0], &x[n, f // s.Fg, 0, 0], &dw[f, 0, 0, 0], &db[f], s.H,
                                             s.W, s.OH, s.OW, s.KH, s.KW, s.SH, s.SW, s.PT, s.PL, s.DH, s.DW)

def conv2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx, floating[:, :, :, ::1] dw,
                    floating[::1] db, floating[:, ::1] workspace, object geometry, int num_threads):
    """dx (None: not computed), dw and db of y = conv2d(x, w) + b given dy, for C/groups == 1.
    Tasks: the N*C input planes of dx, then the F filters of dw and db (each summed over the
    images in order), so every output is written by one task in a fixed order whatever the thread
    count. ``workspace`` as in conv2d_forward."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef Py_ssize_t task, planes = s.N * s.C if dx is not None else 0
    cdef bint padded = workspace is not None
    cdef floating* scratch
    for task in prange(planes + s.F, nogil=True, schedule="dynamic", num_threads=num_threads):
        scratch = &workspace[threadid(), 0] if padded else NULL
        if task < planes:
            _input_plane(dy, w, dx, &s, task // s.C, task % s.C, scratch)
        else:
            _weight_channel(dy, x, dw, db, &s, task - planes, scratch)
