"""max_pool2d on the cuda backend: one thread per output (values and argmax indices) forward, one
thread per pooled element scattering to its argmax backward."""
from __future__ import annotations

import numpy as np

from ._arrays import Call, fill, flat, kernels


def forward(x, g, outs):
    launch, pool = kernels().launch, kernels().max_pool2d
    call = Call(x)
    xd = call.input("input", x)
    y = call.output("out[0]", outs[0], g.y_shape, xd.dtype)
    indices = call.output("out[1]", outs[1], g.y_shape, np.int64)
    if y.size:
        grid, block = launch.launch_config("elementwise", y.size)
        pool.forward_kernel(xd.dtype)[grid, block](flat(xd), flat(y), flat(indices), pool.pool2d_geo(g))
    return call.result(y, outs[0]), call.result(indices, outs[1])


def backward(dy, indices, g, outs):
    launch, pool = kernels().launch, kernels().max_pool2d
    call = Call(dy, indices)
    dyd, idx = call.input("grad_output", dy), call.input("indices", indices)
    dx = call.output("out", outs[0], g.x_shape, dyd.dtype)
    fill(dx, 0)
    if dyd.size:
        bad = call.scratch("bad index flag", 1, np.int32)
        fill(bad, 0)
        grid, block = launch.launch_config("elementwise", dyd.size)
        pool.backward_kernel(dyd.dtype)[grid, block](
            flat(dyd), flat(idx), flat(dx), bad, g.N * g.C, g.OH * g.OW, g.H * g.W
        )
        if g.check_indices and bad.copy_to_host()[0]:  # the call's one device-to-host read
            raise ValueError(f"indices must lie in [0, H*W) = [0, {g.H * g.W}); some do not (those were skipped)")
    return (call.result(dx, outs[0]),)
