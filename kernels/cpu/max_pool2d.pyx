# Max-pool 2-D forward and backward over NCHW planes, parallel over the N*C planes.
# Inputs are validated by fastlayers._params before they get here.
from cython.parallel cimport prange
from libc.math cimport isnan
from libc.string cimport memset
cimport cython

ctypedef fused floating:
    float
    double


@cython.boundscheck(False)
@cython.wraparound(False)
def max_pool2d_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, long long[:, :, ::1] indices,
                       int KH, int KW, int SH, int SW, int PH, int PW, int num_threads):
    """x (P, H, W) -> y, indices (P, OH, OW); P = N*C planes. First maximum wins; NaN wins."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2]
    cdef Py_ssize_t p, oh, ow, ih, iw, h0, h1, w0, w1, best
    cdef floating v, m
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads):
        for oh in range(OH):
            h0 = oh * SH - PH
            h1 = min(h0 + KH, H)
            h0 = max(h0, 0)
            for ow in range(OW):
                w0 = ow * SW - PW
                w1 = min(w0 + KW, W)
                w0 = max(w0, 0)
                best = h0 * W + w0
                m = x[p, h0, w0]
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = x[p, ih, iw]
                        if isnan(m):
                            break
                        if v > m or isnan(v):
                            m = v
                            best = ih * W + iw
                y[p, oh, ow] = m
                indices[p, oh, ow] = best


@cython.boundscheck(False)
@cython.wraparound(False)
def max_pool2d_backward(const floating[:, ::1] dy, const long long[:, ::1] indices, floating[:, ::1] dx,
                        int num_threads):
    """Scatter-add dy (P, OH*OW) into dx (P, H*W) at indices. Returns the number of indices
    outside [0, H*W) (skipped, never written)."""
    cdef Py_ssize_t P = dy.shape[0], Q = dy.shape[1], HW = dx.shape[1]
    cdef Py_ssize_t p, q
    cdef long long i
    cdef Py_ssize_t bad = 0
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads):
        memset(&dx[p, 0], 0, HW * sizeof(floating))
        for q in range(Q):
            i = indices[p, q]
            if i < 0 or i >= HW:
                bad += 1
            else:
                dx[p, i] += dy[p, q]
    return bad
