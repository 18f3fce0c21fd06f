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
        (lambda: fl.conv2d(X[0, 0], W), ValueError, ["input", "3-D or 4-D", "2-D"]),
        (lambda: fl.conv2d(X, W[0]), ValueError, ["weight", "4-D"]),
        (lambda: fl.conv2d(X.astype(np.int32), W), TypeError, ["input", "float32 or float64", "int32"]),
        (lambda: fl.conv2d(X, W.astype(np.float64)), TypeError, ["weight", "float64", "float32", "mixed"]),
        (lambda: fl.conv2d(X, W, np.zeros(5, np.float32)), ValueError, ["bias", "(4,)", "(5,)"]),
        (lambda: fl.conv2d(X, np.zeros((4, 2, 3, 3), np.float32)), ValueError, ["weight.shape[1]", "3", "2"]),
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
        (lambda: fl.conv2d(X, W, padding_mode="mirror"), ValueError, ["padding_mode", "'mirror'", "reflect"]),
        (lambda: fl.conv2d(X, W, padding=(1, 1, 1)), ValueError, ["padding", "3 values"]),
        (lambda: fl.conv2d(X, W, 0, 1), TypeError, ["bias", "int"]),
        (lambda: fl.conv2d(X, W, backend="tpu"), ValueError, ["backend", "'tpu'"]),
        (lambda: fl.conv2d([[1.0]], W), TypeError, ["input", "list"]),
        (lambda: fl.conv2d(X, W, out=np.zeros((2, 4, 6, 7), np.float32)), ValueError, ["out", "(2, 4, 6, 6)"]),
        (lambda: fl.conv2d(X, W, out=np.zeros((2, 4, 6, 6))), TypeError, ["out", "float32"]),
        (lambda: fl.conv2d_backward(np.zeros((2, 4, 5, 5), np.float32), X, W), ValueError, ["grad_output", "(2, 4, 6, 6)"]),
        (lambda: fl.max_pool2d(X, 0), ValueError, ["kernel_size", ">= 1"]),
        (lambda: fl.max_pool2d(X, 2, padding=2), ValueError, ["padding", "half"]),
        (lambda: fl.max_pool2d(X, 9), ValueError, ["kernel_size", "9x9", "8x8"]),
        (lambda: fl.max_pool2d(X.astype(bool), 2), TypeError, ["input", "bool"]),
        (lambda: fl.max_pool2d(X, 2, dilation=0), ValueError, ["dilation", ">= 1"]),
        (lambda: fl.max_pool2d(X, 3, dilation=4), ValueError, ["kernel_size", "dilation", "9x9", "8x8"]),
        (lambda: fl.max_pool2d(X, 2, return_indices=1), TypeError, ["return_indices", "bool"]),
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
        (lambda: fl.max_pool2d_backward(np.zeros((3, 4, 4), np.float32), np.zeros((3, 4, 4), np.int64), (4, 8, 8)),
         ValueError, ["grad_output", "C", "(3,)", "(4,)"]),
        (lambda: fl.rnn_step(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((3, 5)), np.zeros((4, 4))), ValueError,
         ["Wx", "(3, 4)", "(3, 5)"]),
        (lambda: fl.rnn_step(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((3, 4)), np.zeros((4, 5))), ValueError,
         ["Wh", "square", "(4, 5)"]),
        (lambda: fl.rnn_step(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((4, 4))), ValueError,
         ["Wx", "(3, 4)", "(2, 4)"]),
        # PyTorch's weight_ih layout (H, D): told so, with the shape that is right
        (lambda: fl.rnn_step(np.zeros((2, 3)), np.zeros((2, 6)), np.zeros((6, 3)), np.zeros((6, 6))), ValueError,
         ["Wx", "(3, 6)", "(6, 3)", "PyTorch", "Wx.T"]),
        (lambda: fl.rnn_step(np.zeros((2, 3)), None, np.zeros((3, 4)), np.zeros((4, 4))), TypeError, ["hx"]),
        (lambda: fl.rnn(np.zeros((5, 2, 3)), np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((4, 4))), ValueError,
         ["hx", "(2, 4)", "(3, 4)"]),
        (lambda: fl.rnn(np.zeros(3), None, np.zeros((3, 4)), np.zeros((4, 4))), ValueError, ["input", "2-D or 3-D"]),
        (lambda: fl.rnn(np.zeros((5, 2, 3)), None, np.zeros((3, 4)), np.zeros((4, 4)), np.zeros(3)), ValueError,
         ["bias", "(4,)", "(3,)"]),
        (lambda: fl.rnn(np.zeros((5, 2, 3)), None, np.zeros((3, 4)), np.zeros((4, 4)), None, "sigmoid"), ValueError,
         ["nonlinearity", "'sigmoid'", "relu"]),
        # NHWC input: the message says so instead of only blaming the weight
        (lambda: fl.conv2d(np.zeros((2, 8, 8, 3), np.float32), W), ValueError,
         ["weight.shape[1]", "channels-last", "(N, C, H, W)", "transpose(0, 3, 1, 2)"]),
        # big-endian data (e.g. from a file written elsewhere) gets a hint
        (lambda: fl.conv2d(X.astype(">f4"), W), TypeError, ["input", "big-endian", "newbyteorder"]),
        (lambda: fl.rnn(np.zeros((5, 2, 3), np.float32), None, np.zeros((3, 4)), np.zeros((4, 4))), TypeError,
         ["Wh", "float64", "float32"]),
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
    report = fl.available_backends()
    assert set(report) == {"numpy", "cpu", "cuda"}
    assert report["numpy"]["available"] and "conv2d" in report["numpy"]["ops"]
    assert report["cpu"]["available"], report["cpu"]["reason"]
    assert {"max_pool2d", "max_pool2d_backward"} <= set(report["cpu"]["ops"])
    for entry in report.values():
        assert entry["reason"]


