"""conv2d on the CUDA backend (Numba simulator) against the NumPy reference.

Sizes stay tiny (the simulator costs ~0.1 ms per GPU thread and a tiled-GEMM block has 256), but
cover every parameter and the tile edges: TILE_M = TILE_N = 64, TILE_K = 8 (kernels/cuda/launch.py).
"""
import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref
from fastlayers.ops.conv2d import conv2d_geometry
from tests._helpers import assert_close, assert_grad_matches, make_rng, numeric_grad

# (x shape, w shape, params, bias): each case mixes several parameters; comments say which tile
# edge it reaches (M = N*OH*OW rows, columns = filters per group, K = C/groups*KH*KW).
CASES = [
    ((2, 3, 5, 6), (4, 3, 3, 3), dict(padding=1), True),  # K = 27: three full K tiles and a partial
    ((2, 2, 7, 5), (3, 2, 2, 3), dict(stride=(2, 1), padding=(1, 2)), False),  # asymmetric stride/pad
    ((1, 4, 6, 6), (6, 2, 3, 3), dict(padding="same", dilation=2, groups=2), True),  # grouped, dilated
    ((1, 2, 6, 7), (2, 2, 2, 4), dict(padding="same"), True),  # even kernel: 'same' pads bottom/right more
    ((2, 3, 4, 4), (3, 1, 3, 3), dict(padding=1, groups=3), False),  # depthwise
    ((1, 1, 9, 8), (5, 1, 3, 2), dict(stride=2, dilation=(1, 2), padding="valid"), True),
    ((1, 65, 2, 2), (2, 65, 1, 1), dict(), False),  # 65 input channels: dX has two column tiles
    ((1, 2, 3, 3), (1, 2, 3, 3), dict(padding=0), True),  # a single output pixel
]


def _case(case, dtype, seed=0):
    x_shape, w_shape, params, bias = case
    rng = make_rng(seed)
    # Uniform [-1, 1] data keeps every product |x * w| <= 1, the scale of assert_close.
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    w = rng.uniform(-1, 1, w_shape).astype(dtype)
    b = rng.uniform(-1, 1, w_shape[0]).astype(dtype) if bias else None
    return x, w, b, params


def _ids(cases):
    return [f"{xs}-{ws}-{p}" for xs, ws, p, _ in cases]


def _f64(a):
    return None if a is None else a.astype(np.float64)


