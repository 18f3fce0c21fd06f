"""The NumPy reference: every op, forward and backward, written to be obviously right.

This module is the oracle of the test suite and the ``"numpy"`` backend. It favours clarity over
speed, but stays vectorised so that tests over hundreds of small shapes take seconds. Results are
computed in the inputs' dtype (float32 or float64) except where a comment says otherwise.

Conventions (docs/design.md): NCHW arrays, weights ``(F, C // groups, KH, KW)``, convolution is
cross-correlation; sequences are time-major ``(T, N, D)``, ``h_t = act(x_t @ Wx + h_{t-1} @ Wh + b)``.

The public functions take the arguments of ``fastlayers.functional`` (without its keyword-only
options) and validate them through the same specs; the ``*_impl`` functions take validated arrays
and the op's geometry (they are the ``"numpy"`` backend's kernels).
"""
from __future__ import annotations

import numpy as np

from .ops import BATCH_NORM, CONV2D, FUNCTIONS, GRU, LINEAR, LSTM, MAX_POOL2D, RELU, RNN
from .ops._checks import check_labels
from .ops._spec import run

# Every function of the functional API (``ops.FUNCTIONS``), and the layers' own ops.
__all__ = [*FUNCTIONS, "flatten", "flatten_backward", "softmax_cross_entropy"]

# ============================================================================ conv2d
#
# For every kernel tap (kh, kw) the input pixels it touches form a strided view of the padded
# input; the convolution is the sum over taps of a (channels -> filters) contraction of that view.


def _pad_input(x, g):
    return np.pad(x, ((0, 0), (0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right)))


def _tap(a, g, kh, kw):
    """The (N, C, OH, OW) view of padded input ``a`` seen by kernel tap (kh, kw)."""
    h0, w0 = kh * g.dilation_h, kw * g.dilation_w
    return a[:, :, h0 : h0 + g.stride_h * (g.OH - 1) + 1 : g.stride_h, w0 : w0 + g.stride_w * (g.OW - 1) + 1 : g.stride_w]


