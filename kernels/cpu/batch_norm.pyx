# Batch normalisation of (N, C, S) arrays (S: the cells of one plane), forward and backward.
#
# Inputs are validated by the batch_norm spec (fastlayers.ops.batch_norm) before they get here.
# Each thread takes whole channels: a channel's statistics and its outputs come from its N planes
# alone, so one parallel region does the whole call, and each channel's sums (double, in the fixed
# order of batch_norm_loops.h) do not depend on the thread count. After the first pass a channel's
# planes are read again from cache when they fit (N*S values: 128 KiB for 32 images of 32x32).
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

cdef extern from "batch_norm_loops.h" nogil:
    double fl_bn_sum_float(const float* x, Py_ssize_t n, double shift, int square)
    double fl_bn_sum_double(const double* x, Py_ssize_t n, double shift, int square)
    void fl_bn_grad_sums_float(const float* dy, const float* x, Py_ssize_t n, double mean, double* sums)
    void fl_bn_grad_sums_double(const double* dy, const double* x, Py_ssize_t n, double mean, double* sums)
    void fl_bn_affine_float(const float* x, float* y, Py_ssize_t n, float mean, float scale, float shift)
    void fl_bn_affine_double(const double* x, double* y, Py_ssize_t n, double mean, double scale, double shift)
    void fl_bn_grad_input_float(const float* dy, const float* x, float* dx, Py_ssize_t n, float mean,
                                float a, float b, float c)
    void fl_bn_grad_input_double(const double* dy, const double* x, double* dx, Py_ssize_t n, double mean,
                                 double a, double b, double c)


cdef inline double _sum(const floating* x, Py_ssize_t n, double shift, int square) noexcept nogil:
    if floating is float:
        return fl_bn_sum_float(x, n, shift, square)
    else:
        return fl_bn_sum_double(x, n, shift, square)


cdef inline void _affine(const floating* x, floating* y, Py_ssize_t n, double mean, double scale,
                         double shift) noexcept nogil:
    if floating is float:
        fl_bn_affine_float(x, y, n, <float>mean, <float>scale, <float>shift)
    else:
        fl_bn_affine_double(x, y, n, mean, scale, shift)


cdef void _channel_stats(const floating[:, :, ::1] x, Py_ssize_t c, double* mean, double* var) noexcept nogil:
    """Mean and biased variance of channel c: two passes, the second around the mean (no
    cancellation however large the mean)."""
    cdef Py_ssize_t N = x.shape[0], S = x.shape[2], n
    cdef double total = 0, m
    for n in range(N):
        total = total + _sum(&x[n, c, 0], S, 0.0, 0)
    m = total / (N * S)
    total = 0
    for n in range(N):
        total = total + _sum(&x[n, c, 0], S, m, 1)
    mean[0] = m
    var[0] = total / (N * S)


cdef void _channel_forward(const floating[:, :, ::1] x, double* mean, double* var, double weight, double bias,
                           double eps, bint training, floating[:, :, ::1] y, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t n
    cdef double scale
    if training:
        _channel_stats(x, c, mean, var)
    scale = weight / sqrt(var[0] + eps)
    for n in range(x.shape[0]):
        _affine(&x[n, c, 0], &y[n, c, 0], x.shape[2], mean[0], scale, bias)


def forward(const floating[:, :, ::1] x, double[::1] mean, double[::1] var, const double[::1] weight,
            const double[::1] bias, double eps, bint training, floating[:, :, ::1] y, int num_threads):
    """y = (x - mean) / sqrt(var + eps) * weight + bias per channel. ``training``: mean and var
    (biased) are the batch's, written into ``mean`` and ``var``; else they are read from them
    (the running statistics). N * S > 0."""
    cdef Py_ssize_t c
    for c in prange(x.shape[1], nogil=True, schedule="static", num_threads=num_threads):
        _channel_forward(x, &mean[c], &var[c], weight[c], bias[c], eps, training, y, c)


cdef void _channel_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, double* mean,
                            double* var, double weight, double eps, bint training, floating[:, :, ::1] dx,
                            Py_ssize_t c, double* grad_weight, double* grad_bias) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], S = x.shape[2], n
    cdef double M = N * S, invstd, k, b, sums[2]
    if training:
        _channel_stats(x, c, mean, var)
    invstd = 1 / sqrt(var[0] + eps)
    sums[0] = 0
    sums[1] = 0
    for n in range(N):
        if floating is float:
            fl_bn_grad_sums_float(&dy[n, c, 0], &x[n, c, 0], S, mean[0], sums)
        else:
            fl_bn_grad_sums_double(&dy[n, c, 0], &x[n, c, 0], S, mean[0], sums)
    grad_bias[0] = sums[0]
    grad_weight[0] = sums[1] * invstd
    k = weight * invstd
    b = -k * invstd * invstd * sums[1] / M  # through the batch variance
    for n in range(N):
        if not training:  # mean and var are constants: dx = dy * weight * invstd
            _affine(&dy[n, c, 0], &dx[n, c, 0], S, 0.0, k, 0.0)
        elif floating is float:
            fl_bn_grad_input_float(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, <float>mean[0], <float>k,
                                   <float>b, <float>(-k * sums[0] / M))
        else:
            fl_bn_grad_input_double(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mean[0], k, b, -k * sums[0] / M)


def backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
             const double[::1] weight, double eps, bint training, floating[:, :, ::1] dx,
             double[::1] grad_weight, double[::1] grad_bias, int num_threads):
    """Gradients of ``forward``. ``training``: the batch statistics are recomputed from x (into
    ``mean`` and ``var``) and dx goes through them; else mean and var are the running statistics,
    constants. grad_weight and grad_bias are written in double."""
    cdef Py_ssize_t c
    for c in prange(x.shape[1], nogil=True, schedule="static", num_threads=num_threads):
        _channel_backward(dy, x, &mean[c], &var[c], weight[c], eps, training, dx, c, &grad_weight[c], &grad_bias[c])
