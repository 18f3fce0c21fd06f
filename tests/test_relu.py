"""relu and relu_backward: the cpu kernels against the reference (exactly: a selection), the
edge values PyTorch defines (NaN, 0, -0.0, infinities), finite differences and PyTorch itself.
Random shapes, layouts, out= buffers and hostile arguments are covered by tests/test_fuzz.py."""
import numpy as np
import pytest
from _helpers import assert_grads_match, make_rng

import fastlayers as fl
from fastlayers import reference as ref

EDGES = np.array([np.nan, -np.inf, -1.5, -0.0, 0.0, 1e-45, 2.5, np.inf])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5), (2, 3, 40000), (2, 1, 3, 3, 2)])
def test_cpu_equals_reference(dtype, shape):
    rng = make_rng(sum(shape))
    x, dy = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(fl.relu(x, backend="cpu"), ref.relu(x))
    np.testing.assert_array_equal(fl.relu_backward(dy, x, backend="cpu"), ref.relu_backward(dy, x))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_edge_values_as_pytorch(backend):
    torch = pytest.importorskip("torch")
    x = EDGES.copy()
    dy = np.arange(1.0, 1.0 + x.size)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.tensor(dy))
    np.testing.assert_array_equal(fl.relu(x, backend=backend), torch.relu(torch.tensor(x)).numpy())
    np.testing.assert_array_equal(fl.relu_backward(dy, x, backend=backend), xt.grad.numpy())


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_gradient_matches_finite_differences(backend):
    rng = make_rng(1)
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # central differences straddle the kink only within eps of 0
    dy = rng.standard_normal(x.shape)
    assert_grads_match(lambda x: fl.relu(x, backend=backend), dict(x=x),
                       dict(x=fl.relu_backward(dy, x, backend=backend)), dy)


def test_results_do_not_depend_on_thread_count():
    x = make_rng(2).standard_normal((4, 8, 64, 64)).astype(np.float32)
    with fl.threads(1):
        one = fl.relu(x, backend="cpu"), fl.relu_backward(x, -x, backend="cpu")
    with fl.threads(2):
        two = fl.relu(x, backend="cpu"), fl.relu_backward(x, -x, backend="cpu")
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
