"""rnn (and rnn_step, a sequence of one) on the cuda backend: one GEMM for every step's input
product, then one fused GEMM + activation launch per step; backward through time likewise, then
the weight gradients as split-K GEMMs over all steps."""
from __future__ import annotations

from ._arrays import Call, bias_or_empty, column_sums, fill, flat, gemm, kernels, split_k_gemm


def _rnn_forward(call, xd, h0d, Wxd, Whd, bd, hs, nonlinearity):
    """hs (T, N, H) = all states; xd (T, N, D); h0d None for zeros."""
    rnn = kernels().rnn
    T, N, D = xd.shape
    H = hs.shape[2]
    dt = xd.dtype
    if h0d is None:
        h0d = call.scratch("zero initial state", (N, H), dt)
        fill(h0d, 0)
    # x @ Wx + b for every step in one GEMM, then the recurrence, one launch per step (no host
    # synchronisation in between: launches queue on the stream).
    gemm(rnn.gemm_kernel("ab_bias", dt), xd, Wxd, hs, bd, bd, rnn.gemm_geo(T * N, H, D), T * N, H, D)
    step = rnn.gemm_kernel(f"ab_{nonlinearity}", dt)
    h0f, Whf, hsf = flat(h0d), flat(Whd), flat(hs)  # once, not per step: launches are host-bound
    for t in range(T):
        a, a_offset = (h0f, 0) if t == 0 else (hsf, (t - 1) * N * H)
        gemm(step, a, Whf, hsf, hsf, hsf, rnn.gemm_geo(N, H, H, a_offset, 0, t * N * H), N, H, H)


def _rnn_backward(call, dhs, xd, h0d, Wxd, Whd, hs, dx, dh0, dWx, dWh, db, nonlinearity):
    launch, rnn = kernels().launch, kernels().rnn
    T, N, D = xd.shape
    H = hs.shape[2]
    dt = xd.dtype
    if T == 0 or N == 0:
        for d in (dx, dh0, dWx, dWh, db):
            fill(d, 0)
        return
    # dz[t] = dL/d(pre-activation of step t), seeded at the last step, then back through time.
    dz = call.scratch("rnn pre-activation gradients", (T, N, H), dt)
    grid, block = launch.launch_config("elementwise", N * H)
    rnn.activation_grad_kernel(nonlinearity, dt)[grid, block](flat(dz), flat(dhs), flat(hs), (T - 1) * N * H, N * H)
    back = rnn.gemm_kernel(f"abt_{nonlinearity}_grad", dt)
    dzf, Whf, dhsf, hsf = flat(dz), flat(Whd), flat(dhs), flat(hs)
    for t in range(T - 1, 0, -1):
        gemm(back, dzf, Whf, dzf, dhsf, hsf, rnn.gemm_geo(N, H, H, t * N * H, 0, (t - 1) * N * H), N, H, H)
    abt = rnn.gemm_kernel("abt", dt)
    gemm(abt, dz, Whd, dh0, dh0, dh0, rnn.gemm_geo(N, H, H), N, H, H)
    gemm(abt, dz, Wxd, dx, dx, dx, rnn.gemm_geo(T * N, D, H), T * N, D, H)
    # Weight gradients: X^T dz and Hprev^T dz over all T*N rows, Hprev = [h0, hs[:-1]].
    atb = rnn.gemm_kernel("atb", dt)
    split_k_gemm(call, atb, xd, dz, dWx, rnn.gemm_geo(D, H, T * N), D, H, T * N, 1, D * H)
    hprev = call.scratch("rnn previous states", (T, N, H), dt)
    if h0d is None:
        fill(hprev[0], 0)
    else:
        hprev[0].copy_to_device(h0d)
    if T > 1:
        hprev[1:].copy_to_device(hs[: T - 1])
    split_k_gemm(call, atb, hprev, dz, dWh, rnn.gemm_geo(H, H, T * N), H, H, T * N, 1, H * H)
    column_sums(dz, db, T * N, H, 1)


def _names(count):
    return ("out",) if count == 1 else tuple(f"out[{i}]" for i in range(count))


def forward(x, h0, Wx, Wh, b, g, outs):
    call = Call(x, h0, Wx, Wh, b)
    xd = call.input("input", x)
    shape = g.shaped(g.H)
    hs = call.output("out", outs[0], shape, xd.dtype)
    _rnn_forward(call, xd.reshape(g.T, g.N, g.D), call.input("hx", h0), call.input("Wx", Wx), call.input("Wh", Wh),
                 bias_or_empty(call, b, xd.dtype), hs.reshape(g.T, g.N, g.H), g.nonlinearity)
    return (call.result(hs, outs[0]),)


def backward(dhs, x, h0, Wx, Wh, hs, g, outs):
    call = Call(dhs, x, h0, Wx, Wh, hs)
    xd = call.input("input", x)
    shapes = (g.shaped(g.D), (g.N, g.H), (g.D, g.H), (g.H, g.H), (g.H,))
    grads = [call.output(n, o, s, xd.dtype) for n, o, s in zip(_names(5), outs, shapes)]
    seq = lambda d, width: d.reshape(g.T, g.N, width)  # noqa: E731  (a view, no copy)
    _rnn_backward(call, seq(call.input("grad_output", dhs), g.H), seq(xd, g.D), call.input("hx", h0),
                  call.input("Wx", Wx), call.input("Wh", Wh), seq(call.input("output", hs), g.H),
                  seq(grads[0], g.D), *grads[1:], g.nonlinearity)
    return tuple(call.result(d, o) for d, o in zip(grads, outs))
