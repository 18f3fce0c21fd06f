"""max_pool2d on the CUDA backend (Numba simulator) against the NumPy reference."""
import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref
from tests._helpers import assert_close, make_rng

# (x shape, kernel_size, stride, padding, ceil_mode)
CASES = [
    ((2, 3, 6, 6), 2, None, 0, False),
    ((1, 2, 7, 9), 3, 2, 1, True),  # overlapping windows, padding, a partial last window
    ((2, 1, 5, 8), (2, 3), (1, 2), (1, 1), False),  # rectangular, stride 1 rows: heavy overlap
    ((1, 3, 7, 7), 3, 3, 0, True),  # ceil mode: last window hangs over the edge
    ((1, 1, 4, 4), 4, 1, 2, True),  # padding = half the kernel
    ((3, 2, 1, 5), (1, 2), 1, 0, False),
]
IDS = [f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}-{'ceil' if c[4] else 'floor'}" for c in CASES]


def _params(case):
    _, k, s, p, ceil = case
    return dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_backward(case, dtype):
    rng = make_rng(0)
    # Values rounded to a coarse grid so windows hold ties: the first maximum must win.
    x = np.round(rng.uniform(-2, 2, case[0]) * 2).astype(dtype) / 2
    y, idx = fl.max_pool2d(x, backend="cuda", return_indices=True, **_params(case))
    ry, ridx = ref.max_pool2d(x, return_indices=True, **_params(case))
    np.testing.assert_array_equal(y, ry)  # a max is exact
    np.testing.assert_array_equal(idx, ridx)
    assert y.dtype == dtype and idx.dtype == np.int64
    dy = rng.uniform(-1, 1, y.shape).astype(dtype)
    dx = fl.max_pool2d_backward(dy, idx, x.shape, backend="cuda")
    # A cell gathers one term per window that picked it: at most ceil(K/s) per axis.
    _, k, s, _, _ = case
    kh, kw = (k, k) if np.isscalar(k) else k
    sh, sw = (kh, kw) if s is None else ((s, s) if np.isscalar(s) else s)
    overlap = -(-kh // sh) * -(-kw // sw)
    assert_close(dx, ref.max_pool2d_backward(dy, ridx, x.shape), dtype, terms=overlap)


def test_nan_propagates_and_infinities():
    x = np.array([[[[1.0, np.nan, 3.0, np.nan], [-np.inf, -np.inf, 2.0, 5.0],
                    [np.nan, 0.0, -np.inf, -np.inf], [1.0, 2.0, -np.inf, -np.inf]]]])
    for dtype in (np.float32, np.float64):
        xt = x.astype(dtype)
        y, idx = fl.max_pool2d(xt, 2, return_indices=True, backend="cuda")
        ry, ridx = ref.max_pool2d(xt, 2, return_indices=True)
        np.testing.assert_array_equal(y, ry)  # NaN == NaN for assert_array_equal
        np.testing.assert_array_equal(idx, ridx)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1  # the first NaN, not the later 3.0
    assert y[0, 0, 1, 1] == -np.inf and idx[0, 0, 1, 1] == 10  # all -inf: the first cell


def test_backward_rejects_out_of_range_indices_without_writing_outside():
    dy = np.ones((1, 2, 2, 2))
    idx = np.array([0, 3, 1, 2, 2, 16, -1, 0], dtype=np.int64).reshape(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\) = \[0, 16\)"):
        fl.max_pool2d_backward(dy, idx, (1, 2, 4, 4), backend="cuda")


def test_device_arrays_in_place():
    from numba import cuda

    x = make_rng(1).standard_normal((2, 2, 5, 5))
    y, idx = fl.max_pool2d(cuda.to_device(x), 3, stride=2, return_indices=True, backend="cuda")
    ry, ridx = ref.max_pool2d(x, 3, stride=2, return_indices=True)
    np.testing.assert_array_equal(y.copy_to_host(), ry)
    np.testing.assert_array_equal(idx.copy_to_host(), ridx)
    dy = make_rng(2).standard_normal(ry.shape)
    dx = fl.max_pool2d_backward(cuda.to_device(dy), idx, x.shape, backend="cuda")
    assert_close(dx.copy_to_host(), ref.max_pool2d_backward(dy, ridx, x.shape), np.float64, terms=4)


@pytest.mark.parametrize("case", [((1, 2, 9, 10), 3, 2, 1, (2, 1), True), ((2, 1, 7, 7), 2, 1, 0, 3, False)])
def test_dilation_and_unbatched_match_reference(case):
    """Dilated windows (which the cpu kernel declines) and an unbatched (C, H, W) input."""
    shape, k, s, p, d, ceil = case
    x = np.round(make_rng(3).uniform(-2, 2, shape) * 2) / 2  # ties: the first maximum must win
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil, return_indices=True)
    y, idx = fl.max_pool2d(x, backend="cuda", **kw)
    ry, ridx = ref.max_pool2d(x, **kw)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    y1, idx1 = fl.max_pool2d(x[0], backend="cuda", **kw)
    np.testing.assert_array_equal(y1, ry[0])
    np.testing.assert_array_equal(idx1, ridx[0])
