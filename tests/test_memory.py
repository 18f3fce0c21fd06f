"""Memory: repeated calls do not leak, and a request bigger than the machine fails cleanly.

The 10,000-iteration version of the leak check is ``python tools/reliability_long.py rss``.
"""
import os
import sys

import numpy as np
import pytest
from _random_calls import fixed_call, kernel_pairs

FAMILIES = {"conv2d": "conv2d_backward", "max_pool2d": "max_pool2d_backward", "rnn_step": "rnn_step_backward",
            "rnn": "rnn_backward", "lstm": "lstm_backward", "gru": "gru_backward"}
PAIRS = [(fwd, backend) for fwd, backend in kernel_pairs(include_simulator=False)
         if fwd in FAMILIES and (FAMILIES[fwd], backend) in kernel_pairs()]
WARMUP, ITERATIONS = 20, 150
# A leaked output per iteration (each is >= 128 KiB at these sizes) would add >= 18 MiB; allocator noise (free
# lists, per-thread arenas of the OpenMP team) stays within a few MiB.
MAX_GROWTH = 8 << 20


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def forward_backward(fwd, backend, seed=0, size="big"):
    """A closure running one forward and one backward of the family ``fwd``."""
    forward, backward = fixed_call(fwd, np.float32, seed, size), fixed_call(FAMILIES[fwd], np.float32, seed, size)

    def step():
        forward.run(backend)
        backward.run(backend)

    return step


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("fwd, backend", PAIRS)
def test_repeated_forward_backward_keeps_rss_flat(fwd, backend):
    step = forward_backward(fwd, backend)
    for _ in range(WARMUP):  # workspaces, caches and allocator pools reach their steady size
        step()
    before = rss_bytes()
    for _ in range(ITERATIONS):
        step()
    growth = rss_bytes() - before
    assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB over {ITERATIONS} forward+backward calls"


def _huge(call):
    """The call with its batch made 2**34 long by zero-stride views (no memory behind them): the
    outputs would need terabytes."""
    if call.op == "max_pool2d_backward":  # dy stays small; dx of input_shape would not be
        N, C = call.arrays["grad_output"].shape[:2]
        return call.with_params(input_shape=(N, C, 2**20, 2**20))
    sequences = ("rnn", "rnn_backward", "lstm", "lstm_backward", "gru", "gru_backward")
    batch_axis = 1 if call.op in sequences else 0  # sequences: (T, N, ...)
    arrays = {}
    for name, a in call.arrays.items():
        if a is None or name in ("weight", "bias", "bias_ih", "bias_hh", "Wx", "Wh"):
            continue
        axis = 0 if name in ("hx", "cx") else batch_axis
        shape = list(a.shape)
        shape[axis] = 2**34
        arrays[name] = np.broadcast_to(np.take(a, [0], axis=axis), shape)
    return call.with_arrays(**arrays)


@pytest.mark.parametrize("op, backend", kernel_pairs(include_reference=True))
def test_huge_request_fails_cleanly(op, backend):
    """More memory than any machine here has: a MemoryError (or a ValueError naming the sizes)
    before any kernel runs, and the process carries on."""
    call = _huge(fixed_call(op, np.float64))
    with pytest.raises((MemoryError, ValueError)) as info:
        call.run(backend)
    if info.type is ValueError:
        assert "too large" in str(info.value) or "elements" in str(info.value), str(info.value)
    # The process is intact: the same op still works.
    fixed_call(op, np.float64).run(backend)


@pytest.mark.skipif("cpu" not in {backend for _, backend in kernel_pairs()}, reason="no cpu backend")
def test_release_workspaces_frees_the_cached_scratch():
    """rnn_backward caches a T*N*H workspace per thread; fl.release_workspaces() gives it back."""
    import fastlayers as fl

    T, N, D, H = 64, 8, 4, 128
    rng = np.random.default_rng(0)
    x, Wx, Wh = rng.standard_normal((T, N, D)), rng.standard_normal((D, H)), 0.1 * rng.standard_normal((H, H))
    hs = fl.rnn(x, None, Wx, Wh, backend="cpu")
    expected = fl.rnn_backward(np.ones_like(hs), x, None, Wx, Wh, hs, backend="cpu")
    assert fl.release_workspaces() >= T * N * H * 8
    assert fl.release_workspaces() == 0  # nothing left
    again = fl.rnn_backward(np.ones_like(hs), x, None, Wx, Wh, hs, backend="cpu")
    for got, want in zip(again, expected):  # a fresh workspace, the same computation
        np.testing.assert_array_equal(got, want)


