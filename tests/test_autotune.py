"""Opt-in autotuning (``fl.set_autotune``): the first call of a problem times every kernel that
accepts it and later calls run the fastest; off by default, where auto's choice follows the
backend's rules alone."""
import time
from dataclasses import dataclass

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import _dispatch
from fastlayers.ops._spec import Kernel, Problem


@pytest.fixture
def autotune():
    fl.clear_autotuned()
    fl.set_autotune(True)
    yield
    fl.set_autotune(False)
    fl.clear_autotuned()


@dataclass(frozen=True)
class _Geometry:
    size: int


class _Spec:
    name = "fake"

    def __init__(self, kernels):
        self.kernels = kernels

    def kernels_on(self, backend):
        return tuple(k for k in self.kernels if k.backend == backend)


def _fake(seconds_by_algo, monkeypatch):
    """A spec whose cpu kernels take the given seconds, and the ``call`` that runs them."""
    kernels = tuple(Kernel("cpu", algo, "fastlayers", {"forward": "unused"}) for algo in seconds_by_algo)
    monkeypatch.setattr(_dispatch, "_loads", lambda kernel: True)
    runs = []

    def call(kernel):
        runs.append(kernel.algo)
        time.sleep(seconds_by_algo[kernel.algo])

    return _Spec(kernels), kernels, runs, call


def _problem(size, dtype=np.float32):
    return Problem("forward", _Geometry(size), {"input": np.zeros(1, dtype)}, (("y", (1,), dtype),))


def test_the_fastest_kernel_is_kept_and_not_timed_again(autotune, monkeypatch):
    spec, kernels, runs, call = _fake({"slow": 0.02, "fast": 0.001, "medium": 0.01}, monkeypatch)
    problem = _problem(3)
    assert _dispatch.autotuned_kernel(spec, problem, kernels[0], call).algo == "fast"
    assert sorted(set(runs)) == ["fast", "medium", "slow"]
    assert len(runs) == 3 * (1 + _dispatch.TUNING_RUNS)
    runs.clear()
    assert _dispatch.autotuned_kernel(spec, problem, kernels[0], call).algo == "fast"
    assert runs == []  # chosen once per problem
    assert list(fl.autotuned().values()) == ["fast"]


def test_problems_differing_in_sizes_dtype_or_threads_are_timed_apart(autotune, monkeypatch):
    spec, kernels, runs, call = _fake({"a": 0.001, "b": 0.003}, monkeypatch)
    for problem in (_problem(3), _problem(4), _problem(3, np.float64)):
        _dispatch.autotuned_kernel(spec, problem, kernels[1], call)
    with fl.threads(1):
        _dispatch.autotuned_kernel(spec, _problem(3), kernels[1], call)
    assert len(fl.autotuned()) == 4


def test_off_by_default_and_one_candidate_is_not_timed(monkeypatch):
    assert _dispatch._autotune is False
    spec, kernels, runs, call = _fake({"slow": 0.01, "fast": 0.001}, monkeypatch)
    assert _dispatch.autotuned_kernel(spec, _problem(3), kernels[0], call) is kernels[0]
    fl.set_autotune(True)
    try:
        single, (only,), runs, call = _fake({"only": 0.0}, monkeypatch)
        assert _dispatch.autotuned_kernel(single, _problem(3), only, call) is only
        assert runs == []
    finally:
        fl.set_autotune(False)
        fl.clear_autotuned()


def test_autotuned_conv2d_gives_the_chosen_algorithms_results(autotune):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 20, 20), dtype=np.float32)
    w = rng.standard_normal((16, 16, 3, 3), dtype=np.float32)
    y = fl.conv2d(x, w, padding=1, backend="cpu")
    grads = fl.conv2d_backward(np.ones_like(y), x, w, padding=1, backend="cpu")
    choice = {key[1]: algo for key, algo in fl.autotuned().items()}
    assert set(choice) == {"forward", "backward"}
    np.testing.assert_array_equal(y, fl.conv2d(x, w, padding=1, backend="cpu", algo=choice["forward"]))
    for got, want in zip(grads, fl.conv2d_backward(np.ones_like(y), x, w, padding=1, backend="cpu",
                                                   algo=choice["backward"])):
        np.testing.assert_array_equal(got, want)
    fl.clear_autotuned()
    fl.conv2d(x, w, padding=1, backend="cpu", algo="im2col")  # an explicit algo is never tuned
    assert fl.autotuned() == {}


def test_set_autotune_takes_a_bool():
    with pytest.raises(TypeError, match="enabled must be True or False, got 1"):
        fl.set_autotune(1)
