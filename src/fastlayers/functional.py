"""The functional API: validate, pick a backend, run the op.

Every function checks its arguments here (dtype, ndim, shapes, parameters, output buffers) before
any backend runs, so errors are the same on every backend and compiled kernels only ever see
valid input.
"""
from __future__ import annotations

import numpy as np

from . import _dispatch
from ._params import (
    check_array,
    check_arrays_like,
    check_conv2d_arrays,
    check_out,
    check_out_tuple,
    check_pool_backward_args,
    check_shape,
    conv2d_geometry,
    gated_geometry,
    pool2d_geometry,
    rnn_geometry,
)

__all__ = [
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "rnn_step",
    "rnn_step_backward",
    "rnn",
    "rnn_backward",
    "lstm_step",
    "lstm_step_backward",
    "lstm",
    "lstm_backward",
    "gru_step",
    "gru_step_backward",
    "gru",
    "gru_backward",
]

ALGOS = ("auto", "im2col", "direct")


def _check_algo(algo):
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")


def _overlap(a, b):
    """Whether two arrays share an element: the exact test where the bounds check says maybe
    (interleaved views of one buffer do not), an overlap when even that is too hard to tell.
    Two mappings of one file are different memory to NumPy: they cannot be seen."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=1 << 20)
    except np.exceptions.TooHardError:
        return True


def _check_no_alias(name, out, others):
    """Kernels read their inputs while they write their outputs: a buffer overlapping an input
    or another output would be read after being overwritten, a silent wrong answer."""
    for other_name, a in others.items():
        if isinstance(a, np.ndarray) and _overlap(out, a):
            raise ValueError(f"{name} must not share memory with {other_name}")


def _outs(name, out, shapes, dtypes, gpu, inputs):
    """Validate a tuple of output buffers (entries may be None) against the op's ``inputs``
    (a dict name -> array). GPU buffers are the cuda backend's to check."""
    outs = check_out_tuple(name, out, len(shapes))
    if gpu:
        return None if out is None else outs
    checked = tuple(
        None if o is None else check_out(f"{name}[{i}]", o, shape, dt)
        for i, (o, shape, dt) in enumerate(zip(outs, shapes, dtypes))
    )
    others = dict(inputs)
    for i, o in enumerate(checked):
        if o is not None:
            _check_no_alias(f"{name}[{i}]", o, others)
            others[f"{name}[{i}]"] = o
    return None if out is None else checked


def _is_gpu(*arrays):
    return any(hasattr(a, "__cuda_array_interface__") for a in arrays if a is not None)


def _out(out, shape, dtype, gpu, inputs):
    if out is None or gpu:
        return out
    check_out("out", out, shape, dtype)
    _check_no_alias("out", out, inputs)
    return out


# ============================================================================ conv2d


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, algo="auto", backend=None, out=None):
    """2-D convolution (cross-correlation, as in PyTorch) of a batch of images.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    w : array (F, C // groups, KH, KW), same dtype
    b : array (F,) or None
    stride, dilation : int or (int, int), >= 1
    padding : int, (int, int), "valid" or "same" (stride 1 only; extra padding goes bottom/right)
    groups : int dividing both C and F
    algo : "auto", "im2col" or "direct" (CPU and CUDA backends; "auto" picks by shape)
    backend : "numpy", "cpu", "cuda" or None (see ``fastlayers.set_backend``)
    out : array (N, F, OH, OW), C-contiguous, same dtype, optional

    Returns
    -------
    y : array (N, F, OH, OW) with ``OH = (H + pad_h - dilation_h * (KH - 1) - 1) // stride_h + 1``
        (likewise OW), in the dtype of x.
    """
    dt = check_conv2d_arrays(x, w, b)
    _check_algo(algo)
    g = conv2d_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    gpu = _is_gpu(x, w, b)
    impl = _dispatch.resolve("conv2d", backend, (x, w, b))
    return impl(x, w, b, g, algo, _out(out, g.y_shape, dt, gpu, dict(x=x, w=w, b=b)))


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1, algo="auto", backend=None, out=None):
    """Gradients of :func:`conv2d` with respect to x, w and b.

    ``dy`` (N, F, OH, OW) is dL/dy; the other arguments are those of the forward call.
    Returns ``(dx, dw, db)`` shaped like x, w and (F,). ``out`` may be a tuple of three buffers
    (any of them None)."""
    dt = check_conv2d_arrays(x, w)
    _check_algo(algo)
    g = conv2d_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    check_array("dy", dy, 4, dt)
    check_shape("dy", dy, g.y_shape)
    gpu = _is_gpu(dy, x, w)
    impl = _dispatch.resolve("conv2d_backward", backend, (dy, x, w))
    outs = _outs("out", out, (g.x_shape, g.w_shape, (g.F,)), (dt,) * 3, gpu, dict(dy=dy, x=x, w=w))
    return impl(dy, x, w, g, algo, outs)


