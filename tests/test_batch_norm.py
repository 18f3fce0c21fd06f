"""batch_norm and batch_norm_backward: the cpu kernels against the NumPy reference (float64 and
float32, many shapes), the reference against finite differences and PyTorch, running statistics,
thread-count independence, out=, and the arguments' checks.

float32 tolerance: the cpu kernel computes each channel's statistics in float64 (as the
reference does) and rounds them once to float32, so the output ``(x - mean) * scale + shift``
carries a few roundings of its terms: the budget is 8 * eps32 * ((|x| + |mean|) * |scale| +
|shift|) per element. The input gradient ``a * dy + b * (x - mean) + c`` gets 8 * eps32 times the
sum of its terms' magnitudes; grad_weight and grad_bias are float64 sums rounded once (2 * eps32
of their value, plus the float64 sums' own error, far smaller).
"""
import numpy as np
import pytest
from _helpers import assert_grads_match, make_rng
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference as ref

DTYPES = (np.float32, np.float64)
EPS32 = float(np.finfo(np.float32).eps)


def make_call(rng, shape, dtype, affine=True, offset=3.0):
    """Inputs of one call: x with a mean far from 0 (the statistics must not cancel), dy, weight,
    bias and running statistics."""
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal(C).astype(dtype) if affine else None
    bias = rng.standard_normal(C).astype(dtype) if affine else None
    running_mean = rng.standard_normal(C).astype(dtype)
    running_var = (rng.random(C) + 0.5).astype(dtype)
    return x, dy, weight, bias, running_mean, running_var


def run_both(x, dy, weight, bias, running_mean, running_var, training, backend, eps=1e-5):
    """Forward (with copies of the running statistics, updated in training mode) and backward."""
    rm, rv = running_mean.copy(), running_var.copy()
    y = fl.batch_norm(x, rm, rv, weight, bias, training, 0.1, eps, backend=backend)
    grads = fl.batch_norm_backward(dy, x, running_mean, running_var, weight, training, eps, backend=backend)
    return (y, rm, rv) + tuple(grads)


def _stats64(x, running_mean, running_var, training):
    axes = (0,) + tuple(range(2, x.ndim))
    x64 = x.astype(np.float64)
    if training:
        return x64.mean(axis=axes), x64.var(axis=axes)
    return running_mean.astype(np.float64), running_var.astype(np.float64)


def float32_budgets(x, dy, weight, bias, running_mean, running_var, training, eps=1e-5):
    """Per-element rounding budgets of (y, running_mean, running_var, dx, dweight, dbias)."""
    C, trail = x.shape[1], (1,) * (x.ndim - 2)
    mean, var = _stats64(x, running_mean, running_var, training)
    invstd = 1 / np.sqrt(var + eps)
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    b = np.zeros(C) if bias is None else bias.astype(np.float64)
    at = lambda v: v.reshape((1, C) + trail)  # noqa: E731
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    scale = w * invstd
    y_budget = 8 * EPS32 * ((np.abs(x64) + np.abs(at(mean))) * np.abs(at(scale)) + np.abs(at(b)))
    axes = (0,) + tuple(range(2, x.ndim))
    count = x.size // C
    sum_dy = dy64.sum(axis=axes)
    sum_dy_dev = (dy64 * (x64 - at(mean))).sum(axis=axes)
    coef_b = -scale * invstd**2 * sum_dy_dev / count if training else np.zeros(C)
    coef_c = -scale * sum_dy / count if training else np.zeros(C)
    dx_budget = 8 * EPS32 * (np.abs(at(scale) * dy64) + np.abs(at(coef_b)) * (np.abs(x64) + np.abs(at(mean)))
                             + np.abs(at(coef_c)))
    abs_sums = np.abs(dy64).sum(axis=axes), (np.abs(dy64) * np.abs(x64 - at(mean))).sum(axis=axes) * invstd
    stat_budget = 8 * EPS32 * (np.abs(running_mean) + np.abs(mean) + 1)
    var_budget = 8 * EPS32 * (np.abs(running_var) + var + 1)
    return (y_budget, stat_budget, var_budget, dx_budget, 4 * EPS32 * abs_sums[1], 4 * EPS32 * abs_sums[0])


def assert_within(actual, expected, budget, what):
    err = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    worst = np.unravel_index(np.argmax(err - budget), err.shape) if err.size else ()
    assert np.all(err <= budget), f"{what}: error {err[worst]:.3g} > budget {np.asarray(budget)[worst]:.3g} at {worst}"


