"""batch_norm on the CUDA backend (Numba simulator) against the NumPy reference: a block of
REDUCE_BLOCK = 128 threads per channel, so the cases include channels of more than 128 values
(each thread then sums several)."""
import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref
from tests._helpers import assert_close, assert_grad_matches, make_rng, numeric_grad

# (input shape, affine): (N, C) input, (N, C, L), NCHW with 243 values per channel.
CASES = [((5, 3), True), ((2, 2, 3), False), ((3, 2, 9, 9), True)]
IDS = [f"{s}-{'affine' if a else 'plain'}" for s, a in CASES]


def _case(shape, affine, dtype, seed=0):
    rng = make_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    w, b = (rng.uniform(0.5, 2, C).astype(dtype), rng.uniform(-1, 1, C).astype(dtype)) if affine else (None, None)
    stats = rng.uniform(-1, 1, C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    return x, w, b, stats, rng.standard_normal(shape).astype(dtype)


def _f64(a):
    return None if a is None else a.astype(np.float64)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_backward_and_running_statistics_match_reference(case, dtype, training):
    x, w, b, (rm, rv), dy = _case(*case, dtype)
    count = x.size // x.shape[1]
    got_stats, want_stats = (rm.copy(), rv.copy()), (_f64(rm), _f64(rv))
    y = fl.batch_norm(x, *got_stats, w, b, training, 0.1, 1e-5, backend="cuda")
    want = ref.batch_norm(_f64(x), *want_stats, _f64(w), _f64(b), training, 0.1, 1e-5)
    assert y.dtype == dtype
    # Statistics are sums of `count` values; the outputs are O(1) after normalisation.
    assert_close(y, want, dtype, terms=count, scale=2)
    for got, expected in zip(got_stats, want_stats):  # updated in place in training mode
        assert_close(got, expected, dtype, terms=count, scale=2)
    grads = fl.batch_norm_backward(dy, x, rm, rv, w, training, 1e-5, backend="cuda")
    for name, got, expected in zip(("dx", "dw", "db"), grads,
                                   ref.batch_norm_backward(_f64(dy), _f64(x), _f64(rm), _f64(rv), _f64(w), training,
                                                           1e-5)):
        assert got.dtype == dtype, name
        assert_close(got, expected, dtype, terms=count, scale=4, err_msg=name)


def test_device_running_statistics_are_updated_on_the_device():
    from numba import cuda

    x, w, b, (rm, rv), _ = _case(*CASES[2], np.float64)
    rmd, rvd = cuda.to_device(rm), cuda.to_device(rv)
    y = fl.batch_norm(cuda.to_device(x), rmd, rvd, cuda.to_device(w), cuda.to_device(b), True, 0.3, 1e-3,
                      backend="cuda")
    want = ref.batch_norm(x, rm, rv, w, b, True, 0.3, 1e-3)  # rm, rv updated in place
    assert_close(y.copy_to_host(), want, np.float64, terms=243, scale=2)
    assert_close(rmd.copy_to_host(), rm, np.float64, terms=243)
    assert_close(rvd.copy_to_host(), rv, np.float64, terms=243, scale=2)
    y = fl.batch_norm(cuda.to_device(x), None, None, None, None, True, backend="cuda")  # no running statistics
    assert_close(y.copy_to_host(), ref.batch_norm(x, None, None, training=True), np.float64, terms=243, scale=2)


def test_backward_matches_finite_differences():
    x, w, b, (rm, rv), dy = _case((4, 2, 3), True, np.float64)
    dx, dw, db = fl.batch_norm_backward(dy, x, rm, rv, w, True, 1e-5, backend="cuda")
    forward = lambda x, w, b: ref.batch_norm(x, None, None, w, b, True, eps=1e-5)  # noqa: E731
    arrays = dict(x=x, w=w, b=b)
    for name, analytic in (("x", dx), ("w", dw), ("b", db)):
        assert_grad_matches(analytic, numeric_grad(forward, arrays, name, dy), err_msg=name)