# ============================================================================ max_pool2d


def max_pool2d(x, kernel_size=2, stride=None, padding=0, ceil_mode=False, return_indices=True, backend=None, out=None):
    """2-D max pooling.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    kernel_size : int or (int, int)
    stride : int or (int, int), default ``kernel_size``
    padding : int or (int, int), at most half the kernel; padded cells never win
    ceil_mode : bool, round the output size up (a last, partial window), as in PyTorch
    return_indices : bool, also return the argmax indices (needed by the backward)
    out : buffer for y, or a tuple (y, indices) of buffers (either may be None)

    Returns
    -------
    y : array (N, C, OH, OW)
    indices : int64 array (N, C, OH, OW), only if ``return_indices``: the flat index
        ``ih * W + iw`` of each maximum in its (H, W) plane. Ties go to the first maximum in
        row-major window order; a NaN in the window is the maximum (NaN propagates), and of
        several NaNs the last one's index is returned, as by PyTorch's CPU kernels.
    """
    dt = check_array("x", x, 4)
    g = pool2d_geometry(x.shape, kernel_size, stride, padding, ceil_mode)
    gpu = _is_gpu(x)
    impl = _dispatch.resolve("max_pool2d", backend, (x,))
    if out is not None and not isinstance(out, (tuple, list)):
        out = (out, None)
    outs = _outs("out", out, (g.y_shape, g.y_shape), (dt, np.dtype(np.int64)), gpu, dict(x=x))
    y, indices = impl(x, g, outs)
    return (y, indices) if return_indices else y


def max_pool2d_backward(dy, indices, input_shape, backend=None, out=None):
    """Gradient of :func:`max_pool2d`: dy (N, C, OH, OW) routed to the argmax ``indices``.

    Returns dx of ``input_shape`` (N, C, H, W); windows that share a maximum add up."""
    dt = check_array("dy", dy, 4)
    input_shape = check_pool_backward_args(dy, indices, input_shape, dt, check_range=False)
    gpu = _is_gpu(dy, indices)
    impl = _dispatch.resolve("max_pool2d_backward", backend, (dy, indices))
    return impl(dy, indices, input_shape, _out(out, input_shape, dt, gpu, dict(dy=dy, indices=indices)))


# ============================================================================ rnn


def rnn_step(x, h_prev, Wx, Wh, b=None, backend=None, out=None):
    """One tanh RNN step: ``h = tanh(x @ Wx + h_prev @ Wh + b)``.

    x (N, D), h_prev (N, H), Wx (D, H), Wh (H, H), b (H,) or None -> h (N, H)."""
    g, dt = rnn_geometry(x, h_prev, Wx, Wh, b)
    gpu = _is_gpu(x, h_prev, Wx, Wh, b)
    impl = _dispatch.resolve("rnn_step", backend, (x, h_prev, Wx, Wh, b))
    inputs = dict(x=x, h_prev=h_prev, Wx=Wx, Wh=Wh, b=b)
    return impl(x, h_prev, Wx, Wh, b, _out(out, (g.N, g.H), dt, gpu, inputs))


def rnn_step_backward(dh, x, h_prev, Wx, Wh, h, backend=None, out=None):
    """Gradients of :func:`rnn_step` given dh = dL/dh and the step's output h.

    Returns ``(dx (N, D), dh_prev (N, H), dWx (D, H), dWh (H, H), db (H,))``."""
    g, dt = rnn_geometry(x, h_prev, Wx, Wh)
    check_arrays_like(dt, (g.N, g.H), dh=dh, h=h)
    gpu = _is_gpu(dh, x, h_prev, Wx, Wh, h)
    impl = _dispatch.resolve("rnn_step_backward", backend, (dh, x, h_prev, Wx, Wh, h))
    shapes = ((g.N, g.D), (g.N, g.H), (g.D, g.H), (g.H, g.H), (g.H,))
    inputs = dict(dh=dh, x=x, h_prev=h_prev, Wx=Wx, Wh=Wh, h=h)
    return impl(dh, x, h_prev, Wx, Wh, h, _outs("out", out, shapes, (dt,) * 5, gpu, inputs))