def _pool_problem():
    from fastlayers.ops import MAX_POOL2D

    return MAX_POOL2D, MAX_POOL2D.forward(X, 2, None, 0, 1, False, False)


def _backend_of_next_call(backend=None):
    from fastlayers._dispatch import select_kernel

    return select_kernel(*_pool_problem(), backend).backend


def test_default_backend_for_numpy_arrays_is_cpu(monkeypatch):
    from fastlayers.backends.cpu import max_pool2d as cpu_pool

    calls = []
    real = cpu_pool.forward
    monkeypatch.setattr(cpu_pool, "forward", lambda *a: calls.append(1) or real(*a))
    fl.max_pool2d(X, 2)
    assert calls == [1]
    with fl.use_backend("numpy"):
        fl.max_pool2d(X, 2)
    assert calls == [1]


def test_a_declining_kernel_is_skipped_by_auto_and_an_error_when_asked_for():
    """The cpu max_pool2d kernel has no dilation: the automatic choice runs the reference, an
    explicit backend='cpu' says why it cannot."""
    x = np.random.default_rng(0).standard_normal((1, 2, 9, 9))
    np.testing.assert_array_equal(fl.max_pool2d(x, 2, dilation=2), fl.max_pool2d(x, 2, dilation=2, backend="numpy"))
    with pytest.raises(NotImplementedError, match="dilation"):
        fl.max_pool2d(x, 2, dilation=2, backend="cpu")
    with pytest.raises(ValueError, match="implicit_gemm"):  # a kernel of another backend
        fl.conv2d(X, W, algo="implicit_gemm", backend="cpu")


def test_set_backend_and_use_backend():
    try:
        fl.set_backend("numpy")
        assert _backend_of_next_call() == "numpy"
        with fl.use_backend("cpu"):
            assert _backend_of_next_call() == "cpu"
        assert _backend_of_next_call("cpu") == "cpu"
    finally:
        fl.set_backend(None)
    with pytest.raises(ValueError, match="backend"):
        fl.set_backend("gpu")


def test_unavailable_backend_is_an_error_not_a_fallback():
    if fl.available_backends()["cuda"]["available"]:
        pytest.skip("cuda is available here")
    with pytest.raises(RuntimeError, match="cuda"):
        fl.max_pool2d(X, 2, backend="cuda")


def test_use_backend_is_per_thread():
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait()
        seen["other"] = _backend_of_next_call()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with fl.use_backend("numpy"):
        inside.set()
        done.wait()
    t.join()
    assert seen["other"] == "cpu"


def test_backends_subpackage_is_not_shadowed():
    import fastlayers.backends.cpu.conv2d as cpu_conv2d

    assert fl.backends.cpu.conv2d is cpu_conv2d and callable(cpu_conv2d.choose_algo)


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
        y1, i1 = fl.max_pool2d(x, 3, 2, 1, return_indices=True)
    with fl.threads(2):
        y2, i2 = fl.max_pool2d(x, 3, 2, 1, return_indices=True)
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
