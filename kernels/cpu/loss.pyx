# Softmax cross-entropy of host logits (fastlayers.losses): one pass per row of K scores, its
# maximum, the sum of the shifted exponentials and the log-sum in double, the row's loss term
# (max + log sum - z[label]) and its gradient row (softmax - one-hot, times the caller's scale)
# rounded once to the logits' type; the rows' losses summed in order on one thread (the calls
# are small: a batch of scores, not of images).
#
# Bounds: losses.py passes (N, K) logits and gradient and N labels; the shapes and every label's
# range are checked here before the loop.
from cython cimport floating
from libc.math cimport exp, log


def softmax_cross_entropy(const floating[:, ::1] z, const Py_ssize_t[::1] labels, floating[:, ::1] dz,
                          double scale):
    """The sum over rows i of -log softmax(z[i])[labels[i]], in double; dz[i] = (softmax(z[i]) -
    one_hot(labels[i])) * scale."""
    cdef Py_ssize_t N = z.shape[0], K = z.shape[1], i, k, label
    cdef double m, s, total = 0
    if labels.shape[0] != N or dz.shape[0] != N or dz.shape[1] != K:
        raise ValueError(f"labels must have {N} entries and dz the shape ({N}, {K}), got {labels.shape[0]} and "
                         f"({dz.shape[0]}, {dz.shape[1]})")
    for i in range(N):
        if not 0 <= labels[i] < K:
            raise ValueError(f"labels must lie in [0, {K}), got {labels[i]} at {i}")
    with nogil:
        for i in range(N):
            label = labels[i]
            m = z[i, 0]
            for k in range(1, K):
                if z[i, k] > m:
                    m = z[i, k]
            s = 0
            for k in range(K):
                s = s + exp(z[i, k] - m)
            total = total + (m + log(s) - z[i, label])
            for k in range(K):
                dz[i, k] = <floating>((exp(z[i, k] - m) / s - (k == label)) * scale)
    return total
