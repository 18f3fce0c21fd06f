"""linear and linear_backward: the cpu kernel against the NumPy reference (float32 and float64,
random shapes and weight layouts), finite differences, PyTorch at 1e-10, thread-count
independence, and the weight-layout hint. Random layouts, out= and hostile arguments are also
covered by tests/test_fuzz.py.

float32: each output is a sum of in_features (forward), out_features (grad_input) or M
(grad_weight, grad_bias) products; assert_close's budget is that of such a sum (tests/_helpers.py).
"""
import numpy as np
import pytest
from _helpers import assert_close, assert_grads_match, make_rng
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference as ref


def make_arrays(rng, lead, I, O, dtype, layout):  # noqa: E741
    x = rng.standard_normal(lead + (I,)).astype(dtype)
    w = rng.standard_normal((O, I)).astype(dtype)
    if layout == "transposed":  # the Dense layer's (in, out) parameter seen as (out, in)
        w = np.ascontiguousarray(w.T).T
    elif layout == "strided":
        w = np.repeat(w, 2, axis=1)[:, ::2]
    b = rng.standard_normal(O).astype(dtype)
    dy = rng.standard_normal(lead + (O,)).astype(dtype)
    return x, w, b, dy


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lead=st.lists(st.integers(1, 40), min_size=1, max_size=2).map(tuple), I=st.integers(1, 70),
       O=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(["C", "transposed", "strided"]), seed=st.integers(0, 2**16))
def test_cpu_matches_reference(lead, I, O, dtype, layout, seed):  # noqa: E741
    x, w, b, dy = make_arrays(make_rng(seed), lead, I, O, dtype, layout)
    up = [a.astype(np.float64) for a in (x, w, b, dy)]
    assert_close(fl.linear(x, w, b, backend="cpu"), ref.linear(*up[:3]), dtype, terms=I + 1)
    M = int(np.prod(lead))
    for got, want, terms in zip(fl.linear_backward(dy, x, w, backend="cpu"), ref.linear_backward(up[3], up[0], up[1]),
                                (O, M, M)):
        assert got.dtype == dtype
        assert_close(got, want, dtype, terms=terms)


@pytest.mark.parametrize("M", [1, 2, 3])  # up to LINEAR_GEMV_MAX_ROWS rows: a gemv per row
@pytest.mark.parametrize("layout", ["C", "transposed", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_a_few_rows_match_reference(M, layout, dtype, bias):
    x, w, b, _ = make_arrays(make_rng(M), (M,), 300, 37, dtype, layout)
    b = b if bias else None
    up = [None if a is None else a.astype(np.float64) for a in (x, w, b)]
    assert_close(fl.linear(x, w, b, backend="cpu"), ref.linear(*up), dtype, terms=300 + 1)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_gradients_match_finite_differences(backend):
    x, w, b, dy = make_arrays(make_rng(1), (3, 2), 4, 5, np.float64, "transposed")

    def f(input, weight, bias):
        return fl.linear(input, weight, bias, backend=backend)

    grads = fl.linear_backward(dy, x, w, backend=backend)
    assert_grads_match(f, dict(input=x, weight=w.copy(), bias=b), dict(zip(("input", "weight", "bias"), grads)), dy)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_against_torch_float64(backend):
    torch = pytest.importorskip("torch")
    x, w, b, dy = make_arrays(make_rng(2), (6, 3), 17, 9, np.float64, "C")
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy))
    ours = (fl.linear(x, w, b, backend=backend),) + tuple(fl.linear_backward(dy, x, w, backend=backend))
    for a, e in zip(ours, (yt.detach(), xt.grad, wt.grad, bt.grad)):
        e = e.numpy()
        assert np.linalg.norm(a - e) <= 1e-10 * np.linalg.norm(e)


def test_results_do_not_depend_on_thread_count():
    x, w, b, dy = make_arrays(make_rng(3), (64,), 300, 50, np.float32, "transposed")
    with fl.threads(1):
        one = (fl.linear(x, w, b, backend="cpu"),) + tuple(fl.linear_backward(dy, x, w, backend="cpu"))
    with fl.threads(2):
        two = (fl.linear(x, w, b, backend="cpu"),) + tuple(fl.linear_backward(dy, x, w, backend="cpu"))
    for a, c in zip(one, two):
        np.testing.assert_array_equal(a, c)


def test_empty_sizes():
    for lead, I, O in (((0,), 3, 2), ((2,), 0, 3), ((2,), 3, 0)):  # noqa: E741
        x, w, b, dy = make_arrays(make_rng(4), lead, I, O, np.float64, "C")
        np.testing.assert_array_equal(fl.linear(x, w, b, backend="cpu"), ref.linear(x, w, b))
        for got, want in zip(fl.linear_backward(dy, x, w, backend="cpu"), ref.linear_backward(dy, x, w)):
            np.testing.assert_array_equal(got, want)


def test_a_transposed_weight_gets_a_hint():
    with pytest.raises(ValueError, match=r"in_features = 3 .*pass weight\.T"):
        fl.linear(np.ones((2, 4)), np.ones((3, 4)).T)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        fl.linear(np.ones((2, 3)), np.ones((4, 3)), np.ones(3))
