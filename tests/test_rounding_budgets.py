"""The rounding budgets of tests/_rounding.py, which the GPU design-case test applies: a correct
float32 kernel (the cpu backend) stays within them, and the mistakes a kernel could make are
rejected even where the error is small beside the values."""
import numpy as np
import pytest
from _rounding import assert_within_budget, case_call, exact

import fastlayers as fl
from fastlayers import reference as ref
from fastlayers.cases import Case

# Benchmark cases at sizes the NumPy reference runs in milliseconds; pool-3x2 has overlapping
# windows, so its backward sums.
SMALL_CASES = (
    Case("conv-small", "conv2d", (4, 6, 10, 10), dict(F=5, kernel_size=3, stride=1, padding=1)),
    Case("conv-strided", "conv2d", (3, 4, 11, 9), dict(F=6, kernel_size=1, stride=2, padding=0)),
    Case("pool-2x2", "max_pool2d", (2, 3, 8, 8), dict(kernel_size=2, stride=2)),
    Case("pool-3x2", "max_pool2d", (2, 3, 9, 9), dict(kernel_size=3, stride=2)),
    Case("rnn-small", "rnn", (20, 4, 12, 16)),
)


def cpu_available():
    return "conv2d" in fl.available_backends()["cpu"]["ops"]


def _results(name, args, kwargs, backend):
    if backend == "exact":
        out = getattr(ref, name)(*[exact(a) for a in args], **kwargs)
    else:
        out = getattr(fl, name)(*args, **kwargs, backend=backend)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.skipif(not cpu_available(), reason="the cpu backend is not built")
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("case", SMALL_CASES, ids=[c.name for c in SMALL_CASES])
def test_cpu_float32_results_are_within_budget(case, direction):
    name, args, kwargs, budgets = case_call(case, direction)
    got, want = _results(name, args, kwargs, "cpu"), _results(name, args, kwargs, "exact")
    for i, (g, w, budget) in enumerate(zip(got, want, budgets, strict=True)):
        if w.dtype == np.int64:
            np.testing.assert_array_equal(g, w)
        else:
            assert_within_budget(g, w, budget, err_msg=f"{case.name} {name} output {i}")


def _reject(result, want, budget):
    with pytest.raises(AssertionError, match="beyond their rounding budget"):
        assert_within_budget(result, want, budget)


def test_a_missing_conv2d_tap_is_rejected():
    name, (x, w, b), kw, (budget,) = case_call(SMALL_CASES[0], "forward")
    want = ref.conv2d(exact(x), exact(w), exact(b), **kw)
    w_bug = w.copy()
    w_bug[2, 3, 1, 1] = 0  # one tap of one filter skipped
    _reject(ref.conv2d(x, w_bug, b, **kw), want, budget)


def test_a_conv2d_weight_gradient_missing_one_image_is_rejected():
    _, (dy, x, w), kw, budgets = case_call(SMALL_CASES[0], "backward")
    want = ref.conv2d_backward(exact(dy), exact(x), exact(w), **kw)
    dw_bug = ref.conv2d_backward(dy[1:], x[1:], w, **kw)[1]
    _reject(dw_bug, want[1], budgets[1])


def test_a_pool_gradient_sent_to_a_neighbour_is_rejected():
    _, (dy, indices, shape), _, (budget,) = case_call(SMALL_CASES[3], "backward")
    want = ref.max_pool2d_backward(exact(dy), indices, shape)
    bug = indices.copy()
    bug.reshape(-1)[0] += 1
    _reject(ref.max_pool2d_backward(dy, bug, shape), want, budget)


def test_an_rnn_state_one_step_behind_is_rejected():
    """The last state computed from h_{T-2} instead of h_{T-1}: an O(0.1) error on values in
    [-1, 1], which the former GPU tolerance (one sum length for every output, scale 10: 2.9 on
    the rnn-small benchmark case) let through."""
    _, (x_seq, h0, Wx, Wh, b), _, (budget,) = case_call(SMALL_CASES[4], "forward")
    want = ref.rnn(exact(x_seq), exact(h0), exact(Wx), exact(Wh), exact(b))
    bug = want.astype(np.float32)
    bug[-1] = ref.rnn_step(x_seq[-1], bug[-3], Wx, Wh, b)
    _reject(bug, want, budget)


def test_an_rnn_weight_gradient_missing_the_first_step_is_rejected():
    """dWh without h0^T @ dz_0, the first step's share (dz does not depend on h0 given hs, so a
    backward with h0 = 0 computes exactly that mistake)."""
    _, (dhs, x_seq, h0, Wx, Wh, hs), _, budgets = case_call(SMALL_CASES[4], "backward")
    want = ref.rnn_backward(*[exact(a) for a in (dhs, x_seq, h0, Wx, Wh, hs)])
    bug = ref.rnn_backward(dhs, x_seq, np.zeros_like(h0), Wx, Wh, hs)
    np.testing.assert_array_equal(bug[2], ref.rnn_backward(dhs, x_seq, h0, Wx, Wh, hs)[2])  # dWx untouched
    _reject(bug[3], want[3], budgets[3])