NAMES = ("output", "running_mean", "running_var", "grad_input", "grad_weight", "grad_bias")


def assert_cpu_matches_reference(x, dy, weight, bias, running_mean, running_var, training):
    ours = run_both(x, dy, weight, bias, running_mean, running_var, training, "cpu")
    if x.dtype == np.float64:
        theirs = run_both(x, dy, weight, bias, running_mean, running_var, training, "numpy")
        for name, a, e in zip(NAMES, ours, theirs):
            # the same float64 formulas, summed in another order: a few ulp of the terms
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12 * (1 + np.abs(e).max(initial=0)), err_msg=name)
    else:
        exact = [None if a is None else a.astype(np.float64) for a in (x, dy, weight, bias, running_mean, running_var)]
        theirs = run_both(*exact, training, "numpy")
        budgets = float32_budgets(x, dy, weight, bias, running_mean, running_var, training)
        for name, a, e, budget in zip(NAMES, ours, theirs, budgets):
            assert a.dtype == np.float32, name
            assert_within(a, e, budget, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 5), (3, 2, 7), (2, 3, 2, 3, 4), (1, 4, 1, 2), (32, 8, 9, 9)])
@pytest.mark.parametrize("affine", [True, False])
def test_cpu_matches_reference(dtype, training, shape, affine):
    call = make_call(make_rng(sum(shape)), shape, dtype, affine)
    assert_cpu_matches_reference(*call, training)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(N=st.integers(1, 6), C=st.integers(1, 9), H=st.integers(1, 9), W=st.integers(1, 9),
       dtype=st.sampled_from(DTYPES), training=st.booleans(), offset=st.sampled_from([0.0, 3.0, -50.0]),
       seed=st.integers(0, 2**16))
def test_cpu_matches_reference_random_shapes(N, C, H, W, dtype, training, offset, seed):
    if training and N * H * W == 1:
        return  # refused (tested below)
    call = make_call(make_rng(seed), (N, C, H, W), dtype, offset=offset)
    assert_cpu_matches_reference(*call, training)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_finite_differences(backend, training):
    x, dy, weight, bias, rm, rv = make_call(make_rng(1), (3, 2, 3, 2), np.float64)

    def f(x, weight, bias):
        return fl.batch_norm(x, rm.copy(), rv.copy(), weight, bias, training, 0.1, 1e-5, backend=backend)

    dx, dw, db = fl.batch_norm_backward(dy, x, rm, rv, weight, training, 1e-5, backend=backend)
    assert_grads_match(f, dict(x=x, weight=weight, bias=bias), dict(x=dx, weight=dw, bias=db), dy)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (5, 4), (2, 3, 7), (2, 2, 2, 3, 4)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_against_torch_float64(shape, training, affine, backend):
    torch = pytest.importorskip("torch")
    x, dy, weight, bias, rm, rv = make_call(make_rng(len(shape)), shape, np.float64, affine)
    ours = run_both(x, dy, weight, bias, rm, rv, training, backend)
    xt = torch.tensor(x, requires_grad=True)
    wt = None if weight is None else torch.tensor(weight, requires_grad=True)
    bt = None if bias is None else torch.tensor(bias, requires_grad=True)
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    yt = torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, training, 0.1, 1e-5)
    yt.backward(torch.tensor(dy))
    theirs = [yt.detach().numpy(), rmt.numpy(), rvt.numpy(), xt.grad.numpy()]
    if affine:
        theirs += [wt.grad.numpy(), bt.grad.numpy()]
    for name, a, e in zip(NAMES, ours, theirs):
        assert np.linalg.norm(a - e) <= 1e-10 * max(np.linalg.norm(e), 1e-300), name


def test_results_do_not_depend_on_thread_count():
    call = make_call(make_rng(3), (8, 6, 11, 13), np.float32)
    with fl.threads(1):
        one = run_both(*call, True, "cpu")
    with fl.threads(2):
        two = run_both(*call, True, "cpu")
    for name, a, b in zip(NAMES, one, two):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_out_buffers_and_non_contiguous_input():
    x, dy, weight, bias, rm, rv = make_call(make_rng(4), (4, 3, 6, 5), np.float32)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, strided
    out = np.empty_like(x)
    y = fl.batch_norm(xt, rm.copy(), rv.copy(), weight, bias, True, out=out, backend="cpu")
    assert y is out
    np.testing.assert_array_equal(y, fl.batch_norm(x, rm.copy(), rv.copy(), weight, bias, True, backend="cpu"))
    outs = (np.empty_like(x), np.empty(3, np.float32), np.empty(3, np.float32))
    grads = fl.batch_norm_backward(dy, xt, None, None, weight, True, out=outs, backend="cpu")
    assert all(g is o for g, o in zip(grads, outs))
    for g, e in zip(grads, fl.batch_norm_backward(dy, x, None, None, weight, True, backend="cpu")):
        np.testing.assert_array_equal(g, e)


