"""lstm and gru on the cuda backend: the GEMMs of the RNN kernels, the gates in
kernels/cuda/gated_rnn.py: per step one launch of h_prev @ Wh and one of the cell (forward), or of
the backward cell and d(pre-activations) @ Wh^T. Steps arrive as sequences of one (the spec views
them so)."""
from __future__ import annotations

from ._arrays import Call, bias_or_empty, column_sums, fill, flat, gemm, kernels, split_k_gemm


def _zeros_state(call, name, s, N, H, dt):
    if s is not None:
        return s
    z = call.scratch(name, (N, H), dt)
    fill(z, 0)
    return z


def _previous_states(call, name, s0, ss):
    """(T, N, H): s0, then ss[:-1], on the device."""
    T = ss.shape[0]
    prev = call.scratch(name, ss.shape, ss.dtype)
    prev[0].copy_to_device(s0)
    if T > 1:
        prev[1:].copy_to_device(ss[: T - 1])
    return prev


def _optional(call, name, a, dt):
    """``a`` on the GPU, or an empty array: the kernels skip an input with no elements."""
    return call.input(name, a) if a is not None else call.empty(0, dt)


def _start(arrays, x, Wh):
    """The call over every array argument (for its aliasing checks), x on the device, and the
    sizes (T, N, D, H, G*H)."""
    call = Call(*arrays)
    xd = call.input("input", x)
    return call, xd, (*xd.shape, *Wh.shape)


def _input_projection(call, xd, Wx, Wh):
    """The forward's start: Wh on the device, x @ Wx of every step (without the bias) and the
    (N, G*H) buffer of one step's h_prev @ Wh."""
    rnn = kernels().rnn
    T, N, D = xd.shape
    Wxd, Whd = call.input("Wx", Wx), call.input("Wh", Wh)
    G, dt = Whd.shape[1], xd.dtype
    zx = call.scratch("gated pre-activations", (T, N, G), dt)
    u = call.scratch("gated recurrent products", (N, G), dt)
    gemm(rnn.gemm_kernel("ab", dt), xd, Wxd, zx, zx, zx, rnn.gemm_geo(T * N, G, D), T * N, G, D)
    return Whd, zx, u


def _gradients(call, outs, shapes, dt):
    """The backward's outputs on the device (the caller's buffers where given)."""
    return [call.output(f"out[{i}]", o, s, dt) for i, (o, s) in enumerate(zip(outs, shapes))]


def _pre_activations(call, xd, h0d, hsd, Wx, Wh):
    """The backward's start: Wx and Wh on the device, every step's previous state h_prev, and its
    recomputed pre-activations x @ Wx and h_prev @ Wh, each (T, N, G*H) (without the biases), in
    scratch buffers the backward cells overwrite."""
    rnn = kernels().rnn
    Wxd, Whd = call.input("Wx", Wx), call.input("Wh", Wh)
    hprev = _previous_states(call, "gated previous states", h0d, hsd)
    T, N, D = xd.shape
    H, G = Whd.shape
    dt = xd.dtype
    zx = call.scratch("gated pre-activations", (T, N, G), dt)
    zh = call.scratch("gated recurrent pre-activations", (T, N, G), dt)
    ab = rnn.gemm_kernel("ab", dt)
    gemm(ab, xd, Wxd, zx, zx, zx, rnn.gemm_geo(T * N, G, D), T * N, G, D)
    gemm(ab, hprev, Whd, zh, zh, zh, rnn.gemm_geo(T * N, G, H), T * N, G, H)
    return Wxd, Whd, hprev, zx, zh


def _zero_results(call, grads, outs):
    """An empty sequence or batch: every gradient is zeros."""
    for d in grads:
        fill(d, 0)
    return tuple(call.result(d, o) for d, o in zip(grads, outs))