def rnn(x_seq, h0, Wx, Wh, b=None, backend=None, out=None):
    """All hidden states of a tanh RNN over a time-major sequence.

    x_seq (T, N, D), h0 (N, H) or None (zeros), Wx (D, H), Wh (H, H), b (H,) or None
    -> hs (T, N, H) with ``hs[t] = tanh(x_seq[t] @ Wx + hs[t-1] @ Wh + b)``, ``hs[-1] = h0``."""
    g, dt = rnn_geometry(x_seq, h0, Wx, Wh, b, sequence=True)
    gpu = _is_gpu(x_seq, h0, Wx, Wh, b)
    impl = _dispatch.resolve("rnn", backend, (x_seq, h0, Wx, Wh, b))
    inputs = dict(x_seq=x_seq, h0=h0, Wx=Wx, Wh=Wh, b=b)
    return impl(x_seq, h0, Wx, Wh, b, _out(out, (g.T, g.N, g.H), dt, gpu, inputs))


def rnn_backward(dhs, x_seq, h0, Wx, Wh, hs, backend=None, out=None):
    """Backward through time of :func:`rnn`.

    ``dhs`` (T, N, H) is dL/d(every hidden state), ``hs`` the forward's output.
    Returns ``(dx (T, N, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,))``."""
    g, dt = rnn_geometry(x_seq, h0, Wx, Wh, sequence=True)
    check_arrays_like(dt, (g.T, g.N, g.H), dhs=dhs, hs=hs)
    gpu = _is_gpu(dhs, x_seq, h0, Wx, Wh, hs)
    impl = _dispatch.resolve("rnn_backward", backend, (dhs, x_seq, h0, Wx, Wh, hs))
    shapes = ((g.T, g.N, g.D), (g.N, g.H), (g.D, g.H), (g.H, g.H), (g.H,))
    inputs = dict(dhs=dhs, x_seq=x_seq, h0=h0, Wx=Wx, Wh=Wh, hs=hs)
    return impl(dhs, x_seq, h0, Wx, Wh, hs, _outs("out", out, shapes, (dt,) * 5, gpu, inputs))


# ============================================================================ lstm, gru
# PyTorch's gates in fastlayers' layout: Wx = weight_ih.T, Wh = weight_hh.T, gate blocks of H
# columns side by side (lstm (i, f, g, o), gru (r, z, n)); ``fastlayers.reference`` states the
# equations. The backends implement the sequence ops; a step runs as a sequence of length one.


def _run(op, backend, arrays, out_shapes, dt, out):
    """Validate ``out`` (a tuple for every output) and run ``op`` on ``arrays`` (a dict, in the
    op's argument order)."""
    values = tuple(arrays.values())
    gpu = _is_gpu(*values)
    impl = _dispatch.resolve(op, backend, values)
    return impl(*values, _outs("out", out, out_shapes, (dt,) * len(out_shapes), gpu, arrays))


def _step(a):
    """A step's (N, ...) array as a sequence of one step (1, N, ...), a view; None stays None."""
    return None if a is None else a.reshape((1, *a.shape))


def _step_out(out, shapes, dt, arrays):
    """``out`` of a step op checked against the step's shapes (before it is viewed as a
    sequence of one step), as a tuple (entries may be None), or None."""
    return _outs("out", out, shapes, (dt,) * len(shapes), _is_gpu(*arrays.values()), arrays)


def _step_results(results, outs):
    """The step's results from the sequence op's: the caller's buffers where given."""
    return tuple(r[0] if o is None else o for r, o in zip(results, outs or (None,) * len(results)))