def test_workspaces_start_on_a_cache_line():
    """Workspaces start 64-byte aligned (the packed weights' vector loads then never straddle two
    lines), fresh or reused for a smaller request."""
    from fastlayers.backends.cpu._common import ALIGNMENT, workspace

    for shape in ((1000, 3), (7,), (1000, 3)):
        with workspace("test_alignment", shape, np.float32) as buf:
            assert buf.shape == shape and buf.ctypes.data % ALIGNMENT == 0


def test_workspace_views_match_each_request_and_nested_calls_get_their_own():
    """A slot's buffer is reused with the view of each request's shape and dtype (the last view
    handed back as it is when they match), and a call made while the slot is checked out (as a
    signal handler's or a finalizer's would be) gets a buffer that overlaps nothing of it."""
    from fastlayers.backends.cpu._common import workspace

    for shape, dtype in (((4, 6), np.float32), ((4, 6), np.float32), ((3, 2), np.float64), ((5,), np.uint8),
                         ((4, 6), np.float32)):
        with workspace("test_views", shape, dtype) as buf:
            assert buf.shape == shape and buf.dtype == dtype and buf.flags.c_contiguous
            buf[...] = 1
            with workspace("test_views", shape, dtype) as inner:
                assert inner.shape == shape and not np.shares_memory(buf, inner)
                inner[...] = 2
            assert np.all(buf == 1)
    with workspace("test_views", (4, 6), np.float32) as first:
        pass
    with workspace("test_views", (4, 6), np.float32) as again:
        assert again is first


