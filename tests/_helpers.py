"""Shared test helpers: finite differences, dtype-aware comparisons, loading the examples."""
import importlib.util
import pathlib

import numpy as np

# float32 results are compared with the float64 reference to this relative accuracy, scaled by
# the magnitude of the terms summed (``scale``): a sum of K products of O(1) terms in float32
# carries an error of about K * eps32 * |terms| in the worst case and sqrt(K) * eps32 typically.
EPS = {np.dtype(np.float32): np.finfo(np.float32).eps, np.dtype(np.float64): np.finfo(np.float64).eps}


def assert_close(actual, expected, dtype, terms=1, scale=1.0, err_msg=""):
    """Assert ``actual`` equals ``expected`` up to rounding of a sum of ``terms`` products whose
    magnitude is about ``scale``: atol = rtol = 4 * terms * eps(dtype) * scale (the worst-case
    bound of a naive sum, with a factor 4 for the reordering BLAS does)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {err_msg}"
    tol = 4 * max(terms, 1) * EPS[np.dtype(dtype)] * scale
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=err_msg)


def assert_normwise_close(actual, expected, name, tol=1e-10):
    """||actual - expected|| <= tol * ||expected|| (Frobenius): for float64 results that two
    implementations (fastlayers and PyTorch) compute in different orders, where elementwise
    bounds would be loose. The default suits float64 through the recurrent tests' depths: a few
    ulp per operation, about 1e-14 relative, leaves four orders of magnitude of margin while a
    wrong gate, sign or bias shows up at 1e-2."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-300)
    assert err <= tol, f"{name}: normwise error {err:.2e} > {tol}"


def torch_float64(a):
    """``a`` as a float64 torch tensor that requires grad (torch imported here: the helpers load
    without it)."""
    import torch

    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def numeric_grad(f, arrays, name, dy, eps=1e-6):
    """Central-difference gradient of ``sum(f(**arrays) * dy)`` with respect to ``arrays[name]``
    (float64). ``f`` returns one array."""
    a = arrays[name]
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = np.sum(f(**arrays) * dy)
        flat[i] = old - eps
        minus = np.sum(f(**arrays) * dy)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def assert_grad_matches(analytic, numeric, err_msg=""):
    """Central differences with eps=1e-6 on O(1) float64 data are exact to ~1e-8 (truncation
    eps^2 * f''' plus rounding 1e-16 / eps): a 1e-6 tolerance leaves a wide margin, yet is
    millions of times smaller than any real gradient bug."""
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6, err_msg=err_msg)


def assert_grads_match(f, arrays, analytic, dy):
    """Check each analytic gradient (a dict name -> array) against central differences of
    ``sum(f(**arrays) * dy)``."""
    for name, grad in analytic.items():
        assert_grad_matches(grad, numeric_grad(f, arrays, name, dy), err_msg=f"d{name}")


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """Import examples/<name>.py as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_rng(seed=0):
    return np.random.default_rng(seed)


def spy_backends(monkeypatch):
    """The backend of every kernel ``select_kernel`` picks from now on, in order (a list that
    grows as the dispatch runs)."""
    import fastlayers as fl
    from fastlayers.ops._spec import forget_replays

    forget_replays()  # calls replayed from a kept plan would not ask the dispatch
    seen = []
    real = fl._dispatch.select_kernel

    def spy(spec, problem, backend, algo="auto"):
        kernel = real(spec, problem, backend, algo)
        seen.append(kernel.backend)
        return kernel

    monkeypatch.setattr(fl._dispatch, "select_kernel", spy)
    return seen