def _finish_backward(call, xd, Wxd, hprev, dzx, dzh, parameter_grads, grads, outs):
    """dx = dzx @ Wx^T and dWx, dWh, dbx, dbh (``parameter_grads``, dbh None for the LSTM) from
    the pre-activations' gradients dzx, dzh (the same array for the LSTM); then every gradient
    (``grads``) on the caller's side."""
    rnn = kernels().rnn
    T, N, D = xd.shape
    dx, dWx, dWh, dbx, dbh = parameter_grads
    H, G = dWh.shape
    gemm(rnn.gemm_kernel("abt", xd.dtype), dzx, Wxd, dx, dx, dx, rnn.gemm_geo(T * N, D, G), T * N, D, G)
    atb = rnn.gemm_kernel("atb", xd.dtype)
    split_k_gemm(call, atb, xd, dzx, dWx, rnn.gemm_geo(D, G, T * N), D, G, T * N, 1, D * G)
    split_k_gemm(call, atb, hprev, dzh, dWh, rnn.gemm_geo(H, G, T * N), H, G, T * N, 1, H * G)
    column_sums(dzx, dbx, T * N, G, 1)
    if dbh is not None:
        column_sums(dzh, dbh, T * N, G, 1)
    return tuple(call.result(d, o) for d, o in zip(grads, outs))


def lstm_forward(x, h0, c0, Wx, Wh, b, g, outs):
    launch, rnn, gated = kernels().launch, kernels().rnn, kernels().gated_rnn
    call, xd, (T, N, D, H, G) = _start((x, h0, c0, Wx, Wh, b), x, Wh)
    dt = xd.dtype
    hs = call.output("out[0]", outs[0], (T, N, H), dt)
    cs = call.output("out[1]", outs[1], (T, N, H), dt)
    if hs.size:
        Whd, zx, u = _input_projection(call, xd, Wx, Wh)
        bd = bias_or_empty(call, b, dt)
        h0d = _zeros_state(call, "zero initial state", call.input("hx", h0), N, H, dt)
        c0d = _zeros_state(call, "zero initial cell state", call.input("cx", c0), N, H, dt)
        ab = rnn.gemm_kernel("ab", dt)
        cell = gated.lstm_cell_kernel(dt)
        grid, block = launch.launch_config("elementwise", N * H)
        hsf, csf, zxf, uf, Whf = flat(hs), flat(cs), flat(zx), flat(u), flat(Whd)
        for t in range(T):
            (hp, cp, off) = (flat(h0d), flat(c0d), 0) if t == 0 else (hsf, csf, (t - 1) * N * H)
            gemm(ab, hp, Whf, uf, uf, uf, rnn.gemm_geo(N, G, H, off), N, G, H)
            cell[grid, block](zxf, uf, bd, cp, csf, hsf, t * N * G, off, t * N * H, N, H)
    # A forward asked to keep its gates keeps none (None): the backward recomputes them.
    return (call.result(hs, outs[0]), call.result(cs, outs[1])) + ((None,) if g.keep else ())


def lstm_backward(dhs, dcs, x, h0, c0, Wx, Wh, b, hs, cs, gates, g, outs):
    # gates: a host workspace's, unused: the cuda kernels recompute the gates.
    launch, rnn, gated = kernels().launch, kernels().rnn, kernels().gated_rnn
    call, xd, (T, N, D, H, G) = _start((dhs, dcs, x, h0, c0, Wx, Wh, b, hs, cs), x, Wh)
    dt = xd.dtype
    grads = _gradients(call, outs, ((T, N, D), (N, H), (N, H), (D, G), (H, G), (G,)), dt)
    dx, dh0, dc0, dWx, dWh, db = grads
    if T == 0 or N == 0:
        return _zero_results(call, grads, outs)
    bd = bias_or_empty(call, b, dt)
    hsd, csd, dhsd = call.input("output", hs), call.input("cell", cs), call.input("grad_output", dhs)
    dcsd = flat(_optional(call, "grad_cell", dcs, dt))
    h0d = _zeros_state(call, "zero initial state", call.input("hx", h0), N, H, dt)
    c0d = _zeros_state(call, "zero initial cell state", call.input("cx", c0), N, H, dt)
    # dz: the x part of the pre-activations, overwritten by their gradients.
    Wxd, Whd, hprev, dz, zh = _pre_activations(call, xd, h0d, hsd, Wx, Wh)
    abt = rnn.gemm_kernel("abt", dt)
    dh_next = call.scratch("gated hidden-state carry", (N, H), dt)
    fill(dh_next, 0)
    fill(dc0, 0)  # the cell-state carry, dL/dc0 once the loop is done
    cell = gated.lstm_cell_backward_kernel(dt)
    grid, block = launch.launch_config("elementwise", N * H)
    dzf, zhf, Whf, csf, c0f = flat(dz), flat(zh), flat(Whd), flat(csd), flat(c0d)
    for t in range(T - 1, -1, -1):
        cp, cp_off = (c0f, 0) if t == 0 else (csf, (t - 1) * N * H)
        cell[grid, block](dzf, zhf, bd, cp, csf, flat(dhsd), dcsd, flat(dh_next), flat(dc0), t * N * G, cp_off,
                          t * N * H, N, H)
        target = dh0 if t == 0 else dh_next
        gemm(abt, dzf, Whf, flat(target), dzf, dzf, rnn.gemm_geo(N, H, G, t * N * G), N, H, G)
    return _finish_backward(call, xd, Wxd, hprev, dz, dz, (dx, dWx, dWh, db, None), grads, outs)


