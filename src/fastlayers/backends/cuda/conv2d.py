"""conv2d on the cuda backend: the forward by implicit GEMM (the im2col matrix is never built: each
tile of it is gathered from the input as the GEMM loads it) or by direct loops; the backward
(every algo) by the implicit GEMMs of dX and dW (split-K) and a reduction for db."""
from __future__ import annotations

from ._arrays import Call, bias_or_empty, column_sums, flat, gemm, kernels, split_k_gemm

# algo="auto" takes the direct kernel when a group has fewer filters than this: the implicit GEMM
# then fills less than a quarter of its TILE_N = 64 columns (e.g. lenet's 8 filters, depthwise).
# A rule from the tile shape, not yet from GPU measurements.
DIRECT_MAX_FILTERS_PER_GROUP = 16


def choose_algo(problem):
    """``algo="auto"``: "direct" for groups of fewer than ``DIRECT_MAX_FILTERS_PER_GROUP`` filters,
    "implicit_gemm" otherwise (the backward always runs the implicit GEMMs)."""
    if problem.direction == "forward" and problem.geometry.Fg < DIRECT_MAX_FILTERS_PER_GROUP:
        return "direct"
    return "implicit_gemm"


def _forward(x, w, b, g, outs, launch_kernel):
    call = Call(x, w, b)
    xd, wd = call.input("input", x), call.input("weight", w)
    bd = bias_or_empty(call, b, xd.dtype)
    y = call.output("out", outs[0], g.y_shape, xd.dtype)
    if y.size:
        launch_kernel(xd, wd, bd, y, kernels().conv2d.conv2d_geo(g))
    return (call.result(y, outs[0]),)


def direct_forward(x, w, b, g, outs):
    conv, launch = kernels().conv2d, kernels().launch

    def launch_direct(xd, wd, bd, y, geo):
        grid, block = launch.launch_config("direct", g.N * g.F, g.OH * g.OW)
        conv.direct_kernel(xd.dtype)[grid, block](flat(xd), flat(wd), bd, flat(y), geo)

    return _forward(x, w, b, g, outs, launch_direct)


def implicit_gemm_forward(x, w, b, g, outs):
    conv = kernels().conv2d

    def launch_gemm(xd, wd, bd, y, geo):
        gemm(conv.gemm_kernel("forward", xd.dtype), xd, wd, y, bd, bd, geo, g.N * g.OH * g.OW, g.Fg, g.K, g.groups)

    return _forward(x, w, b, g, outs, launch_gemm)


def implicit_gemm_backward(dy, x, w, g, outs):
    conv = kernels().conv2d
    call = Call(dy, x, w)
    dyd, xd, wd = call.input("grad_output", dy), call.input("input", x), call.input("weight", w)
    dt = xd.dtype
    dx = call.output("out[0]", outs[0], g.x_shape, dt) if g.input_grad else None
    dw = call.output("out[1]", outs[1], g.w_shape, dt)
    db = call.output("out[2]", outs[2], (g.F,), dt)
    geo = conv.conv2d_geo(g)
    taps = g.KH * g.KW
    if dx is not None:
        gemm(conv.gemm_kernel("dx", dt), dyd, wd, dx, dx, dx, geo, g.N * g.H * g.W, g.Cg, g.Fg * taps, g.groups)
    split_k_gemm(call, conv.gemm_kernel("dw", dt), dyd, xd, dw, geo, g.Fg, g.Cg * taps, g.N * g.OH * g.OW,
                 g.groups, dw.size)
    column_sums(dyd, db, g.N, g.F, g.OH * g.OW)
    return tuple(None if d is None else call.result(d, o) for d, o in zip((dx, dw, db), outs))
