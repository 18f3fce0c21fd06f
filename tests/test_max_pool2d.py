"""max_pool2d on the "cpu" backend against the NumPy reference (and PyTorch where installed).

A maximum is a selection, not arithmetic: forward values and indices must equal the reference's
exactly (bitwise, NaN where NaN). The backward adds at most a few gradients per cell; where no
window overlaps another (each cell receives at most one gradient) it is exact too, and where
windows overlap the kernel adds in float32 (or float64) while the reference adds in float64 and
rounds once, so the tolerance is that of a sum of ``kernel area`` terms (assert_close).
"""
import importlib

import numpy as np
import pytest
from _helpers import assert_close, assert_grad_matches, make_rng, numeric_grad
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference as ref

cpu_backend = importlib.import_module("fastlayers.backends.cpu.max_pool2d")

DTYPES = (np.float32, np.float64)


def cpu_pool(x, *args, return_indices=True, **kwargs):
    return fl.max_pool2d(x, *args, return_indices=return_indices, backend="cpu", **kwargs)


def cpu_pool_backward(dy, indices, input_shape, **kwargs):
    return fl.max_pool2d_backward(dy, indices, input_shape, backend="cpu", **kwargs)


def assert_forward_matches(x, **params):
    """With indices, and without (the kernel's maxima-only path: the same values, bit for bit)."""
    y, idx = cpu_pool(x, **params)
    y_ref, idx_ref = ref.max_pool2d(x, **params, return_indices=True)
    assert y.dtype == x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref, err_msg=str(params))  # NaN == NaN here
    np.testing.assert_array_equal(idx, idx_ref, err_msg=str(params))
    bits = f"u{x.itemsize}"
    np.testing.assert_array_equal(y.view(bits), y_ref.view(bits), err_msg=str(params))
    values = cpu_pool(x, return_indices=False, **params)
    np.testing.assert_array_equal(values.view(bits), y_ref.view(bits), err_msg=str(params))
    return y, idx


def tie_data(rng, shape, dtype, nan=0.0, neg_inf=0.0):
    """Small integers (many ties), with a fraction of NaN and -inf cells."""
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    x[rng.random(shape) < nan] = np.nan
    x[rng.random(shape) < neg_inf] = -np.inf
    return x


@st.composite
def pool_problems(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 13))
    w = draw(st.integers(max(1, kw - 2 * pw), 13))
    params = dict(
        kernel_size=(kh, kw),
        stride=draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4)))),
        padding=(ph, pw),
        ceil_mode=draw(st.booleans()),
    )
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    return shape, params


@pytest.fixture(params=["wide", "16-byte"])
def vectors(request):
    """Run a test with the 2x2 planes' 32-byte vectors (AVX2 CPUs; elsewhere both runs take the
    16-byte rows), then with the 16-byte SSE2 rows that other CPUs run."""
    previous = cpu_backend._kernels.use_baseline_vectors(request.param == "16-byte")
    yield request.param
    cpu_backend._kernels.use_baseline_vectors(previous)


@pytest.fixture(params=[False, True], ids=["cached-stores", "streaming-stores"])
def streaming(request, monkeypatch):
    """Run a test with the 2x2 path's ordinary stores, then with its non-temporal ones (used for
    multi-MiB outputs only, so forced here by lowering the threshold)."""
    if request.param:
        monkeypatch.setattr(cpu_backend, "STREAMING_MIN_BYTES", 0)
    return request.param


# ---------------------------------------------------------------------------- forward


