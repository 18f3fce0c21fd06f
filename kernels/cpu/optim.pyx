# The optimisers' updates of host parameters (fastlayers.optim): each parameter's step in one pass
# over its arrays, in place, parallel over fixed blocks (every element's update is its own, so the
# result does not depend on the thread count). The arithmetic (optim_updates.h) is that of the
# NumPy expressions optim.py runs on the arrays this module does not take (other dtypes,
# layouts), operation for operation in the parameter's type with the same roundings: this module
# is compiled without contracting a multiply and an add into one FMA (setup.py), so both give the
# same bits.
#
# Sizes: optim.py passes 1-D views of one length (checked again here before the loops).
from cython cimport floating
from cython.parallel cimport prange

cdef extern from "optim_updates.h" nogil:
    void fl_sgd_block_float(float* p, const float* g, float* v, Py_ssize_t n, float lr, float momentum,
                            float weight_decay, int decay, int has_v, int first)
    void fl_sgd_block_double(double* p, const double* g, double* v, Py_ssize_t n, double lr, double momentum,
                             double weight_decay, int decay, int has_v, int first)
    void fl_adam_block_float(float* p, const float* g, float* m, float* v, Py_ssize_t n, float lr, float b1,
                             float b2, float c1, float c2, float d1, float d2, float eps, float weight_decay,
                             int decay)
    void fl_adam_block_double(double* p, const double* g, double* m, double* v, Py_ssize_t n, double lr,
                              double b1, double b2, double c1, double c2, double d1, double d2, double eps,
                              double weight_decay, int decay)

cdef enum:
    BLOCK = 16384  # elements a task, as relu.pyx


cdef inline void _sgd_block(floating* p, const floating* g, floating* v, Py_ssize_t n, floating lr,
                            floating momentum, floating weight_decay, bint decay, bint has_v,
                            bint first) noexcept nogil:
    if floating is float:
        fl_sgd_block_float(p, g, v, n, lr, momentum, weight_decay, decay, has_v, first)
    else:
        fl_sgd_block_double(p, g, v, n, lr, momentum, weight_decay, decay, has_v, first)


def sgd_update(floating[::1] p, const floating[::1] g, floating[::1] v, double lr, double momentum,
               double weight_decay, bint first, int num_threads):
    """p -= lr * (momentum buffer or gradient) for SGD (fastlayers.optim.SGD): d = g + weight_decay
    * p (weight_decay 0: g); with a buffer v (len(v) = len(p); empty: none) v = d at the first step,
    else momentum * v + d, then p -= lr * v."""
    cdef Py_ssize_t n = p.shape[0], b
    if g.shape[0] != n or v.shape[0] not in (0, n):
        raise ValueError(f"g must have the {n} elements of p and v those or none, got {g.shape[0]} and {v.shape[0]}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    if n == 0:
        return
    cdef bint decay = weight_decay != 0, has_v = v.shape[0] != 0
    cdef floating* vp = &v[0] if has_v else NULL
    for b in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule="static",
                    num_threads=num_threads if n > BLOCK else 1):
        _sgd_block(&p[b * BLOCK], &g[b * BLOCK], vp + b * BLOCK if has_v else NULL, min(BLOCK, n - b * BLOCK),
                   <floating>lr, <floating>momentum, <floating>weight_decay, decay, has_v, first)


cdef inline void _adam_block(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
                             floating lr, floating b1, floating b2, floating c1, floating c2, floating d1,
                             floating d2, floating eps, floating weight_decay, bint decay) noexcept nogil:
    if floating is float:
        fl_adam_block_float(p, g, m, v, n, lr, b1, b2, c1, c2, d1, d2, eps, weight_decay, decay)
    else:
        fl_adam_block_double(p, g, m, v, n, lr, b1, b2, c1, c2, d1, d2, eps, weight_decay, decay)


def adam_update(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v, double lr,
                double beta1, double beta2, double eps, double weight_decay, long step, int num_threads):
    """One Adam step (fastlayers.optim.Adam) at step count ``step`` (from 1): d = g + weight_decay
    * p; m = beta1 * m + (1 - beta1) * d; v = beta2 * v + (1 - beta2) * d * d;
    p -= lr * (m / (1 - beta1**step)) / (sqrt(v / (1 - beta2**step)) + eps)."""
    cdef Py_ssize_t n = p.shape[0], b
    if g.shape[0] != n or m.shape[0] != n or v.shape[0] != n:
        raise ValueError(f"g, m and v must have the {n} elements of p, got {g.shape[0]}, {m.shape[0]} and {v.shape[0]}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}")
    if n == 0:
        return
    cdef double d1 = 1 - beta1 ** step, d2 = 1 - beta2 ** step
    for b in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule="static",
                    num_threads=num_threads if n > BLOCK else 1):
        _adam_block(&p[b * BLOCK], &g[b * BLOCK], &m[b * BLOCK], &v[b * BLOCK], min(BLOCK, n - b * BLOCK),
                    <floating>lr, <floating>beta1, <floating>beta2, <floating>(1 - beta1), <floating>(1 - beta2),
                    <floating>d1, <floating>d2, <floating>eps, <floating>weight_decay, weight_decay != 0)