def test_running_statistics_update_as_pytorch():
    """momentum weights the new batch; the running variance is unbiased; None stats are allowed in
    training mode and left alone."""
    x, _, weight, bias, rm, rv = make_call(make_rng(5), (4, 3, 2, 2), np.float64)
    for backend in ("numpy", "cpu"):
        m, v = rm.copy(), rv.copy()
        fl.batch_norm(x, m, v, weight, bias, True, 0.25, backend=backend)
        np.testing.assert_allclose(m, 0.75 * rm + 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-14)
        np.testing.assert_allclose(v, 0.75 * rv + 0.25 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-14)
        y = fl.batch_norm(x, None, None, weight, bias, True, backend=backend)
        np.testing.assert_allclose(y, fl.batch_norm(x, rm.copy(), rv.copy(), weight, bias, True, backend=backend))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_non_finite_values_propagate_as_in_the_reference(backend):
    x, dy, weight, bias, rm, rv = make_call(make_rng(6), (2, 3, 2, 2), np.float64)
    x[0, 1, 0, 0] = np.nan
    y = fl.batch_norm(x, rm.copy(), rv.copy(), weight, bias, True, backend=backend)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    x[0, 1, 0, 0] = np.inf
    y = fl.batch_norm(x, rm, rv, weight, bias, False, backend=backend)  # eval: only that cell
    assert np.isinf(y[0, 1, 0, 0]) and np.isfinite(np.delete(y.reshape(-1), 4)).all()


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((np.ones((2, 3)), None, None), {}, ValueError, "required when training=False"),
    ((np.ones((2, 3)), np.zeros(3), None), dict(training=True), ValueError, "given together"),
    ((np.ones((1, 3)), None, None), dict(training=True), ValueError, "more than one value per channel"),
    ((np.ones(3), np.zeros(3), np.ones(3)), {}, ValueError, "input must be 2-D or 3-D or 4-D or 5-D"),
    ((np.ones((2, 3)), np.zeros(4), np.ones(3)), {}, ValueError, r"running_mean must have shape \(3,\)"),
    ((np.ones((2, 3)), np.zeros(3), np.ones(3, np.float32)), {}, TypeError, "running_var has dtype float32"),
    ((np.ones((2, 3)), np.zeros(3), np.ones(3)), dict(eps=0.0), ValueError, r"eps must lie in \(0"),
    ((np.ones((2, 3)), np.zeros(3), np.ones(3)), dict(eps=True), TypeError, "eps must be a real number"),
    ((np.ones((2, 3)), np.zeros(3), np.ones(3)), dict(momentum=1.5), ValueError, r"momentum must lie in \[0"),
    ((np.ones((2, 3)), np.zeros(3), np.ones(3)), dict(training="yes"), TypeError, "training must be a bool"),
    ((np.ones((2, 3), np.int64), np.zeros(3), np.ones(3)), {}, TypeError, "input must have dtype float32 or float64"),
])
def test_bad_arguments_are_refused_with_their_names(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fl.batch_norm(*args, **kwargs)


def test_backward_checks_grad_output():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 4\)"):
        fl.batch_norm_backward(np.ones((2, 3, 5)), x, np.zeros(3), np.ones(3))
    with pytest.raises(TypeError, match="grad_output has dtype float32"):
        fl.batch_norm_backward(np.ones((2, 3, 4), np.float32), x, np.zeros(3), np.ones(3))


def test_reference_matches_the_definition():
    """The reference itself, on the notes' definition: zero mean and unit variance per channel
    (eps aside), then scale and shift."""
    x = make_rng(7).standard_normal((5, 2, 3, 3)) * 4 + 1
    y = ref.batch_norm(x, None, None, np.array([2.0, 3.0]), np.array([-1.0, 0.5]), True, eps=1e-12)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), [-1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), [2.0, 3.0], rtol=1e-10)
