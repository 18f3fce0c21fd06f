"""Backends: one module per backend, each exposing the same functions.

A backend module has ``OPS`` (the op names it implements), ``availability() -> (bool, reason)``
and, for each op in ``OPS``, a function taking *validated* arrays and the op's geometry from
``fastlayers._params`` (plus caller-supplied output buffers, already checked, or None):

    conv2d(x, w, b, g, algo, out) -> y
    conv2d_backward(dy, x, w, g, algo, out) -> (dx, dw, db)          out: (dx, dw, db) or None
    max_pool2d(x, g, out) -> (y, indices)                            out: (y, indices) or None
    max_pool2d_backward(dy, indices, input_shape, out) -> dx         indices NOT range-checked
    rnn_step(x, h_prev, Wx, Wh, b, out) -> h
    rnn_step_backward(dh, x, h_prev, Wx, Wh, h, out) -> (dx, dh_prev, dWx, dWh, db)
    rnn(x_seq, h0, Wx, Wh, b, out) -> hs                             h0 may be None
    rnn_backward(dhs, x_seq, h0, Wx, Wh, hs, out) -> (dx, dh0, dWx, dWh, db)

Inputs may be non-contiguous; a backend copies what its kernels need in C order. ``b`` may be
None. ``max_pool2d_backward`` must check every index against ``[0, H*W)`` itself (or call
``_params.check_pool_backward_args``) before writing.
"""
