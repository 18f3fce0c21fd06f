"""relu and linear on the CUDA backend (Numba simulator) against the NumPy reference.

linear runs the plain tiled GEMMs (TILE_M = TILE_N = 64, TILE_K = 8: kernels/cuda/launch.py); the
cases reach a partial K tile, more than one row tile, leading axes, no bias, empty rows, and the
weight given as the transpose of a C-ordered array (Dense's ``W.T``), which the kernels read
without a copy and whose gradient comes back in that layout.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference as ref
from tests._helpers import assert_close, assert_grad_matches, make_rng, numeric_grad

DTYPES = [np.float32, np.float64]


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=4), seed=st.integers(0, 2**16))
def test_relu_forward_and_backward_match_reference(dtype, shape, seed):
    rng = make_rng(seed)
    # Small integers: exact zeros (gradient 0 at 0) and ties; a NaN where there is room.
    x = rng.integers(-2, 3, shape).astype(dtype)
    if x.size:
        x.reshape(-1)[0] = np.nan
    dy = rng.standard_normal(shape).astype(dtype)
    y = fl.relu(x, backend="cuda")
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, ref.relu(x))  # a selection: exact, NaN included
    np.testing.assert_array_equal(fl.relu_backward(dy, x, backend="cuda"), ref.relu_backward(dy, x))


def test_relu_device_arrays_stay_on_device():
    from numba import cuda

    x = make_rng(1).standard_normal((3, 4, 5))[:, ::2]  # non-contiguous: copied on the device first
    y = fl.relu(cuda.to_device(np.ascontiguousarray(x)), backend="cuda")
    assert isinstance(y, type(cuda.to_device(x[:1].copy())))
    np.testing.assert_array_equal(y.copy_to_host(), ref.relu(x))
    np.testing.assert_array_equal(fl.relu(x, backend="cuda"), ref.relu(x))


# (input shape, out_features, bias): M rows = product of the leading axes, K = in_features.
LINEAR = [
    ((5, 7), 3, True),  # K = 7: a single partial K tile
    ((2, 3, 17), 4, False),  # leading axes, K = 17: two full K tiles and a partial one
    ((65, 3), 65, True),  # a second, partial row tile and column tile
    ((0, 4), 3, True),  # no rows: empty dx, zero dW and db
    ((6,), 2, True),  # a single unbatched row
]
IDS = [f"{s}-O{o}-{'bias' if b else 'nobias'}" for s, o, b in LINEAR]


def _linear_case(case, dtype, seed=0):
    shape, O, bias = case
    rng = make_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(dtype)
    w = rng.uniform(-1, 1, (O, shape[-1])).astype(dtype)
    b = rng.uniform(-1, 1, O).astype(dtype) if bias else None
    dy = rng.uniform(-1, 1, shape[:-1] + (O,)).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("transposed", [False, True], ids=["weight", "W.T"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LINEAR, ids=IDS)
def test_linear_forward_and_backward_match_reference(case, dtype, transposed):
    x, w, b, dy = _linear_case(case, dtype)
    weight = np.ascontiguousarray(w.T).T if transposed else w
    I, M = x.shape[-1], x.size // x.shape[-1]
    y = fl.linear(x, weight, b, backend="cuda")
    assert y.dtype == dtype
    # Each output sums I products (+ bias); the float64 reference of the same values is exact
    # to float64 rounding, so only the kernel's own rounding is measured.
    assert_close(y, ref.linear(_f64(x), _f64(w), _f64(b)), dtype, terms=I + 1)
    grads = fl.linear_backward(dy, x, weight, backend="cuda")
    want = ref.linear_backward(_f64(dy), _f64(x), _f64(w))
    for name, got, expected, terms in zip(("dx", "dW", "db"), grads, want, (w.shape[0], M, M)):
        assert got.dtype == dtype, name
        assert_close(got, expected, dtype, terms=terms, err_msg=name)


def test_linear_device_weight_transpose_and_its_gradient_layout():
    """A device weight that is the transpose of a C-ordered (in, out) array is read without a
    copy, and its gradient comes back in that layout: ``grad_weight.T`` is C-ordered."""
    from numba import cuda

    from fastlayers.backends.cuda._arrays import transpose_view

    x, w, _, dy = _linear_case(LINEAR[1], np.float64)
    x, dy, b = x.reshape(6, 17), dy.reshape(6, 4), make_rng(3).uniform(-1, 1, w.shape[0])
    W = cuda.to_device(np.ascontiguousarray(w.T))  # Dense's layout (in, out)
    xd, bd, dyd = cuda.to_device(x), cuda.to_device(b), cuda.to_device(dy)
    y = fl.linear(xd, transpose_view(W), bd, backend="cuda")
    assert_close(y.copy_to_host(), ref.linear(x, w, b), np.float64, terms=x.shape[1] + 1)
    dx, dw, db = fl.linear_backward(dyd, xd, transpose_view(W), backend="cuda")
    assert tuple(dw.shape) == w.shape and transpose_view(dw).is_c_contiguous()
    for got, want, terms in zip((dx, dw, db), ref.linear_backward(dy, x, w), (w.shape[0], 6, 6)):
        assert_close(got.copy_to_host(), want, np.float64, terms=terms)


def test_linear_backward_matches_finite_differences():
    x, w, b, dy = _linear_case(LINEAR[1], np.float64)
    b = make_rng(3).uniform(-1, 1, w.shape[0])
    dx, dw, db = fl.linear_backward(dy, x, w, backend="cuda")
    arrays = dict(x=x, w=w, b=b)
    forward = lambda x, w, b: ref.linear(x, w, b)  # noqa: E731
    for name, analytic in (("x", dx), ("w", dw), ("b", db)):
        assert_grad_matches(analytic, numeric_grad(forward, arrays, name, dy), err_msg=name)


def test_relu_backward_matches_finite_differences():
    x = make_rng(4).uniform(-1, 1, (3, 5))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink, where the derivative exists
    dy = make_rng(5).uniform(-1, 1, x.shape)
    analytic = fl.relu_backward(dy, x, backend="cuda")
    assert_grad_matches(analytic, numeric_grad(lambda x: ref.relu(x), dict(x=x), "x", dy))
