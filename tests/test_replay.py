"""The functional API's kept plans (ops._spec.replays): a call whose arguments have the
signatures of an earlier call's runs that call's plan on its own arrays, bit for bit what the
full path computes; its out= buffers are still checked; what the plan does not cover (other
settings, arrays given twice, batch_norm's training update) takes the full path."""
import numpy as np
import pytest
from _helpers import spy_backends

import fastlayers as fl
from fastlayers.ops._spec import forget_replays


def _calls(rng, dtype):
    """(function, argument maker) pairs: each maker draws new arrays of one signature."""
    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return {
        "conv2d": (fl.conv2d, lambda: ((r(2, 3, 7, 6), r(4, 3, 3, 3), r(4)), dict(padding=1, stride=(1, 2)))),
        "conv2d unbatched": (fl.conv2d, lambda: ((r(3, 7, 6), r(4, 3, 3, 3)), {})),
        "conv2d_backward": (fl.conv2d_backward, lambda: ((r(2, 4, 5, 4), r(2, 3, 7, 6), r(4, 3, 3, 3)), {})),
        "max_pool2d": (fl.max_pool2d, lambda: ((r(2, 3, 6, 6), 2), dict(return_indices=True))),
        "relu": (fl.relu, lambda: ((r(5, 7),), {})),
        "linear": (fl.linear, lambda: ((r(5, 7), r(3, 7), r(3)), {})),
        "linear_backward": (fl.linear_backward, lambda: ((r(5, 3), r(5, 7), r(3, 7)), {})),
        "rnn": (fl.rnn, lambda: ((r(4, 2, 3), r(2, 5), r(3, 5), r(5, 5), r(5)), {})),
        "lstm": (fl.lstm, lambda: ((r(4, 2, 3), r(2, 5), r(2, 5), r(3, 20), r(5, 20), r(20)), {})),
        "batch_norm eval": (fl.batch_norm, lambda: ((r(2, 3, 4, 4), r(3), np.abs(r(3)) + 1, r(3), r(3)), {})),
    }


def _same(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None:
        return b is None
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(_calls(np.random.default_rng(0), np.float32)))
def test_replayed_calls_are_bitwise_the_full_path(monkeypatch, name, dtype):
    fn, make = _calls(np.random.default_rng(1), dtype)[name]
    fn(*make()[0], **make()[1])  # the first call keeps the plan
    seen = []
    real = fl._dispatch.select_kernel
    monkeypatch.setattr(fl._dispatch, "select_kernel", lambda *a, **k: seen.append(1) or real(*a, **k))
    for _ in range(3):
        args, kwargs = make()
        replayed = fn(*args, **kwargs)
        forget_replays()
        full = fn(*args, **kwargs)
        assert _same(replayed, full), name
    # Only the full-path calls chose a kernel: the others replayed. An unbatched input runs as a
    # reshaped view, which is not an argument: never replayed.
    assert len(seen) == (6 if name == "conv2d unbatched" else 3)


def test_replay_writes_into_out_and_checks_it():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 2, 5, 5)).astype(np.float32), rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    out = np.empty((1, 3, 3, 3), np.float32)
    fl.conv2d(x, w, out=out)
    x2 = rng.standard_normal(x.shape).astype(np.float32)
    out2 = np.empty_like(out)
    assert fl.conv2d(x2, w, out=out2) is out2
    forget_replays()
    assert np.array_equal(out2, fl.conv2d(x2, w))
    read_only = np.empty_like(out)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        fl.conv2d(x2, w, out=read_only)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    fl.relu(a, out=np.empty_like(a))
    with pytest.raises(ValueError, match="out must not share memory with input"):
        fl.relu(a, out=a)


def test_an_array_given_twice_is_not_mistaken_for_one_argument():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 4))
    a = rng.standard_normal((3, 4))
    fl.linear_backward(a, a, w)  # grad_output and input the same array: not kept
    g, x = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    dx, dw, db = fl.linear_backward(g, x, w)
    ref = fl.reference.linear_backward(g, x, w)
    for got, want in zip((dx, dw, db), ref):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    again = fl.linear_backward(x, x, w)  # a kept plan of distinct arrays reads each from its place
    for got, want in zip(again, fl.reference.linear_backward(x, x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_batch_norm_training_updates_each_calls_own_statistics():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 2, 2))
    stats = [(np.zeros(3), np.ones(3)) for _ in range(3)]
    for mean, var in stats:
        fl.batch_norm(x, mean, var, training=True)
    for mean, var in stats:
        np.testing.assert_allclose(mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
        np.testing.assert_allclose(var, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)


def test_backend_settings_are_part_of_the_signature(monkeypatch):
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    fl.relu(x)
    seen = spy_backends(monkeypatch)
    fl.relu(x)
    with fl.use_backend("numpy"):
        fl.relu(x)
    assert seen == ["cpu", "numpy"]  # spy_backends forgets the kept plans: the first call chose again
    fl.relu(x)
    assert seen == ["cpu", "numpy"]  # replayed under the default settings


def test_arguments_without_a_signature_take_the_full_path():
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    want = fl.conv2d(x, w, padding=(1, 1))
    for _ in range(2):
        np.testing.assert_array_equal(fl.conv2d(x, w, padding=[1, 1]), want)  # a list: unhashable
        np.testing.assert_array_equal(fl.conv2d(x, w, padding=np.int64(1)), want)  # a NumPy scalar


def test_replay_takes_tuples_of_buffers_with_gaps():
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 4, 4))
    for _ in range(2):  # the first keeps the plan, the second replays it
        dw, db = np.empty_like(w), np.empty(4)
        dx, got_dw, got_db = fl.conv2d_backward(dy, x, w, out=(None, dw, db))
        assert got_dw is dw and got_db is db
        forget = fl.conv2d_backward(dy, x, w)
        np.testing.assert_array_equal(dx, forget[0])
        np.testing.assert_array_equal(dw, forget[1])
    read_only = np.empty(4)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"out\[2\] must be writeable"):
        fl.conv2d_backward(dy, x, w, out=(None, np.empty_like(w), read_only))
    for _ in range(2):  # one buffer for the first of two outputs
        y = np.empty((2, 3, 3, 3))
        got, indices = fl.max_pool2d(x, 2, return_indices=True, out=y)
        assert got is y and indices.shape == y.shape
    with pytest.raises(ValueError, match=r"out\[0\] must not share memory with input"):
        fl.max_pool2d(x, 2, return_indices=True, out=x.reshape(-1)[:54].reshape(2, 3, 3, 3))
