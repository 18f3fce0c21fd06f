"""batch_norm on the cuda backend: a block per channel (kernels/cuda/batch_norm.py), statistics in
the input's dtype. With GPU inputs and GPU (or no) running statistics the statistics come back as
device arrays (the spec then updates the running statistics on the GPU); otherwise as float64
host arrays, as the other backends return them."""
from __future__ import annotations

import numpy as np

from ._arrays import Call, flat, kernels


def _vectors(call, dt, **vectors):
    """The per-channel vectors on the device, empty arrays for the absent ones."""
    return [flat(call.input(name, v)) if v is not None else call.empty(0, dt) for name, v in vectors.items()]


def _launch(factory, g, dt, *args):
    if g.C:
        count = g.N * g.S
        grid, block = kernels().launch.launch_config("reduce", g.C)
        factory(dt)[grid, block](*args, g.training, dt.type(g.eps), g.C, g.S, count, dt.type(max(count, 1)))


def forward(x, running_mean, running_var, weight, bias, g, outs):
    call = Call(x, running_mean, running_var, weight, bias)
    xd = call.input("input", x)
    dt = xd.dtype
    vectors = _vectors(call, dt, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    y = call.output("out", outs[0], tuple(xd.shape), dt)
    mean, var = call.empty(g.C, dt), call.empty(g.C, dt)
    _launch(kernels().batch_norm.forward_kernel, g, dt, flat(xd), *vectors, flat(y), mean, var)
    if call.gpu and not isinstance(running_mean, np.ndarray):  # no read-back for GPU (or no) running statistics
        return call.result(y, outs[0]), mean, var
    return call.result(y, outs[0]), mean.copy_to_host().astype(np.float64), var.copy_to_host().astype(np.float64)


def backward(dy, x, running_mean, running_var, weight, g, outs):
    call = Call(dy, x, running_mean, running_var, weight)
    dyd, xd = call.input("grad_output", dy), call.input("input", x)
    dt = xd.dtype
    vectors = _vectors(call, dt, running_mean=running_mean, running_var=running_var, weight=weight)
    dx = call.output("out[0]", outs[0], tuple(xd.shape), dt)
    dw = call.output("out[1]", outs[1], (g.C,), dt)
    db = call.output("out[2]", outs[2], (g.C,), dt)
    _launch(kernels().batch_norm.backward_kernel, g, dt, flat(dyd), flat(xd), *vectors, flat(dx), dw, db)
    return tuple(call.result(d, o) for d, o in zip((dx, dw, db), outs))


def update_running(running_mean, running_var, mean, var, momentum, count):
    """PyTorch's update of GPU running statistics, in place on the GPU (the variance unbiased)."""
    call = Call(running_mean, running_var, mean, var)
    rm, rv = call.input("running_mean", running_mean), call.input("running_var", running_var)
    dt = rm.dtype.type
    grid, block = kernels().launch.launch_config("elementwise", rm.size)
    kernels().batch_norm.update_running_kernel(rm.dtype)[grid, block](
        flat(rm), flat(rv), flat(mean), flat(var), dt(1 - momentum), dt(momentum), dt(count / (count - 1)), rm.size)
