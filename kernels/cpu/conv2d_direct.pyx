# conv2d by direct loops over NCHW, no column matrix: forward, dx and dw.
#
# Every loop nest ends in an element-wise loop over a row of output columns (contiguous at
# stride 1), so the compiler vectorises it; the planes it sweeps (one output or input plane) stay
# in L1/L2 while the kernel taps go by. Each output element is owned by one task and summed in a
# fixed order: results are reproducible bit for bit, and independent of the thread count; so
# tasks are scheduled dynamically (a thread descheduled on a loaded machine holds no one up).
#
# Bounds: sizes come from fastlayers._params.conv2d_geometry and the array shapes are checked by
# the wrapper (backends/cpu/conv2d.py); tap_columns clips every row to the input.
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from _blas cimport floating
from _conv2d cimport Conv2dShape, TapColumns, conv2d_shape, lane_sum, tap_columns


cdef inline void _axpy_row(floating* y, const floating* x, floating a, Py_ssize_t lo, Py_ssize_t hi,
                           Py_ssize_t stride) noexcept nogil:
    """y[ow] += a * x[ow * stride] for ow in [lo, hi); the stride-1 loop is the vectorised one."""
    cdef Py_ssize_t ow
    if stride == 1:
        for ow in range(lo, hi):
            y[ow] += a * x[ow]
    else:
        for ow in range(lo, hi):
            y[ow] += a * x[ow * stride]


cdef inline void _scatter_row(floating* x, const floating* y, floating a, Py_ssize_t lo, Py_ssize_t hi,
                              Py_ssize_t stride) noexcept nogil:
    """x[ow * stride] += a * y[ow] for ow in [lo, hi): _axpy_row's adjoint."""
    cdef Py_ssize_t ow
    if stride == 1:
        for ow in range(lo, hi):
            x[ow] += a * y[ow]
    else:
        for ow in range(lo, hi):
            x[ow * stride] += a * y[ow]


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                   const floating[::1] b, bint has_bias, floating[:, :, :, ::1] y,
                   object geometry, int num_threads):
    """y = conv2d(x, w) (+ b), parallel over (image, filter) planes of y."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef TapColumns cols
    cdef Py_ssize_t OHW = s.OH * s.OW
    cdef Py_ssize_t task, n, f, gi, c, kh, kw, oh, ih, p
    cdef floating* y_plane
    cdef const floating* x_group
    cdef floating wv
    for task in prange(s.N * s.F, nogil=True, schedule="dynamic", num_threads=num_threads):
        n = task // s.F
        f = task % s.F
        gi = f // s.Fg
        y_plane = &y[n, f, 0, 0]
        x_group = &x[n, gi * s.Cg, 0, 0]
        for p in range(OHW):
            y_plane[p] = b[f] if has_bias else 0
        for c in range(s.Cg):
            for kh in range(s.KH):
                for kw in range(s.KW):
                    wv = w[f, c, kh, kw]
                    cols = tap_columns(&s, kw)
                    for oh in range(s.OH):
                        ih = oh * s.SH - s.PT + kh * s.DH
                        if 0 <= ih < s.H:
                            _axpy_row(y_plane + oh * s.OW, x_group + (c * s.H + ih) * s.W + cols.iw0,
                                      wv, cols.lo, cols.hi, s.SW)


def conv2d_backward_input(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] w,
                          floating[:, :, :, ::1] dx, object geometry, int num_threads):
    """dx of y = conv2d(x, w) given dy, parallel over (image, channel) planes of dx."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef TapColumns cols
    cdef Py_ssize_t task, n, c, gi, cg, f, kh, kw, oh, ih
    cdef floating* dx_plane
    cdef floating wv
    for task in prange(s.N * s.C, nogil=True, schedule="dynamic", num_threads=num_threads):
        n = task // s.C
        c = task % s.C
        gi = c // s.Cg
        cg = c % s.Cg
        dx_plane = &dx[n, c, 0, 0]
        memset(dx_plane, 0, s.H * s.W * sizeof(floating))
        for f in range(gi * s.Fg, (gi + 1) * s.Fg):
            for kh in range(s.KH):
                for kw in range(s.KW):
                    wv = w[f, cg, kh, kw]
                    cols = tap_columns(&s, kw)
                    for oh in range(s.OH):
                        ih = oh * s.SH - s.PT + kh * s.DH
                        if 0 <= ih < s.H:
                            _scatter_row(dx_plane + ih * s.W + cols.iw0, &dy[n, f, oh, 0], wv, cols.lo, cols.hi, s.SW)


def conv2d_backward_weight(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                           floating[:, :, :, ::1] dw, floating[::1] db, floating[:, ::1] workspace,
                           object geometry, int num_threads):
    """dw and db of y = conv2d(x, w) + b given dy, parallel over (filter, channel) pairs; each
    owns dw[f, c] (and the c == 0 task db[f]). A tap's products are gathered element-wise into
    the running thread's row of ``workspace`` (num_threads x OW) over all images and output rows,
    then lane-summed: vectorised, and in a fixed order."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef TapColumns cols
    cdef Py_ssize_t task, f, cg, gi, n, kh, kw, oh, ih, ow
    cdef floating* acc
    cdef const floating* x_row
    cdef const floating* dy_row
    cdef floating total
    for task in prange(s.F * s.Cg, nogil=True, schedule="dynamic", num_threads=num_threads):
        f = task // s.Cg
        cg = task % s.Cg
        gi = f // s.Fg
        acc = &workspace[threadid(), 0]
        for kh in range(s.KH):
            for kw in range(s.KW):
                cols = tap_columns(&s, kw)
                memset(acc, 0, s.OW * sizeof(floating))
                for n in range(s.N):
                    for oh in range(s.OH):
                        ih = oh * s.SH - s.PT + kh * s.DH
                        if 0 <= ih < s.H:
                            x_row = &x[n, gi * s.Cg + cg, ih, 0] + cols.iw0
                            dy_row = &dy[n, f, oh, 0]
                            if s.SW == 1:
                                for ow in range(cols.lo, cols.hi):
                                    acc[ow] += dy_row[ow] * x_row[ow]
                            else:
                                for ow in range(cols.lo, cols.hi):
                                    acc[ow] += dy_row[ow] * x_row[ow * s.SW]
                dw[f, cg, kh, kw] = lane_sum(acc, s.OW)
        if cg == 0:
            total = 0
            for n in range(s.N):
                total = total + lane_sum(&dy[n, f, 0, 0], s.OH * s.OW)
            db[f] = total