@settings(max_examples=150, deadline=None)
@given(problem=pool_problems(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       nan=st.sampled_from([0.0, 0.1]), neg_inf=st.sampled_from([0.0, 0.3]))
def test_forward_matches_reference(problem, dtype, seed, nan, neg_inf):
    shape, params = problem
    x = tie_data(make_rng(seed), shape, dtype, nan, neg_inf)
    assert_forward_matches(x, **params)


# The 2x2 stride-2 fast path works on 8 (float32) or 4 (float64) outputs at a time in its
# 32-byte vectors, then 4 or 2 in its 16-byte ones, then one: widths around those multiples
# exercise each loop and the tails; odd sizes drop the last row/column (floor) or fall back to
# the general path (ceil mode); widths whose rows are not 16-byte aligned take ordinary stores
# even when streaming (and streaming takes the 16-byte rows).
WIDTHS_2X2 = [(2, 2), (2, 8), (4, 10), (6, 14), (7, 9), (5, 16), (3, 18), (8, 17), (2, 34), (4, 40), (3, 46)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", WIDTHS_2X2)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_forward_2x2_fast_path(dtype, hw, ceil_mode, streaming, vectors):
    rng = make_rng(sum(hw))
    for nan, neg_inf in [(0.0, 0.0), (0.15, 0.0), (0.0, 0.5), (0.1, 0.3)]:
        x = tie_data(rng, (2, 3, *hw), dtype, nan, neg_inf)
        x[rng.random(x.shape) < 0.1] = -0.0  # ties of zeros of both signs: the first wins, sign and all
        assert_forward_matches(x, kernel_size=2, stride=2, ceil_mode=ceil_mode)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", WIDTHS_2X2)
@pytest.mark.parametrize("indexed", [False, True])
def test_forward_2x2_relu_inside_the_pool_is_relu_of_the_maxima(dtype, hw, indexed, vectors):
    """The kernel's fused ReLU (a Sequential's ReLU next to its MaxPool2D) on 2x2 tiles: bit for
    bit relu.pyx's rule (x < 0 -> +0; NaN and -0.0 kept) applied to the reference's maxima (of
    tied zeros the first, whatever its sign), and their indices."""
    rng = make_rng(hw[1])
    x = tie_data(rng, (2, 3, *hw), dtype, nan=0.1, neg_inf=0.1)
    x[rng.random(x.shape) < 0.2] = -0.0
    y_ref, idx_ref = ref.max_pool2d(x, 2, return_indices=True)
    expected = np.where(y_ref < 0, dtype(0), y_ref)
    planes = x.shape[0] * x.shape[1]
    y = np.full((planes,) + y_ref.shape[2:], 7, dtype)
    idx = np.full(y.shape, -5, np.int64) if indexed else None
    cpu_backend._kernels.max_pool2d_forward(x.reshape(planes, *hw), y, idx, 2, 2, 2, 2, 0, 0, False, True,
                                            np.empty((1, 1), dtype), 1)
    bits = f"u{x.itemsize}"
    np.testing.assert_array_equal(y.view(bits), expected.reshape(y.shape).view(bits))
    if indexed:
        np.testing.assert_array_equal(idx, idx_ref.reshape(idx.shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)])
def test_forward_without_indices_writes_none(dtype, params, monkeypatch):
    """return_indices=False: the kernel gets no index buffer at all (the maxima-only path), unless
    the caller passes one in ``out``, which is then filled as with return_indices=True."""
    seen = []
    kernel = cpu_backend._kernels.max_pool2d_forward

    def spy(x, y, indices, *args):
        seen.append(indices)
        return kernel(x, y, indices, *args)

    monkeypatch.setattr(cpu_backend._kernels, "max_pool2d_forward", spy)
    x = make_rng(3).standard_normal((2, 3, 8, 8)).astype(dtype)
    y_ref, idx_ref = ref.max_pool2d(x, **params, return_indices=True)
    np.testing.assert_array_equal(cpu_pool(x, return_indices=False, **params), y_ref)
    assert seen == [None]
    idx = np.full(idx_ref.shape, -5, np.int64)
    np.testing.assert_array_equal(cpu_pool(x, return_indices=False, out=(None, idx), **params), y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert seen[1] is not None


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_nan_last_in_window_order(dtype):
    # Window (a b / c d) = (1 NaN / NaN 5): the last NaN in row-major order is c (PyTorch's CPU rule).
    x = np.array([[[[1, np.nan], [np.nan, 5]]]], dtype=dtype)
    y, idx = cpu_pool(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 2
    # The general path too (3x3 windows, stride 1, padding 1): several NaNs per window.
    x = np.array([[[[np.nan, 1, np.nan], [2, np.nan, 3], [4, 5, np.nan]]]], dtype=dtype)
    y, idx = cpu_pool(x, 3, stride=1, padding=1)
    np.testing.assert_array_equal(idx[0, 0], [[4, 4, 4], [4, 8, 8], [4, 8, 8]])
    x = np.array([[[[-np.inf, -np.inf], [-np.inf, -np.inf]]]], dtype=dtype)
    y, idx = cpu_pool(x, 2)
    assert y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_non_contiguous_input(dtype):
    rng = make_rng(1)
    base = rng.standard_normal((3, 4, 12, 10)).astype(dtype)
    for x in (base.transpose(0, 1, 3, 2), base[:, ::2, 1:, ::-1], np.asfortranarray(base)):
        assert_forward_matches(x, kernel_size=2, stride=2)
        assert_forward_matches(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_out_buffers(dtype):
    rng = make_rng(2)
    x = rng.standard_normal((2, 3, 10, 12)).astype(dtype)
    y_ref, idx_ref = ref.max_pool2d(x, 2, return_indices=True)
    y_buf = np.full(y_ref.shape, 7, dtype=dtype)
    idx_buf = np.full(y_ref.shape, -7, dtype=np.int64)
    y, idx = cpu_pool(x, 2, out=(y_buf, idx_buf))
    assert y is y_buf and idx is idx_buf
    np.testing.assert_array_equal(y_buf, y_ref)
    np.testing.assert_array_equal(idx_buf, idx_ref)
    y_buf[...] = 0
    y, idx = cpu_pool(x, 2, out=y_buf)  # y only: fresh indices
    assert y is y_buf
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    idx_buf[...] = 0
    y, idx = cpu_pool(x, 2, out=(None, idx_buf))
    assert idx is idx_buf
    np.testing.assert_array_equal(idx, idx_ref)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4)])
def test_forward_empty_batch(shape):
    x = np.zeros(shape, dtype=np.float32)
    y, idx = cpu_pool(x, 2)
    assert y.shape == idx.shape == shape[:2] + (2, 2)


def test_forward_same_result_any_thread_count(split_work):
    x = tie_data(make_rng(3), (4, 5, 9, 11), np.float32, nan=0.05)
    results = []
    for n in (1, 2, 3):
        with fl.threads(n):
            results.append(cpu_pool(x, 3, stride=2, padding=1))
    for y, idx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(idx, results[0][1])


# ---------------------------------------------------------------------------- backward


def overlaps(params):
    kh, kw = params["kernel_size"]
    sh, sw = params["stride"] or (kh, kw)
    return sh < kh or sw < kw


@settings(max_examples=120, deadline=None)
@given(problem=pool_problems(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_backward_matches_reference(problem, dtype, seed):
    shape, params = problem
    rng = make_rng(seed)
    x = tie_data(rng, shape, dtype)
    _, idx = cpu_pool(x, **params)
    dy = rng.standard_normal(idx.shape).astype(dtype)
    dx = cpu_pool_backward(dy, idx, x.shape)
    dx_ref = ref.max_pool2d_backward(dy, idx, x.shape)
    assert dx.dtype == dtype
    if overlaps(params):
        kh, kw = params["kernel_size"]
        assert_close(dx, dx_ref, dtype, terms=kh * kw, scale=np.abs(dy).max(initial=0) * kh * kw)
    else:
        np.testing.assert_array_equal(dx, dx_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(2, 2), (4, 8), (6, 10), (8, 14), (4, 18), (2, 34), (4, 40), (2, 46)])
def test_backward_2x2_tiles(dtype, hw, streaming, vectors):
    rng = make_rng(hw[1])
    x = tie_data(rng, (2, 3, *hw), dtype, nan=0.1)
    _, idx = cpu_pool(x, 2)
    dy = rng.standard_normal(idx.shape).astype(dtype)
    dy[0, 0, 0, 0] = np.nan  # routed like any value, to its one cell
    out = np.full(x.shape, 99, dtype=dtype)  # every cell must be overwritten
    dx = cpu_pool_backward(dy, idx, x.shape, out=out)
    assert dx is out
    np.testing.assert_array_equal(dx, ref.max_pool2d_backward(dy, idx, x.shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", [(2, 2), (3, 2), (1, 3), (2, 4)])
@pytest.mark.parametrize("OW", [5, 19])
def test_backward_foreign_indices(dtype, tile, OW, vectors):
    """Indices that are in range but not in their own tile (as a caller may pass, or a pool with
    overlapping windows produces) take the scatter-add path and still add up correctly."""
    rng = make_rng(tile[0] * 10 + tile[1])
    OH = 3
    shape = (2, 2, OH * tile[0], OW * tile[1])
    dy = rng.standard_normal((2, 2, OH, OW)).astype(dtype)
    idx = rng.integers(0, shape[2] * shape[3], size=dy.shape)
    dx = cpu_pool_backward(dy, idx, shape, out=np.full(shape, 99, dtype=dtype))
    # At most OH*OW gradients land in one cell.
    assert_close(dx, ref.max_pool2d_backward(dy, idx, shape), dtype, terms=OH * OW, scale=OH * OW)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_empty(dtype):
    dx = cpu_pool_backward(np.zeros((0, 3, 2, 2), dtype), np.zeros((0, 3, 2, 2), np.int64), (0, 3, 4, 4))
    assert dx.shape == (0, 3, 4, 4)
    dx = cpu_pool_backward(np.zeros((1, 2, 0, 2), dtype), np.zeros((1, 2, 0, 2), np.int64), (1, 2, 3, 4),
                           out=np.ones((1, 2, 3, 4), dtype))
    np.testing.assert_array_equal(dx, 0)


@pytest.mark.parametrize("params", [
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2)),
])
def test_backward_gradient_check(params):
    """Finite differences of the cpu forward against the cpu backward (float64). Distinct values
    a step of 0.1 apart: the eps=1e-6 perturbation never changes which cell wins."""
    rng = make_rng(4)
    shape = (2, 2, 6, 7)
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.1
    y, idx = cpu_pool(x, **params)
    dy = rng.standard_normal(y.shape)
    numeric = numeric_grad(lambda x: cpu_pool(x, return_indices=False, **params), {"x": x}, "x", dy)
    assert_grad_matches(cpu_pool_backward(dy, idx, shape), numeric, err_msg=str(params))


# ---------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", [
    dict(kernel_size=2, stride=2),
    dict(kernel_size=2, stride=2, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(1, 3), padding=(1, 0)),
    dict(kernel_size=4, stride=3, padding=2, ceil_mode=True),
])
def test_matches_torch(dtype, params):
    torch = pytest.importorskip("torch")
    rng = make_rng(5)
    # Distinct values: PyTorch's tie-breaking is not documented, so ties are left to the reference.
    x = rng.permutation(2 * 3 * 11 * 13).reshape(2, 3, 11, 13).astype(dtype)
    y, idx = cpu_pool(x, **params)
    xt = torch.from_numpy(x).requires_grad_()
    yt, idxt = torch.nn.functional.max_pool2d(xt, return_indices=True, **{k: v for k, v in params.items()})
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, idxt.numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    kh, kw = params["kernel_size"] if isinstance(params["kernel_size"], tuple) else (params["kernel_size"],) * 2
    assert_close(cpu_pool_backward(dy, idx, x.shape), xt.grad.numpy(), dtype, terms=kh * kw, scale=kh * kw)