def gru_forward(x, h0, Wx, Wh, bx, bh, g, outs):
    launch, rnn, gated = kernels().launch, kernels().rnn, kernels().gated_rnn
    call, xd, (T, N, D, H, G) = _start((x, h0, Wx, Wh, bx, bh), x, Wh)
    dt = xd.dtype
    hs = call.output("out", outs[0], (T, N, H), dt)
    if hs.size:
        Whd, a, u = _input_projection(call, xd, Wx, Wh)
        bxd, bhd = _optional(call, "bias_ih", bx, dt), _optional(call, "bias_hh", bh, dt)
        h0d = _zeros_state(call, "zero initial state", call.input("hx", h0), N, H, dt)
        ab = rnn.gemm_kernel("ab", dt)
        cell = gated.gru_cell_kernel(dt)
        grid, block = launch.launch_config("elementwise", N * H)
        hsf, af, uf, Whf = flat(hs), flat(a), flat(u), flat(Whd)
        for t in range(T):
            hp, off = (flat(h0d), 0) if t == 0 else (hsf, (t - 1) * N * H)
            gemm(ab, hp, Whf, uf, uf, uf, rnn.gemm_geo(N, G, H, off), N, G, H)
            cell[grid, block](af, uf, bxd, bhd, hp, hsf, t * N * G, 0, off, t * N * H, N, H)
    return (call.result(hs, outs[0]),) + ((None,) if g.keep else ())


def gru_backward(dhs, x, h0, Wx, Wh, bx, bh, hs, gates, g, outs):
    # gates: a host workspace's, unused: the cuda kernels recompute the gates.
    launch, rnn, gated = kernels().launch, kernels().rnn, kernels().gated_rnn
    call, xd, (T, N, D, H, G) = _start((dhs, x, h0, Wx, Wh, bx, bh, hs), x, Wh)
    dt = xd.dtype
    grads = _gradients(call, outs, ((T, N, D), (N, H), (D, G), (H, G), (G,), (G,)), dt)
    dx, dh0, dWx, dWh, dbx, dbh = grads
    if T == 0 or N == 0:
        return _zero_results(call, grads, outs)
    bxd, bhd = _optional(call, "bias_ih", bx, dt), _optional(call, "bias_hh", bh, dt)
    hsd, dhsd = call.input("output", hs), call.input("grad_output", dhs)
    h0d = _zeros_state(call, "zero initial state", call.input("hx", h0), N, H, dt)
    Wxd, Whd, hprev, da, du = _pre_activations(call, xd, h0d, hsd, Wx, Wh)
    abt = rnn.gemm_kernel("abt", dt)
    carry_z = call.scratch("gated hidden-state carry", (N, H), dt)
    carry_h = call.scratch("gated recurrent carry", (N, H), dt)
    fill(carry_z, 0)
    fill(carry_h, 0)
    cell = gated.gru_cell_backward_kernel(dt)
    grid, block = launch.launch_config("elementwise", N * H)
    daf, duf, Whf, hprevf = flat(da), flat(du), flat(Whd), flat(hprev)
    for t in range(T - 1, -1, -1):
        cell[grid, block](daf, duf, bxd, bhd, hprevf, flat(dhsd), flat(carry_z), flat(carry_h), t * N * H,
                          t * N * H, N, H)
        gemm(abt, duf, Whf, flat(carry_h), duf, duf, rnn.gemm_geo(N, H, G, t * N * G), N, H, G)
    gated.add_kernel(dt)[grid, block](flat(carry_z), flat(carry_h), flat(dh0), N * H)
    return _finish_backward(call, xd, Wxd, hprev, da, du, (dx, dWx, dWh, dbx, dbh), grads, outs)
