"""linear on the cuda backend: the plain row-major GEMMs of kernels/cuda/rnn.py. Forward
``y = x @ weight.T + bias`` in one GEMM with the bias in its epilogue; backward ``dx = dy @ weight``,
``dW = dy^T x`` (split-K) and ``db`` (column sums of dy).

A weight that is the transpose of a C-ordered (in, out) array (``Dense``'s ``W.T``) is read through
that array, without a copy: the GEMMs take it as B instead of B^T. Its gradient then comes back in
the same layout (the transpose of a C-ordered (in, out) array, so ``grad_weight.T`` is C-ordered)
where the inputs were on the GPU and no ``out`` was given; otherwise C-ordered (out, in)."""
from __future__ import annotations

from ._arrays import (Call, _device_array, bias_or_empty, column_sums, gemm, is_transpose_of_contiguous, kernels,
                      split_k_gemm, transpose_view)


def _weight(call, w):
    """``(matrix, transposed)``: the (out, in) weight on the device as a row-major matrix, or, when
    it is the transpose of a C-ordered array, that (in, out) array (``transposed`` True)."""
    d = _device_array(w)
    if d is None:
        if w.ndim == 2 and not w.flags.c_contiguous and w.flags.f_contiguous:
            return call.input("weight", w.T), True
    elif is_transpose_of_contiguous(d):
        return transpose_view(d), True
    return call.input("weight", w), False


def forward(x, w, b, g, outs):
    rnn = kernels().rnn
    call = Call(x, w, b)
    xd = call.input("input", x)
    wd, transposed = _weight(call, w)
    bd = bias_or_empty(call, b, xd.dtype)
    y = call.output("out", outs[0], g.lead + (g.O,), xd.dtype)
    kernel = rnn.gemm_kernel("ab_bias" if transposed else "abt_bias", xd.dtype)
    gemm(kernel, xd, wd, y, bd, bd, rnn.gemm_geo(g.M, g.O, g.I), g.M, g.O, g.I)
    return (call.result(y, outs[0]),)


def backward(dy, x, w, g, outs):
    rnn = kernels().rnn
    call = Call(dy, x, w)
    dyd, xd = call.input("grad_output", dy), call.input("input", x)
    wd, transposed = _weight(call, w)
    dt = xd.dtype
    dx = call.output("out[0]", outs[0], g.lead + (g.I,), dt)
    db = call.output("out[2]", outs[2], (g.O,), dt)
    # dx (M, I) = dy (M, O) @ weight (O, I): weight as B, or its (I, O) transpose as B^T.
    gemm(rnn.gemm_kernel("abt" if transposed else "ab", dt), dyd, wd, dx, dx, dx, rnn.gemm_geo(g.M, g.I, g.O),
         g.M, g.I, g.O)
    atb = rnn.gemm_kernel("atb", dt)
    if transposed and call.gpu and outs[1] is None:
        # dW^T (I, O) = x^T dy: the gradient in the weight's own layout.
        dwt = call.empty((g.I, g.O), dt)
        split_k_gemm(call, atb, xd, dyd, dwt, rnn.gemm_geo(g.I, g.O, g.M), g.I, g.O, g.M, 1, g.I * g.O)
        dw = transpose_view(dwt)
    else:
        dw = call.output("out[1]", outs[1], (g.O, g.I), dt)
        split_k_gemm(call, atb, dyd, xd, dw, rnn.gemm_geo(g.O, g.I, g.M), g.O, g.I, g.M, 1, g.O * g.I)
    column_sums(dyd, db, g.M, g.O, 1)
    return tuple(call.result(d, o) for d, o in zip((dx, dw, db), outs))