def lstm(x_seq, h0, c0, Wx, Wh, b=None, backend=None, out=None):
    """Hidden and cell states of an LSTM (torch.nn.LSTM's equations) over a time-major sequence.

    Parameters
    ----------
    x_seq : array (T, N, D), float32 or float64
    h0, c0 : arrays (N, H) or None (zeros), the initial hidden and cell states
    Wx : array (D, 4H), PyTorch's ``weight_ih.T``, gate blocks (i, f, g, o)
    Wh : array (H, 4H), ``weight_hh.T``
    b : array (4H,) or None, ``bias_ih + bias_hh``
    out : tuple of two buffers (hs, cs) (either may be None)

    Returns
    -------
    hs, cs : arrays (T, N, H), every step's hidden and cell state
    """
    g, dt = gated_geometry("lstm", x_seq, Wx, Wh, dict(h0=h0, c0=c0), dict(b=b), sequence=True)
    arrays = dict(x_seq=x_seq, h0=h0, c0=c0, Wx=Wx, Wh=Wh, b=b)
    return _run("lstm", backend, arrays, ((g.T, g.N, g.H),) * 2, dt, out)


def lstm_backward(dhs, dcs, x_seq, h0, c0, Wx, Wh, b, hs, cs, backend=None, out=None):
    """Backward through time of :func:`lstm`.

    ``dhs`` and ``dcs`` (T, N, H) are dL/d(every hidden and cell state), ``dcs`` None for zeros;
    ``hs``, ``cs`` the forward's outputs; the other arguments those of the forward (the gates are
    recomputed from them). Returns ``(dx (T, N, D), dh0 (N, H), dc0 (N, H), dWx (D, 4H),
    dWh (H, 4H), db (4H,))``."""
    g, dt = gated_geometry("lstm", x_seq, Wx, Wh, dict(h0=h0, c0=c0), dict(b=b), sequence=True,
                           backward=dict(dhs=dhs, dcs=dcs, hs=hs, cs=cs))
    arrays = dict(dhs=dhs, dcs=dcs, x_seq=x_seq, h0=h0, c0=c0, Wx=Wx, Wh=Wh, b=b, hs=hs, cs=cs)
    shapes = ((g.T, g.N, g.D), (g.N, g.H), (g.N, g.H), (g.D, 4 * g.H), (g.H, 4 * g.H), (4 * g.H,))
    return _run("lstm_backward", backend, arrays, shapes, dt, out)


def lstm_step(x, h_prev, c_prev, Wx, Wh, b=None, backend=None, out=None):
    """One LSTM step (torch.nn.LSTMCell): x (N, D), h_prev and c_prev (N, H) or None (zeros),
    Wx (D, 4H), Wh (H, 4H), b (4H,) or None -> (h, c), each (N, H). ``out``: a tuple of two
    buffers (either may be None)."""
    g, dt = gated_geometry("lstm", x, Wx, Wh, dict(h_prev=h_prev, c_prev=c_prev), dict(b=b))
    outs = _step_out(out, ((g.N, g.H),) * 2, dt, dict(x=x, h_prev=h_prev, c_prev=c_prev, Wx=Wx, Wh=Wh, b=b))
    results = lstm(_step(x), h_prev, c_prev, Wx, Wh, b, backend=backend,
                   out=None if outs is None else tuple(map(_step, outs)))
    return _step_results(results, outs)


def lstm_step_backward(dh, dc, x, h_prev, c_prev, Wx, Wh, b, h, c, backend=None, out=None):
    """Gradients of :func:`lstm_step` given dh = dL/dh, dc = dL/dc (None: zeros) and the step's
    outputs h, c. Returns ``(dx (N, D), dh_prev, dc_prev (N, H), dWx, dWh, db)``."""
    g, dt = gated_geometry("lstm", x, Wx, Wh, dict(h_prev=h_prev, c_prev=c_prev), dict(b=b),
                           backward=dict(dh=dh, dc=dc, h=h, c=c))
    arrays = dict(dh=dh, dc=dc, x=x, h_prev=h_prev, c_prev=c_prev, Wx=Wx, Wh=Wh, b=b, h=h, c=c)
    shapes = ((g.N, g.D), (g.N, g.H), (g.N, g.H), (g.D, 4 * g.H), (g.H, 4 * g.H), (4 * g.H,))
    outs = _step_out(out, shapes, dt, arrays)
    results = lstm_backward(_step(dh), _step(dc), _step(x), h_prev, c_prev, Wx, Wh, b, _step(h), _step(c),
                            backend=backend, out=None if outs is None else (_step(outs[0]), *outs[1:]))
    return (_step_results(results[:1], outs and outs[:1])[0], *results[1:])


