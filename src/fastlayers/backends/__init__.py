"""Backends: ``numpy`` (a module), ``cpu`` and ``cuda`` (packages, one module per op family).

A backend has ``availability() -> (bool, reason)``. Its kernels are functions listed by the op
specs (``fastlayers.ops``, one ``Kernel`` entry each), called with the validated arrays of the
problem in the spec's order, its geometry, and a tuple of output buffers, and returning the tuple
of outputs:

    conv2d   forward  (input, weight, bias, g, outs) -> (output,)
             backward (grad_output, input, weight, g, outs) -> (grad_input, grad_weight, grad_bias)
                      grad_input None, its work skipped, when not g.input_grad (outs[0] is None)
    max_pool2d forward  (input, g, outs) -> (output, indices)
             backward (grad_output, indices, g, outs) -> (grad_input,)     indices NOT range-checked
    rnn      forward  (input, hx, Wx, Wh, bias, g, outs) -> (output,)      hx may be None (zeros)
             backward (grad_output, input, hx, Wx, Wh, output, g, outs)
                      -> (grad_input, grad_hx, grad_Wx, grad_Wh, grad_bias)

"No bias" is ``bias=None`` everywhere. Inputs may be non-contiguous; a kernel copies what it needs
in C order. ``outs`` holds host buffers for every output, except for kernels declared
``allocates`` (the reference, cuda), which get the caller's buffers or None. An rnn kernel gets
step-shaped arrays (N, .) when ``g.step`` (T = 1). A max_pool2d backward kernel must check every
index against ``[0, H*W)`` itself before writing.
"""