@pytest.mark.parametrize("algo, shape", [("winograd", (4, 16, 12, 12)), ("direct", (32, 3, 20, 20))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_derived_weights_are_reused_only_while_the_weights_are_unchanged(algo, shape, dtype):
    """The transformed (winograd) or packed (direct) filters a call derives from w are kept and
    handed out again to calls on the same, unchanged w; a w changed in place (as an optimiser's
    step changes it) is derived again, so every result is the reference's for the w of its call."""
    import fastlayers as fl
    from fastlayers.backends.cpu import _common

    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((16, shape[1], 3, 3)).astype(dtype)
    dy = rng.standard_normal((shape[0], 16) + shape[2:]).astype(dtype)
    fl.release_workspaces()
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for step in range(3):
        y = fl.conv2d(x, w, padding=1, algo=algo, backend="cpu")
        kept = dict(_common._derived)
        assert fl.conv2d(x, w, padding=1, algo=algo, backend="cpu").tobytes() == y.tobytes()
        assert kept and all(_common._derived[k][1] is v[1] for k, v in kept.items())  # reused, not remade
        np.testing.assert_allclose(y, fl.conv2d(x, w, padding=1, backend="numpy"), rtol=rtol, atol=rtol)
        dx, _, _ = fl.conv2d_backward(dy, x, w, padding=1, algo=algo, backend="cpu")
        np.testing.assert_allclose(dx, fl.conv2d_backward(dy, x, w, padding=1, backend="numpy")[0],
                                   rtol=rtol, atol=rtol)
        w -= 0.1 * rng.standard_normal(w.shape).astype(dtype)  # in place: the same array, new values
    assert fl.release_workspaces() >= 2 * w.nbytes  # the copies of w at least
    assert not _common._derived


def test_derived_weights_stay_bounded():
    from fastlayers.backends.cpu import _common

    _common.release_workspaces()
    arrays = [np.full(8, i, np.float32) for i in range(_common.DERIVED_MAX_ENTRIES + 5)]
    for i, a in enumerate(arrays):
        made = _common.derived("test", a, None, lambda: a * 2)
        assert not made.flags.writeable and made[0] == 2 * i
    assert 0 < len(_common._derived) <= _common.DERIVED_MAX_ENTRIES
    big = np.zeros(_common.DERIVED_MAX_BYTES // 8, np.float32)  # the copy and the result pass the limit
    _common.derived("test", big, None, lambda: big + 1)
    _common.derived("test", big[1:], None, lambda: big[1:] + 1)
    assert _common._derived_bytes() <= _common.DERIVED_MAX_BYTES
    nan = np.full(4, np.nan, np.float32)
    first = _common.derived("test", nan, None, lambda: nan + 1)
    assert _common.derived("test", nan, None, lambda: nan + 1) is first  # the same bits, NaN or not
    zeros = np.zeros(4)
    first = _common.derived("test", zeros, None, lambda: np.copysign(1, zeros[:1]))
    zeros[0] = -0.0  # equal in value, not in bits: derived again (its sign is -1 now)
    again = _common.derived("test", zeros, None, lambda: np.copysign(1, zeros[:1]))
    assert again is not first and again[0] == -1
    _common.release_workspaces()


def _edges(n, chunk):
    """Positions of n where a share of the buffers may end: the ends, both sides of every
    ``chunk`` and of the halves (a thread's share, cache-line rounded), and a sample between."""
    half = -(-n // 2)
    near = {0, n - 1, half, half - 1, -(-half // 64) * 64, -(-half // 64) * 64 - 1}
    near |= {k * chunk + d for k in range(1, n // chunk + 1) for d in (-1, 0)}
    return sorted((near | set(range(0, n, 4093))) & set(range(n)))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("nbytes", [0, 1, 1000, (1 << 17) + 3, (1 << 18) - 1, 1 << 18, 3 * (1 << 18) + 5])
def test_same_bytes_finds_every_difference(nbytes, threads):
    """The compiled comparison ``derived`` trusts: equal buffers, and a buffer differing in one
    byte anywhere (first, last, either side of a thread's share or a chunk's edge) or in length."""
    from fastlayers._cpu import bits

    a = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    assert bits.same_bytes(a, a.copy(), threads)
    for at in _edges(nbytes, 1 << 18):
        b = a.copy()
        b[at] ^= 1
        assert not bits.same_bytes(a, b, threads), at
    with pytest.raises(ValueError, match="same length"):
        bits.same_bytes(a, np.zeros(nbytes + 1, np.uint8), threads)
    with pytest.raises(ValueError, match="num_threads"):
        bits.same_bytes(a, a, 0)


def test_same_bytes_takes_arrays_of_any_dtype_and_shape_in_c_order():
    """``derived`` hands it the weight and its copy as they are: the bytes count, not the shape;
    a strided view is refused (it would be read as if contiguous), and so is a non-array."""
    from fastlayers._cpu import bits

    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    assert bits.same_bytes(w, w.copy().reshape(-1).view(np.uint8), 2)
    flipped = w.copy()
    flipped.reshape(-1)[-1] *= -1
    assert not bits.same_bytes(w, flipped, 1)
    assert bits.address(w) == w.ctypes.data and bits.address(w[1:]) == w[1:].ctypes.data
    with pytest.raises(ValueError, match="C-contiguous"):
        bits.same_bytes(w[:, :, ::2], w[:, :, ::2].copy(), 1)
    with pytest.raises(TypeError):
        bits.same_bytes(w.tolist(), w, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [0, 1, 17, (1 << 14) + 3, (1 << 16) - 1, 1 << 16, 3 * (1 << 16) + 5])
def test_all_finite_finds_every_nan_and_infinity(n, threads, dtype):
    """The compiled check Winograd trusts (conv2d): finite values, extremes and subnormals
    included, pass; one NaN or infinity anywhere (first, last, either side of a thread's share
    or a chunk's edge) fails it, in an array of any shape."""
    from fastlayers._cpu import bits

    info = np.finfo(dtype)
    a = np.random.default_rng(n).choice(np.array([0.0, -0.0, 1.5, info.max, -info.max, info.tiny / 4], dtype), n)
    assert bits.all_finite(a, threads)
    if n % 2 == 0:
        assert bits.all_finite(a.reshape(2, -1), threads)
    for at in _edges(n, (1 << 18) // a.itemsize):
        for value in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[at] = value
            assert not bits.all_finite(b, threads), (at, value)
    with pytest.raises(ValueError, match="num_threads"):
        bits.all_finite(a, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        bits.all_finite(np.zeros((4, 4), dtype)[:, ::2], threads)
    with pytest.raises(TypeError, match="float32 or float64"):
        bits.all_finite(np.zeros(4, np.int32), threads)
    with pytest.raises(ValueError, match="native byte order"):
        bits.all_finite(a.astype(a.dtype.newbyteorder()), threads)
    with pytest.raises(ValueError, match="aligned"):
        bits.all_finite(np.zeros(4 * a.itemsize + 1, np.uint8)[1:].view(dtype), threads)


def test_derived_weights_compare_strided_weights_too():
    """A weight that is a strided view is compared by NumPy (the compiled check needs C order):
    reused while unchanged, derived again once changed."""
    from fastlayers.backends.cpu import _common

    _common.release_workspaces()
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    w = base[:, ::2]
    first = _common.derived("test", w, None, lambda: w * 2)
    assert _common.derived("test", w, None, lambda: w * 2) is first
    base[3, 4] += 1
    again = _common.derived("test", w, None, lambda: w * 2)
    assert again is not first and again[3, 2] == 2 * base[3, 4]
    _common.release_workspaces()