def test_nan_matches_torch_values():
    """With NaN, the values agree with PyTorch; indices differ by design (PyTorch picks the last
    NaN of a window, fastlayers the first)."""
    torch = pytest.importorskip("torch")
    x = tie_data(make_rng(6), (2, 3, 10, 12), np.float32, nan=0.1)
    yt = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, stride=2, padding=1)
    np.testing.assert_array_equal(cpu_pool(x, 3, stride=2, padding=1)[0], yt.numpy())


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((np.zeros((4, 4), np.float32), 2), {}, ValueError, "input must be 3-D or 4-D"),
    ((np.zeros((1, 1, 4, 4), np.int32), 2), {}, TypeError, "input must have dtype float32 or float64, got int32"),
    ((np.zeros((1, 1, 9, 9), np.float32), 2), dict(dilation=2), NotImplementedError,
     "cpu max_pool2d kernel has no dilation"),
    ((np.zeros((1, 1, 4, 4), np.float32), 2), dict(padding=2), ValueError, "padding must be at most half"),
    ((np.zeros((1, 1, 3, 4), np.float32), (4, 2)), dict(padding=(0, 1)), ValueError, "kernel_size 4x2 is larger than"),
    ((np.zeros((1, 1, 4, 4), np.float32), 0), {}, ValueError, "kernel_size must be >= 1"),
    ((np.zeros((1, 1, 4, 4), np.float32), 2), dict(stride=0), ValueError, "stride must be >= 1"),
    ((np.zeros((1, 1, 4, 4), np.float32), 2), dict(out=np.zeros((1, 1, 2, 2), np.float64)), TypeError,
     r"out\[0\] must have dtype float32"),
    ((np.zeros((1, 1, 4, 4), np.float32), 2), dict(out=(None, np.zeros((1, 1, 2, 3), np.int64))), ValueError,
     r"out\[1\] must have shape \(1, 1, 2, 2\)"),
])
def test_forward_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        cpu_pool(*args, **kwargs)


