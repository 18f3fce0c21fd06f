"""The public API itself: argument errors, backend dispatch, thread settings, cheap import."""
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastlayers as fl

X = np.zeros((2, 3, 8, 8), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: fl.conv2d(X[0], W), ValueError, ["x", "4-D", "3-D"]),
        (lambda: fl.conv2d(X, W[0]), ValueError, ["w", "4-D"]),
        (lambda: fl.conv2d(X.astype(np.int32), W), TypeError, ["x", "float32 or float64", "int32"]),
        (lambda: fl.conv2d(X, W.astype(np.float64)), TypeError, ["w", "float64", "float32", "mixed"]),
        (lambda: fl.conv2d(X, W, np.zeros(5, np.float32)), ValueError, ["b", "(4,)", "(5,)"]),
        (lambda: fl.conv2d(X, np.zeros((4, 2, 3, 3), np.float32)), ValueError, ["w.shape[1]", "3", "2"]),
        (lambda: fl.conv2d(X, np.zeros((4, 3, 9, 9), np.float32)), ValueError, ["kernel", "9x9", "8x8"]),
        (lambda: fl.conv2d(X, W, stride=0), ValueError, ["stride", ">= 1", "0"]),
        (lambda: fl.conv2d(X, W, stride=-2), ValueError, ["stride", "-2"]),
        (lambda: fl.conv2d(X, W, dilation=(1, 0)), ValueError, ["dilation"]),
        (lambda: fl.conv2d(X, W, padding=-1), ValueError, ["padding", ">= 0"]),
        (lambda: fl.conv2d(X, W, padding="full"), ValueError, ["padding", "'full'"]),
        (lambda: fl.conv2d(X, W, padding="same", stride=2), ValueError, ["same", "stride"]),
        (lambda: fl.conv2d(X, W, stride=1.5), TypeError, ["stride", "float"]),
        (lambda: fl.conv2d(X, W, groups=2), ValueError, ["groups", "C=3"]),
        (lambda: fl.conv2d(X, W, algo="fft"), ValueError, ["algo", "'fft'"]),
        (lambda: fl.conv2d(X, W, backend="tpu"), ValueError, ["backend", "'tpu'"]),
        (lambda: fl.conv2d([[1.0]], W), TypeError, ["x", "list"]),
        (lambda: fl.conv2d(X, W, out=np.zeros((2, 4, 6, 7), np.float32)), ValueError, ["out", "(2, 4, 6, 6)"]),
        (lambda: fl.conv2d(X, W, out=np.zeros((2, 4, 6, 6))), TypeError, ["out", "float32"]),
        (lambda: fl.conv2d_backward(np.zeros((2, 4, 5, 5), np.float32), X, W), ValueError, ["dy", "(2, 4, 6, 6)"]),
        (lambda: fl.max_pool2d(X, 0), ValueError, ["kernel_size", ">= 1"]),
        (lambda: fl.max_pool2d(X, 2, padding=2), ValueError, ["padding", "half"]),
        (lambda: fl.max_pool2d(X, 9), ValueError, ["kernel_size", "9x9", "8x8"]),
        (lambda: fl.max_pool2d(X.astype(bool), 2), TypeError, ["x", "bool"]),
        (lambda: fl.max_pool2d(X, 2, ceil_mode="yes"), TypeError, ["ceil_mode", "bool"]),
        (lambda: fl.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3, 4, 4), np.int32), X.shape),
         TypeError, ["indices", "int64", "int32"]),
        (lambda: fl.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3, 4, 3), np.int64), X.shape),
         ValueError, ["indices", "(2, 3, 4, 4)"]),
        (lambda: fl.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.full((2, 3, 4, 4), 64), X.shape),
         ValueError, ["indices", "[0, 64)"]),
        (lambda: fl.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.full((2, 3, 4, 4), -1), X.shape),
         ValueError, ["indices"]),
        (lambda: fl.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3, 4, 4), np.int64), (2, 3, 8)),
         ValueError, ["input_shape", "4"]),
        (lambda: fl.rnn_step(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((3, 5)), np.zeros((4, 4))), ValueError,
         ["Wh", "(5, 5)", "(4, 4)"]),
        (lambda: fl.rnn_step(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((4, 4))), ValueError,
         ["Wx", "(3, 4)", "(2, 4)"]),
        (lambda: fl.rnn_step(np.zeros((2, 3)), None, np.zeros((3, 4)), np.zeros((4, 4))), TypeError, ["h_prev"]),
        (lambda: fl.rnn(np.zeros((5, 2, 3)), np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((4, 4))), ValueError,
         ["h0", "(2, 4)", "(3, 4)"]),
        (lambda: fl.rnn(np.zeros((2, 3)), None, np.zeros((3, 4)), np.zeros((4, 4))), ValueError, ["x", "3-D"]),
        (lambda: fl.rnn(np.zeros((5, 2, 3)), None, np.zeros((3, 4)), np.zeros((4, 4)), np.zeros(3)), ValueError,
         ["b", "(4,)", "(3,)"]),
        (lambda: fl.rnn(np.zeros((5, 2, 3), np.float32), None, np.zeros((3, 4)), np.zeros((4, 4))), TypeError,
         ["Wx", "float64", "float32"]),
    ],
)
def test_bad_input_raises_a_clear_error(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_errors_are_the_same_on_every_backend():
    messages = set()
    for backend in ("numpy", "cpu"):
        with pytest.raises(ValueError) as info:
            fl.max_pool2d(X, 2, padding=2, backend=backend)
        messages.add(str(info.value))
    assert len(messages) == 1


# ---------------------------------------------------------------------------- dispatch


def test_backends_report():
    report = fl.backends()
    assert set(report) == {"numpy", "cpu", "cuda"}
    assert report["numpy"]["available"] and "conv2d" in report["numpy"]["ops"]
    assert report["cpu"]["available"], report["cpu"]["reason"]
    assert {"max_pool2d", "max_pool2d_backward"} <= set(report["cpu"]["ops"])
    for entry in report.values():
        assert entry["reason"]


def test_default_backend_for_numpy_arrays_is_cpu(monkeypatch):
    from fastlayers.backends import cpu

    calls = []
    real = cpu.max_pool2d
    monkeypatch.setattr(cpu, "max_pool2d", lambda *a: calls.append(1) or real(*a))
    fl.max_pool2d(X, 2)
    assert calls == [1]
    with fl.use_backend("numpy"):
        fl.max_pool2d(X, 2)
    assert calls == [1]


def test_set_backend_and_use_backend():
    try:
        fl.set_backend("numpy")
        from fastlayers._dispatch import resolve

        assert resolve("max_pool2d", None, (X,)).__module__ == "fastlayers.backends.numpy"
        with fl.use_backend("cpu"):
            assert resolve("max_pool2d", None, (X,)).__module__.startswith("fastlayers.backends.cpu")
        assert resolve("max_pool2d", "cpu", (X,)).__module__.startswith("fastlayers.backends.cpu")
    finally:
        fl.set_backend(None)
    with pytest.raises(ValueError, match="backend"):
        fl.set_backend("gpu")


def test_unavailable_backend_is_an_error_not_a_fallback():
    if fl.backends()["cuda"]["available"]:
        pytest.skip("cuda is available here")
    with pytest.raises(RuntimeError, match="cuda"):
        fl.max_pool2d(X, 2, backend="cuda")


def test_use_backend_is_per_thread():
    from fastlayers._dispatch import resolve

    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait()
        seen["other"] = resolve("max_pool2d", None, (X,)).__module__
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with fl.use_backend("numpy"):
        inside.set()
        done.wait()
    t.join()
    assert seen["other"].startswith("fastlayers.backends.cpu")


def test_threads_setting():
    default = fl.get_num_threads()
    assert default >= 1
    with fl.threads(1):
        assert fl.get_num_threads() == 1
        with fl.threads(3):
            assert fl.get_num_threads() == 3
        assert fl.get_num_threads() == 1
    assert fl.get_num_threads() == default
    try:
        fl.set_num_threads(2)
        assert fl.get_num_threads() == 2
    finally:
        fl.set_num_threads(None)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            fl.set_num_threads(bad)


def test_results_do_not_depend_on_thread_count(split_work):
    x = np.random.default_rng(0).standard_normal((3, 5, 9, 11))
    with fl.threads(1):
        y1, i1 = fl.max_pool2d(x, 3, 2, 1)
    with fl.threads(2):
        y2, i2 = fl.max_pool2d(x, 3, 2, 1)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(i1, i2)


# ---------------------------------------------------------------------------- import cost


def test_import_is_cheap_and_starts_nothing_heavy():
    code = (
        "import sys, time; t = time.perf_counter(); import fastlayers; t = time.perf_counter() - t; "
        "heavy = [m for m in ('numba', 'torch', 'matplotlib', 'cupy') if m in sys.modules]; "
        "print(t, heavy)"
    )
    seconds, heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert heavy.strip() == "[]"
    # Not a speed assertion: a generous bound that catches an accidental heavy import (torch takes seconds).
    assert float(seconds) < 2.0
