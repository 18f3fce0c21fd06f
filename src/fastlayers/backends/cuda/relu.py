"""relu on the cuda backend: one thread per element, forward and backward
(kernels/cuda/activation.py)."""
from __future__ import annotations

from ._arrays import Call, flat, kernels


def _launch(factory, size, *arrays):
    if size:
        grid, block = kernels().launch.launch_config("elementwise", size)
        factory(arrays[0].dtype)[grid, block](*map(flat, arrays), size)


def forward(x, g, outs):
    call = Call(x)
    xd = call.input("input", x)
    y = call.output("out", outs[0], g.shape, xd.dtype)
    _launch(kernels().activation.relu_kernel, g.size, xd, y)
    return (call.result(y, outs[0]),)


def backward(dy, x, g, outs):
    call = Call(dy, x)
    dyd, xd = call.input("grad_output", dy), call.input("input", x)
    dx = call.output("out", outs[0], g.shape, xd.dtype)
    _launch(kernels().activation.relu_backward_kernel, g.size, dyd, xd, dx)
    return (call.result(dx, outs[0]),)