def gru(x_seq, h0, Wx, Wh, bx=None, bh=None, backend=None, out=None):
    """All hidden states of a GRU (torch.nn.GRU's equations) over a time-major sequence.

    Parameters
    ----------
    x_seq : array (T, N, D), float32 or float64
    h0 : array (N, H) or None (zeros)
    Wx : array (D, 3H), PyTorch's ``weight_ih.T``, gate blocks (r, z, n)
    Wh : array (H, 3H), ``weight_hh.T``
    bx, bh : arrays (3H,) or None, ``bias_ih`` and ``bias_hh`` (kept apart: the reset gate
        multiplies ``h @ Wh_n + bh_n``)
    out : buffer (T, N, H), optional

    Returns
    -------
    hs : array (T, N, H), every step's hidden state
    """
    g, dt = gated_geometry("gru", x_seq, Wx, Wh, dict(h0=h0), dict(bx=bx, bh=bh), sequence=True)
    arrays = dict(x_seq=x_seq, h0=h0, Wx=Wx, Wh=Wh, bx=bx, bh=bh)
    values = tuple(arrays.values())
    gpu = _is_gpu(*values)
    impl = _dispatch.resolve("gru", backend, values)
    return impl(*values, _out(out, (g.T, g.N, g.H), dt, gpu, arrays))


def gru_backward(dhs, x_seq, h0, Wx, Wh, bx, bh, hs, backend=None, out=None):
    """Backward through time of :func:`gru`.

    ``dhs`` (T, N, H) is dL/d(every hidden state), ``hs`` the forward's output. Returns
    ``(dx (T, N, D), dh0 (N, H), dWx (D, 3H), dWh (H, 3H), dbx (3H,), dbh (3H,))``."""
    g, dt = gated_geometry("gru", x_seq, Wx, Wh, dict(h0=h0), dict(bx=bx, bh=bh), sequence=True,
                           backward=dict(dhs=dhs, hs=hs))
    arrays = dict(dhs=dhs, x_seq=x_seq, h0=h0, Wx=Wx, Wh=Wh, bx=bx, bh=bh, hs=hs)
    shapes = ((g.T, g.N, g.D), (g.N, g.H), (g.D, 3 * g.H), (g.H, 3 * g.H), (3 * g.H,), (3 * g.H,))
    return _run("gru_backward", backend, arrays, shapes, dt, out)


def gru_step(x, h_prev, Wx, Wh, bx=None, bh=None, backend=None, out=None):
    """One GRU step (torch.nn.GRUCell): x (N, D), h_prev (N, H) or None (zeros), Wx (D, 3H),
    Wh (H, 3H), bx, bh (3H,) or None -> h (N, H)."""
    g, dt = gated_geometry("gru", x, Wx, Wh, dict(h_prev=h_prev), dict(bx=bx, bh=bh))
    arrays = dict(x=x, h_prev=h_prev, Wx=Wx, Wh=Wh, bx=bx, bh=bh)
    _out(out, (g.N, g.H), dt, _is_gpu(*arrays.values()), arrays)
    hs = gru(_step(x), h_prev, Wx, Wh, bx, bh, backend=backend, out=_step(out))
    return hs[0] if out is None else out


def gru_step_backward(dh, x, h_prev, Wx, Wh, bx, bh, h, backend=None, out=None):
    """Gradients of :func:`gru_step` given dh = dL/dh and the step's output h. Returns
    ``(dx (N, D), dh_prev (N, H), dWx, dWh, dbx, dbh)``."""
    g, dt = gated_geometry("gru", x, Wx, Wh, dict(h_prev=h_prev), dict(bx=bx, bh=bh), backward=dict(dh=dh, h=h))
    arrays = dict(dh=dh, x=x, h_prev=h_prev, Wx=Wx, Wh=Wh, bx=bx, bh=bh, h=h)
    shapes = ((g.N, g.D), (g.N, g.H), (g.D, 3 * g.H), (g.H, 3 * g.H), (3 * g.H,), (3 * g.H,))
    outs = _step_out(out, shapes, dt, arrays)
    results = gru_backward(_step(dh), _step(x), h_prev, Wx, Wh, bx, bh, _step(h), backend=backend,
                           out=None if outs is None else (_step(outs[0]), *outs[1:]))
    return (_step_results(results[:1], outs and outs[:1])[0], *results[1:])