@pytest.mark.parametrize("algo", ["direct", "implicit_gemm"])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_forward_float64(case, algo):
    x, w, b, params = _case(case, np.float64)
    y = fl.conv2d(x, w, b, algo=algo, backend="cuda", **params)
    assert y.dtype == np.float64
    # Each output sums C/groups*KH*KW products (+ bias): the rounding of a sum that long.
    assert_close(y, ref.conv2d(x, w, b, **params), np.float64, terms=w[0].size + 1)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_backward_float64(case):
    x, w, _, params = _case(case, np.float64)
    g = conv2d_geometry(x.shape, w.shape, **params)
    dy = make_rng(1).uniform(-1, 1, g.y_shape)
    dx, dw, db = fl.conv2d_backward(dy, x, w, backend="cuda", **params)
    rx, rw, rb = ref.conv2d_backward(dy, x, w, **params)
    # dx sums F/groups*KH*KW products, dw and db sum over N*OH*OW.
    assert_close(dx, rx, np.float64, terms=w.shape[0] // g.groups * g.KH * g.KW)
    assert_close(dw, rw, np.float64, terms=g.N * g.OH * g.OW)
    assert_close(db, rb, np.float64, terms=g.N * g.OH * g.OW)


@pytest.mark.parametrize("case", CASES[:3], ids=_ids(CASES[:3]))
def test_backward_without_input_grad(case):
    """input_grad=False: no grad_input (None), the others the reference's."""
    x, w, _, params = _case(case, np.float64)
    g = conv2d_geometry(x.shape, w.shape, **params)
    dy = make_rng(1).uniform(-1, 1, g.y_shape)
    dx, dw, db = fl.conv2d_backward(dy, x, w, backend="cuda", input_grad=False, **params)
    _, rw, rb = ref.conv2d_backward(dy, x, w, **params)
    assert dx is None
    assert_close(dw, rw, np.float64, terms=g.N * g.OH * g.OW)
    assert_close(db, rb, np.float64, terms=g.N * g.OH * g.OW)


# float32: a representative subset (each case costs seconds in the simulator).
F32 = [CASES[0], CASES[2], CASES[6]]  # K-tile edge; groups + dilation; 65 channels


@pytest.mark.parametrize("case", F32, ids=_ids(F32))
def test_float32_forward_and_backward(case):
    x, w, b, params = _case(case, np.float32)
    g = conv2d_geometry(x.shape, w.shape, **params)
    dy = make_rng(1).uniform(-1, 1, g.y_shape).astype(np.float32)
    # The float64 reference of the same float32 data: only our float32 rounding differs.
    expected = ref.conv2d(_f64(x), _f64(w), _f64(b), **params)
    for algo in ("direct", "implicit_gemm"):
        y = fl.conv2d(x, w, b, algo=algo, backend="cuda", **params)
        assert y.dtype == np.float32
        assert_close(y, expected, np.float32, terms=w[0].size + 1, err_msg=algo)
    grads = fl.conv2d_backward(dy, x, w, backend="cuda", **params)
    terms = (w.shape[0] // g.groups * g.KH * g.KW, g.N * g.OH * g.OW, g.N * g.OH * g.OW)
    for got, want, t in zip(grads, ref.conv2d_backward(_f64(dy), _f64(x), _f64(w), **params), terms):
        assert got.dtype == np.float32
        assert_close(got, want, np.float32, terms=t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_gemm_two_partial_tiles_each_way(dtype):
    """72 rows and 66 filters: a second, partial tile along both M and N of the implicit GEMM
    (forward only: the direct kernel and the backward have no filter tiles, and 132 filter
    planes would cost the simulator minutes)."""
    x, w, b, params = _case(((2, 1, 6, 6), (66, 1, 1, 1), dict(), True), dtype)
    y = fl.conv2d(x, w, b, algo="implicit_gemm", backend="cuda")
    assert_close(y, ref.conv2d(_f64(x), _f64(w), _f64(b)), dtype, terms=2)


def test_weight_gradient_split_k(monkeypatch):
    """dW splits K = N*OH*OW into chunks summed by a second kernel; real sizes split only beyond
    SPLIT_K_MIN_CHUNK = 512 terms, so shrink the chunk: K = 56 here splits 16 + 16 + 16 + 8."""
    from fastlayers._cuda import launch

    monkeypatch.setattr(launch, "SPLIT_K_MIN_CHUNK", 16)
    x, w, _, params = _case(CASES[1], np.float64)
    g = conv2d_geometry(x.shape, w.shape, **params)
    assert launch.split_k(g.F, w[0].size, g.N * g.OH * g.OW)[0] > 1  # the split path really runs
    dy = make_rng(1).uniform(-1, 1, g.y_shape)
    dw = fl.conv2d_backward(dy, x, w, backend="cuda", **params)[1]
    assert_close(dw, ref.conv2d_backward(dy, x, w, **params)[1], np.float64, terms=g.N * g.OH * g.OW)


def test_backward_matches_finite_differences():
    x, w, b, params = _case(CASES[2], np.float64)
    g = conv2d_geometry(x.shape, w.shape, **params)
    dy = make_rng(1).uniform(-1, 1, g.y_shape)
    dx, dw, db = fl.conv2d_backward(dy, x, w, backend="cuda", **params)
    arrays = dict(x=x, w=w, b=b)
    forward = lambda x, w, b: ref.conv2d(x, w, b, **params)  # noqa: E731
    for name, analytic in (("x", dx), ("w", dw), ("b", db)):
        assert_grad_matches(analytic, numeric_grad(forward, arrays, name, dy), err_msg=name)


def test_device_arrays_in_place_and_out_buffers():
    """Device arrays in -> device arrays out, no host copy. The simulator's device arrays carry no
    __cuda_array_interface__, so the functional API cannot tell them from host arrays (it picks
    the backend and checks ``out`` by that): name the backend, and reach GPU ``out`` buffers
    through the backend interface."""
    from numba import cuda

    from fastlayers.backends.cuda import conv2d as backend

    x, w, b, params = _case(CASES[0], np.float64)
    xd, wd, bd = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    expected = ref.conv2d(x, w, b, **params)
    y = fl.conv2d(xd, wd, bd, backend="cuda", **params)
    assert isinstance(y, type(xd))
    assert_close(y.copy_to_host(), expected, np.float64, terms=w[0].size + 1)

    g = conv2d_geometry(x.shape, w.shape, **params)
    out = cuda.device_array(g.y_shape)
    assert backend.implicit_gemm_forward(xd, wd, bd, g, (out,))[0] is out
    assert_close(out.copy_to_host(), expected, np.float64, terms=w[0].size + 1)
    with pytest.raises(TypeError, match="out must be a GPU array"):
        backend.implicit_gemm_forward(xd, wd, bd, g, (np.empty(g.y_shape),))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4, 5, 6\)"):
        backend.implicit_gemm_forward(xd, wd, bd, g, (cuda.device_array((2, 4, 5, 5)),))

    host_out = np.empty_like(expected)
    assert fl.conv2d(x, w, b, backend="cuda", out=host_out, **params) is host_out
    assert_close(host_out, expected, np.float64, terms=w[0].size + 1)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_padding_mode_and_unbatched_match_reference(mode):
    """padding_mode pads on the host before the kernel; an unbatched (C, H, W) input runs as N = 1."""
    rng = make_rng(4)
    x, w, b = rng.uniform(-1, 1, (3, 5, 6)), rng.uniform(-1, 1, (4, 3, 3, 3)), rng.uniform(-1, 1, 4)
    kw = dict(padding=1, padding_mode=mode)
    y = fl.conv2d(x, w, b, backend="cuda", **kw)
    assert y.shape == (4, 5, 6)
    assert_close(y, ref.conv2d(x, w, b, **kw), np.float64, terms=w[0].size + 1)
    dy = rng.uniform(-1, 1, y.shape)
    # dx: F*KH*KW = 36 terms per padded cell, folded onto an input cell up to twice per axis (144);
    # dw and db: OH*OW = 30 terms.
    for got, want in zip(fl.conv2d_backward(dy, x, w, backend="cuda", **kw), ref.conv2d_backward(dy, x, w, **kw)):
        assert_close(got, want, np.float64, terms=144)