def _grouped(a, groups):
    """(N, G*K, ...) -> (N, G, K, ...)."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, *a.shape[2:])


def conv2d_impl(x, w, b, g):
    xp = _pad_input(x, g)
    G = g.groups
    wg = w.reshape(G, g.F // G, g.C // G, g.KH, g.KW)
    y = np.zeros((g.N, G, g.F // G, g.OH, g.OW), dtype=x.dtype)
    for kh in range(g.KH):
        for kw in range(g.KW):
            # y[n, g, f, i, j] += sum_c x[n, g, c, i, j] * w[g, f, c]
            y += np.einsum("ngcij,gfc->ngfij", _grouped(_tap(xp, g, kh, kw), G), wg[:, :, :, kh, kw])
    y = y.reshape(g.y_shape)
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_backward_impl(dy, x, w, g):
    """(dx, dw, db); dx None when ``g.input_grad`` is False."""
    xp = _pad_input(x, g)
    G = g.groups
    wg = w.reshape(G, g.F // G, g.C // G, g.KH, g.KW)
    dyg = _grouped(dy, G)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(wg)
    for kh in range(g.KH):
        for kw in range(g.KW):
            tap = _grouped(_tap(xp, g, kh, kw), G)
            dw[:, :, :, kh, kw] = np.einsum("ngfij,ngcij->gfc", dyg, tap)
            if g.input_grad:
                _grouped(_tap(dxp, g, kh, kw), G)[...] += np.einsum("ngfij,gfc->ngcij", dyg, wg[:, :, :, kh, kw])
    dx = dxp[:, :, g.pad_top : g.pad_top + g.H, g.pad_left : g.pad_left + g.W]
    return np.ascontiguousarray(dx) if g.input_grad else None, dw.reshape(w.shape), dy.sum(axis=(0, 2, 3))


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """2-D cross-correlation: input (N, C, H, W), weight (F, C // groups, KH, KW), bias (F,) -> (N, F, OH, OW)."""
    problem = CONV2D.forward(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return run(CONV2D, problem, "numpy", "auto", None)


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                    input_grad=True):
    """Gradients (grad_input, grad_weight, grad_bias) of conv2d given grad_output (N, F, OH, OW);
    grad_input None with ``input_grad=False``."""
    problem = CONV2D.backward(grad_output, input, weight, stride, padding, dilation, groups, padding_mode,
                              input_grad)
    return run(CONV2D, problem, "numpy", "auto", None, single_out=False)


# ============================================================================ max_pool2d


def max_pool2d_impl(x, g):
    """Max over each window; the index is the flat ``ih * W + iw`` of the first maximum in
    row-major window order (a NaN counts as the maximum, and of several NaNs the last wins). Padding never wins: every window holds
    at least one input element, and only input elements are candidates."""
    # Pad far enough right/bottom that ceil-mode windows are whole; the extra cells are not valid.
    ext_h, ext_w = g.dilation_h * (g.KH - 1) + 1, g.dilation_w * (g.KW - 1) + 1
    Hp = max(g.H + 2 * g.pad_h, (g.OH - 1) * g.stride_h + ext_h)
    Wp = max(g.W + 2 * g.pad_w, (g.OW - 1) * g.stride_w + ext_w)
    pads = ((0, 0), (0, 0), (g.pad_h, Hp - g.H - g.pad_h), (g.pad_w, Wp - g.W - g.pad_w))
    xp = np.pad(x, pads, constant_values=-np.inf)
    valid = np.pad(np.ones((g.H, g.W), dtype=bool), pads[2:], constant_values=False)

    def windows(a):
        v = np.lib.stride_tricks.sliding_window_view(a, (ext_h, ext_w), axis=(-2, -1))
        v = v[..., :: g.stride_h, :: g.stride_w, :: g.dilation_h, :: g.dilation_w][..., : g.OH, : g.OW, :, :]
        return v.reshape(*v.shape[:-2], g.KH * g.KW)

    win, ok = windows(xp), windows(valid)
    y = win.max(axis=-1)  # NaN propagates through max
    yk = y[..., None]
    hit = ok & ((win == yk) | (np.isnan(win) & np.isnan(yk)))
    # The first maximum, but of several NaNs the last (PyTorch's CPU rule: v wins when v > max or
    # v is NaN).
    first, last = hit.argmax(axis=-1), hit.shape[-1] - 1 - hit[..., ::-1].argmax(axis=-1)
    local = np.where(np.isnan(y), last, first)
    y = np.take_along_axis(win, local[..., None], axis=-1)[..., 0]  # the winner's bits: of tied zeros, its sign
    kh, kw = np.divmod(local, g.KW)
    ih = np.arange(g.OH)[:, None] * g.stride_h - g.pad_h + kh * g.dilation_h
    iw = np.arange(g.OW)[None, :] * g.stride_w - g.pad_w + kw * g.dilation_w
    return y, (ih * g.W + iw).astype(np.int64)


def max_pool2d_backward_impl(dy, indices, input_shape):
    N, C, H, W = input_shape
    planes, plane_size = N * C, H * W
    flat = indices.reshape(planes, indices.shape[2] * indices.shape[3]) + (np.arange(planes) * plane_size)[:, None]
    # bincount adds the contributions of overlapping windows (in float64, rounded once).
    dx = np.bincount(flat.ravel(), weights=dy.ravel(), minlength=planes * plane_size)
    return dx.astype(dy.dtype).reshape(input_shape)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling of input (N, C, H, W) -> output (N, C, OH, OW) and, if ``return_indices``, the
    int64 flat index ``ih * W + iw`` of each maximum within its (H, W) plane (PyTorch's convention)."""
    problem = MAX_POOL2D.forward(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return run(MAX_POOL2D, problem, "numpy", "auto", None)


def max_pool2d_backward(grad_output, indices, input_shape):
    """Route grad_output (N, C, OH, OW) to the argmax positions given by ``indices``; returns the
    gradient of ``input_shape``. Overlapping windows that share a maximum add their gradients."""
    problem = MAX_POOL2D.backward(grad_output, indices, input_shape)
    return run(MAX_POOL2D, problem, "numpy", "auto", None)


# ============================================================================ rnn


_ACTIVATIONS = {
    "tanh": (np.tanh, lambda dh, h: dh * (1 - h * h)),
    # relu's gradient from its output: h > 0 exactly where the pre-activation was (0 at 0, as in PyTorch)
    "relu": (lambda z: np.maximum(z, 0), lambda dh, h: np.where(h > 0, dh, 0).astype(dh.dtype, copy=False)),
}


def rnn_impl(x_seq, h0, Wx, Wh, b, nonlinearity="tanh"):
    """All states (T, N, H) of the recurrence over x_seq (T, N, D) from h0 (zeros when None)."""
    act = _ACTIVATIONS[nonlinearity][0]
    T, N, _ = x_seq.shape
    hs = np.empty((T, N, Wx.shape[1]), dtype=x_seq.dtype)
    h = np.zeros((N, Wx.shape[1]), dtype=x_seq.dtype) if h0 is None else h0
    for t in range(T):
        z = x_seq[t] @ Wx + h @ Wh
        if b is not None:
            z += b
        h = hs[t] = act(z)
    return hs


def rnn_backward_impl(dhs, x_seq, h0, Wx, Wh, hs, nonlinearity="tanh"):
    """(dx (T, N, D), dh0 (N, H), dWx, dWh, db) of ``rnn_impl``."""
    grad = _ACTIVATIONS[nonlinearity][1]
    T, N, D = x_seq.shape
    H = Wx.shape[1]
    if h0 is None:
        h0 = np.zeros((N, H), dtype=x_seq.dtype)
    dx = np.empty_like(x_seq)
    dWx, dWh = np.zeros_like(Wx), np.zeros_like(Wh)
    db = np.zeros(H, dtype=x_seq.dtype)
    dh_next = np.zeros((N, H), dtype=x_seq.dtype)
    for t in range(T - 1, -1, -1):
        h_prev = hs[t - 1] if t > 0 else h0
        dz = grad(dhs[t] + dh_next, hs[t])
        dx[t], dh_next = dz @ Wx.T, dz @ Wh.T
        dWx += x_seq[t].T @ dz
        dWh += h_prev.T @ dz
        db += dz.sum(axis=0)
    return dx, dh_next, dWx, dWh, db


def rnn_step(input, hx, Wx, Wh, bias=None, nonlinearity="tanh"):
    """One recurrent step: input (N, D), hx (N, H), Wx (D, H), Wh (H, H), bias (H,) -> h (N, H)."""
    return run(RNN, RNN.forward(input, hx, Wx, Wh, bias, nonlinearity, step=True), "numpy", "auto", None)


def rnn_step_backward(grad_output, input, hx, Wx, Wh, output, nonlinearity="tanh"):
    """Gradients (grad_input, grad_hx, grad_Wx, grad_Wh, grad_bias) of rnn_step given
    grad_output = dL/dh and the step's output h."""
    problem = RNN.backward(grad_output, input, hx, Wx, Wh, output, nonlinearity, step=True)
    return run(RNN, problem, "numpy", "auto", None, single_out=False)


def rnn(input, hx, Wx, Wh, bias=None, nonlinearity="tanh"):
    """All hidden states (T, N, H) of an RNN over the time-major sequence input (T, N, D).

    ``hx`` (N, H) is the initial state, zeros when None."""
    return run(RNN, RNN.forward(input, hx, Wx, Wh, bias, nonlinearity, step=False), "numpy", "auto", None)


def rnn_backward(grad_output, input, hx, Wx, Wh, output, nonlinearity="tanh"):
    """Backward through time. ``grad_output`` (T, N, H) is dL/d(every hidden state), ``output`` the
    forward's result. Returns (grad_input (T, N, D), grad_hx (N, H), grad_Wx, grad_Wh, grad_bias)."""
    problem = RNN.backward(grad_output, input, hx, Wx, Wh, output, nonlinearity, step=False)
    return run(RNN, problem, "numpy", "auto", None, single_out=False)


# ============================================================================ lstm, gru
# PyTorch's equations and gate order, in fastlayers' layout: Wx = weight_ih.T (D, G*H),
# Wh = weight_hh.T (H, G*H), gate blocks of H columns side by side.
#   lstm: (i, f, g, o) = (sigmoid, sigmoid, tanh, sigmoid)(x Wx + h Wh + b), b = bias_ih + bias_hh
#         c' = f c + i g,  h' = o tanh(c')
#   gru:  a = x Wx + bx, u = h Wh + bh (bx = bias_ih, bh = bias_hh kept apart)
#         r = sigmoid(a_r + u_r), z = sigmoid(a_z + u_z), n = tanh(a_n + r u_n),  h' = (1 - z) n + z h
# The backward functions recompute the gates from the inputs and the states, unless the forward
# kept them (``keep``: the gates of fastlayers.ops.gated.GateWorkspace, LSTM (i, f, g, o), GRU
# (r, z, n, u_n), each (T*N, 4H)).


def _sigmoid(z):
    """sigmoid(z) = (1 + tanh(z / 2)) / 2, which never overflows (exp(-z) does for z < -709)."""
    return 0.5 * np.tanh(0.5 * z) + 0.5


def _zeros_if_none(state, N, H, dtype):
    return np.zeros((N, H), dtype=dtype) if state is None else state


def _previous_states(s0, ss):
    """(T, N, H) states s_{t-1} for every step t: s0, then ss[:-1]."""
    return np.concatenate([s0[None], ss])[: ss.shape[0]]


def _lstm_gates(x, h_prev, Wx, Wh, b):
    """(i, f, g, o), each shaped like h_prev, for x (..., D) and h_prev (..., H)."""
    H = Wh.shape[0]
    z = x @ Wx + h_prev @ Wh
    if b is not None:
        z += b
    return (_sigmoid(z[..., :H]), _sigmoid(z[..., H : 2 * H]), np.tanh(z[..., 2 * H : 3 * H]),
            _sigmoid(z[..., 3 * H :]))


def lstm_impl(x_seq, h0, c0, Wx, Wh, b, keep=False):
    """(hs, cs), and with ``keep`` the gates (i, f, g, o) of every step, (T*N, 4H)."""
    T, N, _ = x_seq.shape
    H, dt = Wh.shape[0], x_seq.dtype
    hs = np.empty((T, N, H), dtype=dt)
    cs = np.empty((T, N, H), dtype=dt)
    gates = np.empty((T, N, 4 * H), dtype=dt) if keep else None
    h, c = _zeros_if_none(h0, N, H, dt), _zeros_if_none(c0, N, H, dt)
    for t in range(T):
        i, f, g, o = _lstm_gates(x_seq[t], h, Wx, Wh, b)
        if keep:
            gates[t] = np.concatenate((i, f, g, o), axis=-1)
        c = cs[t] = f * c + i * g
        h = hs[t] = o * np.tanh(c)
    return (hs, cs, gates.reshape(T * N, 4 * H)) if keep else (hs, cs)


def _kept(gates, blocks, T, N, H):
    """The ``blocks`` (T, N, H) gate arrays of a forward's kept gates (T*N, >= blocks*H)."""
    return tuple(gates[:, k * H:(k + 1) * H].reshape(T, N, H) for k in range(blocks))


def lstm_backward_impl(dhs, dcs, x_seq, h0, c0, Wx, Wh, b, hs, cs, gates=None):
    """``gates``: the forward's kept gates (lstm_impl's ``keep``), or None: recomputed."""
    T, N, D = x_seq.shape
    H, dt = Wh.shape[0], x_seq.dtype
    h_prev = _previous_states(_zeros_if_none(h0, N, H, dt), hs)
    c_prev = _previous_states(_zeros_if_none(c0, N, H, dt), cs)
    i, f, g, o = _lstm_gates(x_seq, h_prev, Wx, Wh, b) if gates is None else _kept(gates, 4, T, N, H)
    tanh_c = np.tanh(cs)
    dz = np.empty((T, N, 4 * H), dtype=dt)  # dL/d(pre-activations), gate blocks (i, f, g, o)
    dh_next = np.zeros((N, H), dtype=dt)
    dc_next = np.zeros((N, H), dtype=dt)
    for t in range(T - 1, -1, -1):
        dh = dhs[t] + dh_next
        dc = dc_next + dh * o[t] * (1 - tanh_c[t] ** 2)
        if dcs is not None:
            dc += dcs[t]
        dz[t, :, :H] = dc * g[t] * i[t] * (1 - i[t])
        dz[t, :, H : 2 * H] = dc * c_prev[t] * f[t] * (1 - f[t])
        dz[t, :, 2 * H : 3 * H] = dc * i[t] * (1 - g[t] ** 2)
        dz[t, :, 3 * H :] = dh * tanh_c[t] * o[t] * (1 - o[t])
        dh_next = dz[t] @ Wh.T
        dc_next = dc * f[t]
    dz2 = dz.reshape(T * N, 4 * H)
    return (dz @ Wx.T, dh_next, dc_next, x_seq.reshape(T * N, D).T @ dz2,
            h_prev.reshape(T * N, H).T @ dz2, dz2.sum(axis=0))


def _gru_gates(x, h_prev, Wx, Wh, bx, bh):
    """(r, z, n, u_n), each shaped like h_prev: u_n = h_prev Whn + bhn is what r multiplies."""
    H = Wh.shape[0]
    a = x @ Wx
    u = h_prev @ Wh
    if bx is not None:
        a += bx
    if bh is not None:
        u += bh
    r = _sigmoid(a[..., :H] + u[..., :H])
    z = _sigmoid(a[..., H : 2 * H] + u[..., H : 2 * H])
    u_n = u[..., 2 * H :]
    return r, z, np.tanh(a[..., 2 * H :] + r * u_n), u_n


def gru_impl(x_seq, h0, Wx, Wh, bx, bh, keep=False):
    """hs, and with ``keep`` the gates (r, z, n, u_n) of every step, (T*N, 4H)."""
    T, N, _ = x_seq.shape
    H, dt = Wh.shape[0], x_seq.dtype
    hs = np.empty((T, N, H), dtype=dt)
    gates = np.empty((T, N, 4 * H), dtype=dt) if keep else None
    h = _zeros_if_none(h0, N, H, dt)
    for t in range(T):
        r, z, n, u_n = _gru_gates(x_seq[t], h, Wx, Wh, bx, bh)
        if keep:
            gates[t] = np.concatenate((r, z, n, u_n), axis=-1)
        h = hs[t] = (1 - z) * n + z * h
    return (hs, gates.reshape(T * N, 4 * H)) if keep else (hs,)


def gru_backward_impl(dhs, x_seq, h0, Wx, Wh, bx, bh, hs, gates=None):
    """``gates``: the forward's kept gates (gru_impl's ``keep``), or None: recomputed."""
    T, N, D = x_seq.shape
    H, dt = Wh.shape[0], x_seq.dtype
    h_prev = _previous_states(_zeros_if_none(h0, N, H, dt), hs)
    r, z, n, u_n = _gru_gates(x_seq, h_prev, Wx, Wh, bx, bh) if gates is None else _kept(gates, 4, T, N, H)
    da = np.empty((T, N, 3 * H), dtype=dt)  # dL/d(x Wx + bx), gate blocks (r, z, n)
    du = np.empty((T, N, 3 * H), dtype=dt)  # dL/d(h Wh + bh); equal to da but in the n block
    dh_next = np.zeros((N, H), dtype=dt)
    for t in range(T - 1, -1, -1):
        dh = dhs[t] + dh_next
        dn = dh * (1 - z[t]) * (1 - n[t] ** 2)
        da[t, :, :H] = du[t, :, :H] = dn * u_n[t] * r[t] * (1 - r[t])
        da[t, :, H : 2 * H] = du[t, :, H : 2 * H] = dh * (h_prev[t] - n[t]) * z[t] * (1 - z[t])
        da[t, :, 2 * H :] = dn
        du[t, :, 2 * H :] = dn * r[t]
        dh_next = dh * z[t] + du[t] @ Wh.T
    da2, du2 = da.reshape(T * N, 3 * H), du.reshape(T * N, 3 * H)
    return (da @ Wx.T, dh_next, x_seq.reshape(T * N, D).T @ da2, h_prev.reshape(T * N, H).T @ du2,
            da2.sum(axis=0), du2.sum(axis=0))


def lstm_step(input, hx, cx, Wx, Wh, bias=None):
    """One LSTM step: input (N, D), hx and cx (N, H) or None (zeros), Wx (D, 4H), Wh (H, 4H),
    bias (4H,) -> (output, cell), each (N, H)."""
    problem = LSTM.forward(dict(input=input, hx=hx, cx=cx, Wx=Wx, Wh=Wh, bias=bias), step=True)
    return run(LSTM, problem, "numpy", "auto", None, single_out=False)


def lstm_step_backward(grad_output, grad_cell, input, hx, cx, Wx, Wh, bias, output, cell):
    """Gradients (grad_input, grad_hx, grad_cx, grad_Wx, grad_Wh, grad_bias) of lstm_step given
    grad_output = dL/dh, grad_cell = dL/dc (None: zeros) and the step's results output, cell."""
    arrays = dict(grad_output=grad_output, grad_cell=grad_cell, input=input, hx=hx, cx=cx, Wx=Wx, Wh=Wh, bias=bias,
                  output=output, cell=cell)
    return run(LSTM, LSTM.backward(arrays, step=True), "numpy", "auto", None, single_out=False)


def lstm(input, hx, cx, Wx, Wh, bias=None):
    """Hidden and cell states (output, cell), each (T, N, H), of an LSTM over input (T, N, D).

    hx, cx (N, H) are the initial states, zeros when None; Wx (D, 4H), Wh (H, 4H), bias (4H,)."""
    problem = LSTM.forward(dict(input=input, hx=hx, cx=cx, Wx=Wx, Wh=Wh, bias=bias), step=False)
    return run(LSTM, problem, "numpy", "auto", None, single_out=False)


def lstm_backward(grad_output, grad_cell, input, hx, cx, Wx, Wh, bias, output, cell):
    """Backward through time of lstm. ``grad_output`` and ``grad_cell`` (T, N, H) are dL/d(every
    hidden and cell state), grad_cell None for zeros; output, cell the forward's results. Returns
    (grad_input (T, N, D), grad_hx (N, H), grad_cx (N, H), grad_Wx, grad_Wh, grad_bias)."""
    arrays = dict(grad_output=grad_output, grad_cell=grad_cell, input=input, hx=hx, cx=cx, Wx=Wx, Wh=Wh, bias=bias,
                  output=output, cell=cell)
    return run(LSTM, LSTM.backward(arrays, step=False), "numpy", "auto", None, single_out=False)


def gru_step(input, hx, Wx, Wh, bias_ih=None, bias_hh=None):
    """One GRU step: input (N, D), hx (N, H) or None (zeros), Wx (D, 3H), Wh (H, 3H),
    bias_ih, bias_hh (3H,) -> output (N, H)."""
    problem = GRU.forward(dict(input=input, hx=hx, Wx=Wx, Wh=Wh, bias_ih=bias_ih, bias_hh=bias_hh), step=True)
    return run(GRU, problem, "numpy", "auto", None)


def gru_step_backward(grad_output, input, hx, Wx, Wh, bias_ih, bias_hh, output):
    """Gradients (grad_input, grad_hx, grad_Wx, grad_Wh, grad_bias_ih, grad_bias_hh) of gru_step
    given grad_output = dL/dh and the step's result output."""
    arrays = dict(grad_output=grad_output, input=input, hx=hx, Wx=Wx, Wh=Wh, bias_ih=bias_ih, bias_hh=bias_hh,
                  output=output)
    return run(GRU, GRU.backward(arrays, step=True), "numpy", "auto", None, single_out=False)


def gru(input, hx, Wx, Wh, bias_ih=None, bias_hh=None):
    """All hidden states (T, N, H) of a GRU over input (T, N, D); hx (N, H) or None (zeros),
    Wx (D, 3H), Wh (H, 3H), bias_ih, bias_hh (3H,)."""
    problem = GRU.forward(dict(input=input, hx=hx, Wx=Wx, Wh=Wh, bias_ih=bias_ih, bias_hh=bias_hh), step=False)
    return run(GRU, problem, "numpy", "auto", None)


def gru_backward(grad_output, input, hx, Wx, Wh, bias_ih, bias_hh, output):
    """Backward through time of gru. ``grad_output`` (T, N, H) is dL/d(every hidden state),
    ``output`` the forward's result. Returns (grad_input (T, N, D), grad_hx (N, H), grad_Wx,
    grad_Wh, grad_bias_ih, grad_bias_hh)."""
    arrays = dict(grad_output=grad_output, input=input, hx=hx, Wx=Wx, Wh=Wh, bias_ih=bias_ih, bias_hh=bias_hh,
                  output=output)
    return run(GRU, GRU.backward(arrays, step=False), "numpy", "auto", None, single_out=False)


# ============================================================================ linear


def linear_impl(x, w, b, g):
    y = x @ w.T
    return (y if b is None else y + b,)


def linear_backward_impl(dy, x, w, g):
    x2, dy2 = x.reshape(g.M, g.I), dy.reshape(g.M, g.O)
    return dy @ w, dy2.T @ x2, dy2.sum(axis=0)


def linear(input, weight, bias=None):
    """input (..., in) @ weight.T + bias: weight (out, in), bias (out,) -> (..., out)."""
    return run(LINEAR, LINEAR.forward(input, weight, bias), "numpy", "auto", None)


def linear_backward(grad_output, input, weight):
    """Gradients (grad_input, grad_weight, grad_bias) of linear."""
    return run(LINEAR, LINEAR.backward(grad_output, input, weight), "numpy", "auto", None, single_out=False)


# ============================================================================ relu


def relu_impl(x, g):
    return (np.maximum(x, 0),)


def relu_backward_impl(dy, x, g):
    """dL/dx of relu: 0 where x <= 0 (the subgradient at 0 is 0), dy elsewhere (NaN included), as
    PyTorch's threshold_backward."""
    return (np.where(x <= 0, 0, dy).astype(dy.dtype, copy=False),)


def relu(input):
    """max(input, 0), elementwise; NaN propagates."""
    return run(RELU, RELU.forward(input), "numpy", "auto", None)


def relu_backward(grad_output, input):
    """0 where input <= 0, else grad_output."""
    return run(RELU, RELU.backward(grad_output, input), "numpy", "auto", None)


# ============================================================================ batch_norm
#
# The input seen as (N, C, S); statistics per channel over N and S, in float64.


def _channel_view(a, g):
    return a.reshape(g.N, g.C, g.S)


def _per_channel(v):
    return np.asarray(v, dtype=np.float64)[None, :, None]


def _batch_stats(x, g):
    """The statistics to normalise with: the batch's mean and biased variance (training)."""
    x3 = _channel_view(x, g).astype(np.float64)
    return x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))


def batch_norm_impl(x, running_mean, running_var, weight, bias, g):
    """(output, mean, var): mean and var those normalised with, float64."""
    mean, var = _batch_stats(x, g) if g.training else (running_mean.astype(np.float64), running_var.astype(np.float64))
    xhat = (_channel_view(x, g) - _per_channel(mean)) / np.sqrt(_per_channel(var) + g.eps)
    y = xhat * (1 if weight is None else _per_channel(weight)) + (0 if bias is None else _per_channel(bias))
    return y.astype(x.dtype).reshape(x.shape), mean, var


def batch_norm_backward_impl(dy, x, running_mean, running_var, weight, g):
    """(grad_input, grad_weight, grad_bias). In training mode the mean and variance are functions of
    the batch: with xhat = (x - mean) / std, dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / std."""
    mean, var = _batch_stats(x, g) if g.training else (running_mean.astype(np.float64), running_var.astype(np.float64))
    std = np.sqrt(_per_channel(var) + g.eps)
    xhat = (_channel_view(x, g) - _per_channel(mean)) / std
    dy3 = _channel_view(dy, g).astype(np.float64)
    dxhat = dy3 * (1 if weight is None else _per_channel(weight))
    if g.training:
        dx = (dxhat - dxhat.mean(axis=(0, 2), keepdims=True) - xhat * (dxhat * xhat).mean(axis=(0, 2), keepdims=True)) / std
    else:
        dx = dxhat / std
    dt = x.dtype
    return dx.astype(dt).reshape(x.shape), (dy3 * xhat).sum(axis=(0, 2)).astype(dt), dy3.sum(axis=(0, 2)).astype(dt)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation per channel (axis 1), as torch.nn.functional.batch_norm; in training mode
    the running statistics are updated in place."""
    problem = BATCH_NORM.forward(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return run(BATCH_NORM, problem, "numpy", "auto", None)


def batch_norm_backward(grad_output, input, running_mean, running_var, weight=None, training=False, eps=1e-5):
    """Gradients (grad_input, grad_weight, grad_bias) of batch_norm."""
    problem = BATCH_NORM.backward(grad_output, input, running_mean, running_var, weight, training, eps)
    return run(BATCH_NORM, problem, "numpy", "auto", None, single_out=False)


# ============================================================================ layers without a spec


def flatten(x):
    """(N, ...) -> (N, prod(...)) in C order, as the notes' "Flattening" slide."""
    return x.reshape(x.shape[0], -1)


def flatten_backward(dy, input_shape):
    return dy.reshape(input_shape)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) over the last axis against integer ``labels``.

    logits (..., K), labels (...) of ints in [0, K). Returns (loss, dlogits), where dlogits is the
    gradient of the mean loss. Stable for any logits: the max is subtracted before exp."""
    logits = np.asarray(logits)
    labels = check_labels(labels, logits.shape)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    count = max(labels.size, 1)
    loss = -picked.sum() / count
    dlogits = np.exp(log_p)
    np.put_along_axis(dlogits, labels[..., None], np.take_along_axis(dlogits, labels[..., None], -1) - 1, axis=-1)
    return logits.dtype.type(loss), (dlogits / count).astype(logits.dtype, copy=False)