def backward_args(indices=None, dy_dtype=np.float32):
    dy = np.ones((1, 2, 2, 2), dy_dtype)
    if indices is None:
        indices = np.zeros((1, 2, 2, 2), np.int64)
    return dy, indices, (1, 2, 4, 4)


@pytest.mark.parametrize("args, error, match", [
    (backward_args(indices=np.zeros((1, 2, 2, 2), np.int32)), TypeError, "indices must be an int64 array"),
    (backward_args(indices=np.zeros((1, 2, 2, 3), np.int64)), ValueError, r"indices must have shape \(1, 2, 2, 2\)"),
    (backward_args(dy_dtype=np.int64), TypeError, "grad_output must have dtype float32 or float64"),
    ((np.ones((2, 2), np.float32), np.zeros((2, 2), np.int64), (1, 2, 4, 4)), ValueError,
     "grad_output must be 3-D or 4-D"),
    ((np.ones((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.int64), (1, 2, 4, 4)), ValueError,
     r"input_shape must be a tuple of 3 .*grad_output is 3-D"),
    (backward_args()[:2] + ((1, 3, 4, 4),), ValueError, "must match input_shape"),
    (backward_args()[:2] + ((1, 2, 4),), ValueError, "input_shape must be a tuple of 4"),
])
def test_backward_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        cpu_pool_backward(*args)


@pytest.mark.parametrize("bad_index", [-1, 16, 2**40])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_index_out_of_range_never_written(bad_index, dtype):
    """An index outside [0, H*W) raises ValueError before anything is written: neither the
    caller's dx (the front of a larger buffer) nor what lies behind it changes."""
    dy, idx, shape = backward_args(dy_dtype=dtype)
    idx = np.array([[[[0, 2], [8, 10]], [[5, 3], [bad_index, 15]]]], np.int64)
    backing = np.full(np.prod(shape) + 64, 42, dtype=dtype)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\) = \[0, 16\)"):
        cpu_pool_backward(dy, idx, shape, out=backing[: np.prod(shape)].reshape(shape))
    np.testing.assert_array_equal(backing, 42)


@pytest.mark.parametrize("path", ["phase rows", "phase rows, 16-byte vectors", "window scan"])
@settings(max_examples=80, deadline=None)
@given(problem=pool_problems(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       nan=st.sampled_from([0.0, 0.1]), neg_inf=st.sampled_from([0.0, 0.3]))
def test_forward_general_paths_match_reference(path, problem, dtype, seed, nan, neg_inf):
    """Each way of the general forward (kernels/cpu/max_pool2d_phases.h, in the variant for AVX2
    CPUs and the one for the others, and the window scan taken past the phase rows' budget) on
    ties, NaNs and -inf, bit for bit the reference's values and indices."""
    shape, params = problem
    x = tie_data(make_rng(seed), shape, dtype, nan, neg_inf)
    budget = cpu_backend.PHASE_ROWS_MAX_BYTES
    previous = cpu_backend._kernels.use_baseline_vectors(path == "phase rows, 16-byte vectors")
    cpu_backend.PHASE_ROWS_MAX_BYTES = 0 if path == "window scan" else budget
    try:
        assert_forward_matches(x, **params)
    finally:
        cpu_backend.PHASE_ROWS_MAX_BYTES = budget
        cpu_backend._kernels.use_baseline_vectors(previous)
