"""Fuzzing every backend against the reference, and every documented hostile input.

* Random valid calls (shapes, parameters, empty dimensions, ties, NaN/Inf, memory layouts,
  ``out=`` buffers) of every op a backend implements here must match ``fastlayers.reference``.
* Random invalid calls (one argument corrupted) must raise TypeError/ValueError naming what is
  wrong, on every backend: never a crash, a hang or a result.
* ``HOSTILE`` holds one check per row of docs/validation.md (``test_validation_doc_is_complete``
  keeps the two in step).

The default (``ci``) Hypothesis profile keeps this to seconds; ``--hypothesis-profile=long`` is the
one-off long run.
"""
import re
from pathlib import Path

import numpy as np
import pytest
from _helpers import assert_close
from _random_calls import ANCHOR, ANY_RANK, ARRAYS, LAYOUTS, Call, calls, kernel_pairs, relayout
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference

ALGOS = ("auto", "im2col", "direct")
# The default profile's 100 examples x ~40 fuzz tests would take minutes on 2 cores: 25 each in
# CI; a profile asking for more (``--hypothesis-profile=long``) gets what it asks for.
FUZZ = settings(max_examples=25 if settings.default.max_examples <= 100 else settings.default.max_examples)
DTYPES = (np.float32, np.float64)
KERNEL_PAIRS = kernel_pairs()
ALL_PAIRS = kernel_pairs(include_reference=True)


def assert_matches_reference(call, results, dtype):
    expected = call.expected()
    assert len(results) == len(expected), f"{call.op}: {len(results)} results, expected {len(expected)}"
    for i, (got, want, terms) in enumerate(zip(results, expected, call.terms)):
        msg = f"{call.op} output {i}"
        assert got.shape == want.shape, f"{msg}: shape {got.shape} != {want.shape}"
        if want.dtype == np.int64:  # max-pool indices
            assert got.dtype == np.int64, f"{msg}: dtype {got.dtype}"
            np.testing.assert_array_equal(got, want, err_msg=msg)
            continue
        assert got.dtype == dtype, f"{msg}: dtype {got.dtype}, expected the input's {np.dtype(dtype)}"
        if terms == 0:  # a selection (max-pool) or an empty sum: exact
            np.testing.assert_array_equal(got, want.astype(dtype), err_msg=msg)
        else:
            # The reference ran in float64 on the same values, so it is exact to float64 rounding;
            # the kernel may round a sum of ``terms`` products in its own dtype and order.
            assert_close(got, want, dtype, terms=terms, err_msg=msg)


# ---------------------------------------------------------------------------- valid calls


def _out_buffers(expected, dtype, draw):
    """Caller buffers for some outputs (each entry may be None), filled with garbage."""
    dtypes = [e.dtype if e.dtype == np.int64 else dtype for e in expected]
    bufs = tuple(np.full(e.shape, 7, dt) if draw(st.booleans()) else None for e, dt in zip(expected, dtypes))
    if len(bufs) == 1:
        return bufs[0], bufs
    return bufs, bufs


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN/Inf examples
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op, backend", KERNEL_PAIRS)
@FUZZ
@given(data=st.data())
def test_valid_calls_match_the_reference(op, backend, dtype, data):
    call = data.draw(calls(op, dtype, ALGOS), label="call")
    layouts = {name: data.draw(st.sampled_from(LAYOUTS), label=f"layout of {name}") for name in call.arrays}
    hostile = call.with_arrays(**{name: relayout(a, layouts[name]) for name, a in call.arrays.items()})
    before = {name: np.copy(a) for name, a in call.arrays.items() if a is not None}
    extra = {}
    if backend != "cuda" and data.draw(st.booleans(), label="out="):
        out, bufs = _out_buffers(call.expected(), dtype, data.draw)
        if op == "max_pool2d" or any(b is not None for b in bufs):
            extra["out"] = out
    results = hostile.run(backend, **extra)
    assert_matches_reference(call, results, np.dtype(dtype))
    if "out" in extra:
        for i, buf in enumerate(bufs):
            if buf is not None:
                np.testing.assert_array_equal(buf, results[i], err_msg=f"out[{i}] not written with the result")
    for name, a in before.items():  # inputs are never written
        np.testing.assert_array_equal(hostile.arrays[name], a, err_msg=f"{op} modified its input {name}")


# ---------------------------------------------------------------------------- invalid calls

# Axes of the non-anchor arrays whose size +1 may leave the call valid, so they are left out: the
# kernel size of the weight and its filter count without a bias, linear's out_features likewise.
_FREE_AXES = {("conv2d", "weight"): (0, 2, 3), ("conv2d_backward", "weight"): (2, 3), ("linear", "weight"): (0,)}
_BAD_INTS = (0, -1, (1, 0), 1.5, "1", (1, 2, 3), True, None)


def _words(*names):
    return set(names)


@st.composite
def _bad_array(draw, call):
    op = call.op
    names = [n for n in ARRAYS[op] if call.arrays.get(n) is not None]
    name = draw(st.sampled_from(names))
    a = call.arrays[name]
    axes = [] if name == ANCHOR[op] else [ax for ax in range(a.ndim) if ax not in _FREE_AXES.get((op, name), ())]
    hows = ["dtype", "not_array"] + (["mixed"] if name not in (ANCHOR[op], "indices") else [])
    if ANY_RANK.get(op) != name:
        hows.append("ndim")
    how = draw(st.sampled_from(hows + (["shape"] if axes else [])))
    if how == "dtype":
        bad = (np.int32, np.float32, np.float64, np.bool_, np.uint64) if name == "indices" else (
            np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, np.float16, object)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf inputs cast to ints
            new, blame = a.astype(draw(st.sampled_from(bad))), _words(name)
    elif how == "mixed":
        new, blame = a.astype(np.float64 if a.dtype == np.float32 else np.float32), _words(name)
    elif how == "ndim":
        # One axis less can be a valid unbatched call: take two away (or add one).
        new = a[None] if draw(st.booleans()) or a.ndim <= 2 else np.zeros(a.shape[:-2], a.dtype)
        # Where the rank may vary (batch_norm), another rank moves the axes the others match.
        blame = _words(name) if op not in ANY_RANK else _words(*ARRAYS[op])
    elif how == "not_array":
        new, blame = draw(st.sampled_from((a.tolist(), 1.0, "array", a.shape))), _words(name)
    else:
        axis = draw(st.sampled_from(axes))
        shape = list(a.shape)
        shape[axis] += 1
        # A size that disagrees with another argument: the message names one of them.
        new, blame = np.zeros(shape, a.dtype), _words(*ARRAYS[op], "input_shape")
    return call.with_arrays(**{name: new}), {}, blame


@st.composite
def _bad_parameter(draw, call):
    op, p = call.op, call.params
    if op.startswith("conv2d"):
        x, w = call.arrays["input"], call.arrays["weight"]
        C, F, (KH, KW) = x.shape[1], w.shape[0], w.shape[2:]
        choices = ["stride", "dilation", "padding", "groups", "algo"]
        if p["padding"] != "same":
            choices.append("kernel")
        what = draw(st.sampled_from(choices))
        if what in ("stride", "dilation"):
            return call.with_params(**{what: draw(st.sampled_from(_BAD_INTS))}), {}, _words(what)
        if what == "padding":
            bad = draw(st.sampled_from((-1, (0, -2), 1.5, "full", None, (1, 2, 3), "same")))
            if bad == "same":
                return call.with_params(padding="same", stride=(2, 1)), {}, _words("same", "stride")
            return call.with_params(padding=bad), {}, _words("padding")
        if what == "groups":
            wrong = [g for g in range(2, C + F + 3) if C % g or F % g or w.shape[1] != C // g]
            bad = draw(st.sampled_from((0, -1, 1.5, True, None) + tuple(wrong[:3])))
            return call.with_params(groups=bad), {}, _words("groups", "weight.shape[1]")
        if what == "algo":
            return call, {"algo": draw(st.sampled_from(("fft", None, 1, "IM2COL")))}, _words("algo")
        pad_h = 0 if p["padding"] == "valid" else 2 * p["padding"][0]
        ext_h = x.shape[2] + pad_h + 1  # one more than the padded input, with any dilation >= 1
        big = np.zeros((F, w.shape[1], ext_h, KW), w.dtype)
        return call.with_arrays(weight=big), {}, _words("kernel")
    if op == "max_pool2d":
        H, W = call.arrays["input"].shape[2:]
        (KH, KW), (PH, PW) = p["kernel_size"], p["padding"]
        what = draw(st.sampled_from(("kernel_size", "stride", "padding", "ceil_mode", "too_big")))
        if what == "kernel_size":
            bad = draw(st.sampled_from((0, -2, (2, 0), 1.5, "2", (2, 2, 2), True, None)))
        elif what == "stride":
            bad = draw(st.sampled_from((0, -1, (1, 0), 1.5, "2", True)))
        elif what == "padding":
            bad = draw(st.sampled_from((-1, (0, -1), 1.5, None, (KH // 2 + 1, PW))))
        elif what == "ceil_mode":
            bad = draw(st.sampled_from(("yes", 1.5)))
        else:
            return call.with_params(kernel_size=(H + 2 * PH + 1, KW)), {}, _words("kernel_size")
        return call.with_params(**{what: bad}), {}, _words(what)
    if op == "max_pool2d_backward":
        indices = call.arrays["indices"]
        N, C, H, W = p["input_shape"]
        shapes = [(N, C, H), (N, C, H, -1), (N, C, H, W, 1), None, "abc", (N + 1, C, H, W), (N, C, 1.5, W)]
        if indices.size and draw(st.booleans()):
            bad = indices.copy()
            bad.flat[draw(st.integers(0, bad.size - 1))] = draw(st.sampled_from((H * W, -1, 2**40, -(2**40))))
            return call.with_arrays(indices=bad), {}, _words("indices")
        return call.with_params(input_shape=draw(st.sampled_from(shapes))), {}, _words("input_shape", "grad_output")
    return None


@st.composite
def _bad_out(draw, call):
    want = call.expected()
    i = draw(st.integers(0, len(want) - 1))
    ref = want[i]
    dtype = ref.dtype if ref.dtype == np.int64 else call.arrays[ANCHOR[call.op]].dtype
    choices = ["shape", "dtype", "readonly", "list"]
    if ref.ndim and ref.shape[-1] > 1 and ref.size > ref.shape[-1]:
        choices.append("noncontiguous")
    how = draw(st.sampled_from(choices))
    if how == "shape":
        buf = np.zeros((ref.shape[0] + 1,) + ref.shape[1:], dtype)
    elif how == "dtype":
        buf = np.zeros(ref.shape, np.float32 if dtype == np.float64 else np.float64)
    elif how == "readonly":
        buf = np.zeros(ref.shape, dtype)
        buf.flags.writeable = False
    elif how == "list":
        buf = np.zeros(ref.shape, dtype).tolist()
    else:
        buf = np.zeros(ref.shape[:-1] + (2 * ref.shape[-1],), dtype)[..., ::2]
    if len(want) == 1:
        return call, {"out": buf}, _words("out")
    if draw(st.booleans()):  # a tuple of the wrong length
        return call, {"out": (buf,) * (len(want) + draw(st.sampled_from((-1, 1))))}, _words("out")
    outs = [None] * len(want)
    outs[i] = buf
    return call, {"out": tuple(outs)}, _words("out")


@st.composite
def invalid_calls(draw, op, dtype, backend):
    call = draw(calls(op, dtype, ALGOS))
    kinds = [_bad_array, _bad_parameter] + ([_bad_out] if backend != "cuda" else [])
    kind = draw(st.sampled_from(kinds))
    bad = draw(kind(call))
    if bad is None:  # an op without scalar parameters
        bad = draw(_bad_array(call))
    return bad


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN/Inf examples
@pytest.mark.parametrize("op, backend", ALL_PAIRS)
@FUZZ
@given(data=st.data())
def test_invalid_calls_raise_clear_errors(op, backend, data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    call, extra, blame = data.draw(invalid_calls(op, dtype, backend), label="invalid call")
    if data.draw(st.booleans(), label="bad backend name"):
        extra, blame = dict(extra, backend=data.draw(st.sampled_from(("tpu", 3, "CPU")))), blame | {"backend"}
    with pytest.raises((TypeError, ValueError)) as info:
        call.run(extra.pop("backend", backend), **extra)
    message = str(info.value)
    assert any(re.search(rf"(?<![\w.]){re.escape(word)}(?!\w)", message) for word in blame), (
        f"the error names none of {sorted(blame)}: {message!r}"
    )


# ---------------------------------------------------------------------------- documented cases

HOSTILE = {}  # row id of docs/validation.md -> (op, check(backend))


def hostile(row_id, op):
    def register(check):
        HOSTILE[f"{row_id}:{op}"] = (op, check)
        return check
    return register


def _raises(exc, words, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


RNG = np.random.default_rng(1)
X = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
Wc = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
Xs = RNG.standard_normal((5, 2, 3))  # rnn (T, N, D), float64
Wx, Wh, H0 = RNG.standard_normal((3, 4)), 0.5 * RNG.standard_normal((4, 4)), RNG.standard_normal((2, 4))


@hostile("ndim", "conv2d")
def _(backend):
    _raises(ValueError, ["input", "3-D or 4-D", "2-D"], fl.conv2d, X[0, 0], Wc, backend=backend)


@hostile("ndim", "rnn")
def _(backend):
    _raises(ValueError, ["Wh", "2-D", "3-D"], fl.rnn, Xs, H0, Wx, Wh[None], backend=backend)


for _bad in ("int32", "int64", "uint8", "bool"):
    @hostile(f"dtype-{_bad}", "max_pool2d")
    def _(backend, _bad=_bad):
        _raises(TypeError, ["input", "float32 or float64", _bad, "astype(numpy.float32)"],
                fl.max_pool2d, X.astype(_bad), 2, backend=backend)

for _bad in ("complex64", "float16", "object"):
    @hostile(f"dtype-{_bad}", "conv2d")
    def _(backend, _bad=_bad):
        _raises(TypeError, ["input", "float32 or float64", _bad], fl.conv2d, X.astype(_bad), Wc, backend=backend)


@hostile("not-an-array", "rnn_step")
def _(backend):
    _raises(TypeError, ["hx", "list"], fl.rnn_step, Xs[0], H0.tolist(), Wx, Wh, backend=backend)


@hostile("mixed-dtypes", "rnn_step")
def _(backend):
    _raises(TypeError, ["Wx", "float32", "float64", "mixed"], fl.rnn_step, Xs[0], H0, Wx.astype(np.float32), Wh,
            backend=backend)


@hostile("mixed-dtypes", "conv2d_backward")
def _(backend):
    _raises(TypeError, ["grad_output", "float64", "mixed"], fl.conv2d_backward, np.zeros((2, 4, 5, 4)), X, Wc, backend=backend)


@hostile("shapes-disagree", "rnn")
def _(backend):
    _raises(ValueError, ["Wh", "square", "(4, 5)"], fl.rnn, Xs, H0, Wx, np.zeros((4, 5)), backend=backend)


@hostile("shapes-disagree", "max_pool2d_backward")
def _(backend):
    dy, idx = np.zeros((2, 3, 3, 3), np.float32), np.zeros((2, 3, 3, 2), np.int64)
    _raises(ValueError, ["indices", "(2, 3, 3, 3)", "(2, 3, 3, 2)"], fl.max_pool2d_backward, dy, idx, X.shape,
            backend=backend)


for _name, _value in (("stride", 0), ("stride", -2), ("dilation", 0), ("dilation", (1, -1))):
    @hostile(f"{_name}-nonpositive", "conv2d")
    def _(backend, _name=_name, _value=_value):
        _raises(ValueError, [_name, ">= 1"], fl.conv2d, X, Wc, **{_name: _value}, backend=backend)


@hostile("stride-nonpositive", "max_pool2d")
def _(backend):
    _raises(ValueError, ["stride", ">= 1"], fl.max_pool2d, X, 2, stride=(2, 0), backend=backend)


@hostile("padding-negative", "conv2d")
def _(backend):
    _raises(ValueError, ["padding", ">= 0"], fl.conv2d, X, Wc, padding=(0, -1), backend=backend)


@hostile("padding-negative", "max_pool2d")
def _(backend):
    _raises(ValueError, ["padding", ">= 0"], fl.max_pool2d, X, 3, padding=-1, backend=backend)


@hostile("pool-padding-over-half", "max_pool2d")
def _(backend):
    _raises(ValueError, ["padding", "half"], fl.max_pool2d, X, (3, 4), padding=(1, 3), backend=backend)


@hostile("groups-not-dividing", "conv2d")
def _(backend):
    _raises(ValueError, ["groups=2", "C=3"], fl.conv2d, X, Wc, groups=2, backend=backend)
    x6 = np.zeros((1, 6, 5, 5), np.float32)
    _raises(ValueError, ["groups=2", "F=3"], fl.conv2d, x6, np.zeros((3, 3, 3, 3), np.float32), groups=2,
            backend=backend)


@hostile("kernel-larger-than-input", "conv2d")
def _(backend):
    _raises(ValueError, ["kernel", "9x3", "7x6"], fl.conv2d, X, Wc, dilation=(4, 1), backend=backend)


@hostile("kernel-larger-than-input", "conv2d_backward")
def _(backend):
    _raises(ValueError, ["kernel", "8x8"], fl.conv2d_backward, np.zeros((2, 4, 1, 1), np.float32), X,
            np.zeros((4, 3, 8, 8), np.float32), backend=backend)


@hostile("kernel-larger-than-input", "max_pool2d")
def _(backend):
    _raises(ValueError, ["kernel_size", "8x2", "7x6"], fl.max_pool2d, X, (8, 2), backend=backend)


@hostile("empty-plane", "max_pool2d")
def _(backend):
    # With padding, a 0-row input would give windows made of padding only (no maximum, no index).
    _raises(ValueError, ["input", "0x6"], fl.max_pool2d, X[:, :, :0], 2, padding=1, backend=backend)


@hostile("non-integer-parameter", "conv2d")
def _(backend):
    _raises(TypeError, ["stride", "float"], fl.conv2d, X, Wc, stride=1.5, backend=backend)
    _raises(TypeError, ["dilation", "bool"], fl.conv2d, X, Wc, dilation=True, backend=backend)
    _raises(ValueError, ["padding", "'full'"], fl.conv2d, X, Wc, padding="full", backend=backend)
    _raises(TypeError, ["groups", "float"], fl.conv2d, X, Wc, groups=1.0, backend=backend)


@hostile("non-integer-parameter", "max_pool2d")
def _(backend):
    _raises(TypeError, ["kernel_size", "str"], fl.max_pool2d, X, "2", backend=backend)
    _raises(TypeError, ["ceil_mode", "bool"], fl.max_pool2d, X, 2, ceil_mode="yes", backend=backend)


def _zero_strided(shape, dtype=np.float64):
    """An array of any size that occupies one element of memory."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))


@hostile("index-overflow", "conv2d")
def _(backend):
    one = np.zeros((1, 1, 1, 1))
    _raises(ValueError, ["too large"], fl.conv2d, one, one, padding=2**30, backend=backend)
    _raises(ValueError, ["padding", "2**31"], fl.conv2d, one, one, padding=2**31, backend=backend)
    # 2**61 outputs: fewer than 2**62 elements, but 2**64 bytes, which NumPy cannot allocate.
    _raises(ValueError, ["too large"], fl.conv2d, _zero_strided((2**31, 1, 1, 1)), _zero_strided((2**30, 1, 1, 1)),
            backend=backend)


@hostile("index-overflow", "rnn")
def _(backend):
    # NumPy itself refuses arrays of 2**63 bytes or more, so the inputs stay below; the output
    # (T, N, H) would not.
    x = _zero_strided((2**36, 2**20, 1))
    Wx, Wh = _zero_strided((1, 2**10)), _zero_strided((2**10, 2**10))
    _raises(ValueError, ["too large", "T=68719476736"], fl.rnn, x, None, Wx, Wh, backend=backend)


@hostile("index-overflow", "max_pool2d")
def _(backend):
    _raises(ValueError, ["stride", "2**31"], fl.max_pool2d, X, 2, stride=2**40, backend=backend)


@hostile("index-overflow", "max_pool2d_backward")
def _(backend):
    dy, idx = np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int64)
    _raises(ValueError, ["input_shape", "index"], fl.max_pool2d_backward, dy, idx, (1, 1, 2**31, 2**31),
            backend=backend)


@hostile("c-int-sizes", "rnn")
def _(backend):
    if backend != "cpu":
        pytest.skip("the cpu backend's BLAS takes C-int sizes; the other backends index in 64 bits")
    import tempfile

    # D = 2**32 + 1 would reach BLAS as D = 1 (tanh(1.5) = 0.905 came back as 0.462), D = 2**31 as
    # an "illegal value": sparse memory maps, so no memory is touched when the call is refused.
    with tempfile.TemporaryDirectory() as tmp:
        for D in (2**31, 2**32 + 1):
            x = np.memmap(f"{tmp}/x{D}", np.float32, "w+", shape=(1, 1, D))
            Wx = np.memmap(f"{tmp}/w{D}", np.float32, "w+", shape=(D, 1))
            one = np.ones((1, 1), np.float32)
            _raises(ValueError, ["D=" + str(D), "C ints", "2**31 - 1"], fl.rnn, x, None, Wx, one, backend=backend)
            _raises(ValueError, ["D=" + str(D), "C ints"], fl.rnn_backward, np.ones((1, 1, 1), np.float32), x, None,
                    Wx, one, np.zeros((1, 1, 1), np.float32), backend=backend)
            del x, Wx


@hostile("re-entrant-call", "conv2d_backward")
def _(backend):
    """A call that starts while another is between its kernel and its last step, on the same thread (as a
    signal handler or a finalizer would), must not touch the first call's workspaces."""
    if backend != "cpu":
        pytest.skip("the cpu backend is the one caching workspaces across calls")
    import importlib

    cpu_conv2d = importlib.import_module("fastlayers.backends.cpu.conv2d")
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((4, 3, 6, 6)), rng.standard_normal((2, 3, 3, 3))
    dy = rng.standard_normal((4, 2, 4, 4))
    kernels = cpu_conv2d._im2col
    nested, interrupted = [], []

    class Interrupting:  # the kernel module, with a "handler" running right after the kernel returns
        def __getattr__(self, name):
            return getattr(kernels, name)

        def conv2d_backward(self, *args):
            kernels.conv2d_backward(*args)
            if not interrupted:
                interrupted.append(True)
                nested.append(fl.conv2d_backward(-2 * dy, x, w, algo="im2col", backend=backend))

    cpu_conv2d._im2col = Interrupting()
    try:
        with fl.threads(2):
            got = fl.conv2d_backward(dy, x, w, algo="im2col", backend=backend)
    finally:
        cpu_conv2d._im2col = kernels
    want = reference.conv2d_backward(dy, x, w)
    assert nested, "the interrupting call did not run"
    for i, (g, e) in enumerate(zip(got, want)):  # float64 sums of <= 432 products: 1e-12 is ~1000 ulp
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=f"interrupted call, output {i}")
    for i, (g, e) in enumerate(zip(nested[0], want)):
        np.testing.assert_allclose(g, -2 * e, rtol=1e-12, atol=1e-12, err_msg=f"nested call, output {i}")


def _empty_calls(op):
    """Calls of ``op`` with an empty batch (N = 0), and for rnn an empty sequence (T = 0)."""
    from _random_calls import fixed_call

    call = fixed_call(op, np.float64)
    sequence = op in ("rnn", "rnn_backward", "lstm", "lstm_backward", "gru", "gru_backward")  # (T, N, ...)
    batch_axis = 1 if sequence else 0
    cut = {}
    for name, a in call.arrays.items():
        if a is None or name in ("Wx", "Wh", "bias", "weight", "bias_ih", "bias_hh"):
            continue
        axis = 0 if name in ("hx", "cx") else batch_axis
        cut[name] = np.take(a, [], axis=axis) if name != "indices" else a[:0]
    params = dict(call.params)
    if "input_shape" in params:
        params["input_shape"] = (0,) + tuple(params["input_shape"][1:])
    out = [Call(op, dict(call.arrays, **cut), params, call.algo, call.terms)]
    if sequence:
        out.append(call.with_arrays(**{n: a[:0] for n, a in call.arrays.items()
                                       if n in ("input", "grad_output", "output", "grad_cell", "cell")
                                       and a is not None}))
    return out


for _op in ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "rnn_step", "rnn_step_backward",
            "rnn", "rnn_backward", "lstm", "lstm_backward", "gru", "gru_backward"):
    @hostile("empty-batch", _op)
    def _(backend, _op=_op):
        for call in _empty_calls(_op):
            assert_matches_reference(call, call.run(backend), np.float64)


def _zero(*shape):
    return np.zeros(shape)


_EMPTY_DIMS = {  # no channels or filters; no input or hidden features
    "conv2d": lambda: Call("conv2d", dict(input=_zero(2, 0, 5, 5), weight=_zero(0, 0, 3, 3), bias=_zero(0)),
                           dict(padding=1), "auto", (1,)),
    "conv2d_backward": lambda: Call("conv2d_backward", dict(grad_output=_zero(2, 0, 5, 5), input=_zero(2, 0, 5, 5),
                                                            weight=_zero(0, 0, 3, 3)), dict(padding=1), "auto",
                                    (1,) * 3),
    "rnn_step_backward": lambda: Call("rnn_step_backward", dict(grad_output=_zero(3, 0), input=_zero(3, 0),
                                                                hx=_zero(3, 0), Wx=_zero(0, 0), Wh=_zero(0, 0),
                                                                output=_zero(3, 0)),
                                      terms=(1,) * 5),
    "rnn_backward": lambda: Call("rnn_backward", dict(grad_output=_zero(2, 3, 0), input=_zero(2, 3, 4), hx=None,
                                                      Wx=_zero(4, 0), Wh=_zero(0, 0), output=_zero(2, 3, 0)),
                                 terms=(1,) * 5),
}
for _op, _make in _EMPTY_DIMS.items():
    @hostile("empty-dimension", _op)
    def _(backend, _make=_make):
        call = _make()
        assert_matches_reference(call, call.run(backend), np.float64)


@hostile("layouts", "conv2d")
def _(backend):
    from _random_calls import fixed_call

    call = fixed_call("conv2d", np.float64)
    for layout in LAYOUTS:
        hostile_call = call.with_arrays(**{n: relayout(a, layout) for n, a in call.arrays.items()})
        assert_matches_reference(call, hostile_call.run(backend), np.float64)


for _op in ("conv2d_backward", "max_pool2d", "max_pool2d_backward", "rnn", "rnn_backward", "lstm", "lstm_backward",
            "gru", "gru_backward"):
    @hostile("layouts", _op)
    def _(backend, _op=_op):
        from _random_calls import fixed_call

        call = fixed_call(_op, np.float32)
        for layout in LAYOUTS:
            hostile_call = call.with_arrays(**{n: relayout(a, layout) for n, a in call.arrays.items()})
            assert_matches_reference(call, hostile_call.run(backend), np.float32)


@hostile("nan-inf", "max_pool2d")
def _(backend):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan  # two NaNs in the first window: the last one wins, as in PyTorch
    x[0, 0, 3, 3] = np.inf
    x[0, 0, 2, 0] = -np.inf
    y, idx = fl.max_pool2d(x, 2, return_indices=True, backend=backend)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 4
    assert y[0, 0, 1, 1] == np.inf and idx[0, 0, 1, 1] == 15
    assert y[0, 0, 1, 0] == 13 and idx[0, 0, 1, 0] == 13


@hostile("nan-inf", "conv2d")
def _(backend):
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 0, 0], x[0, 0, 4, 4] = np.nan, np.inf
    y = fl.conv2d(x, np.ones((1, 1, 3, 3)), padding=1, backend=backend)[0, 0]
    # The NaN reaches exactly the outputs whose window covers it, the inf likewise (as in PyTorch).
    nan, inf = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    nan[:2, :2] = inf[3:, 3:] = True
    np.testing.assert_array_equal(np.isnan(y), nan)
    np.testing.assert_array_equal(np.isposinf(y), inf)
    assert (y[~nan & ~inf] == 0).all()


@hostile("nan-inf", "rnn")
def _(backend):
    x = np.zeros((3, 2, 3))
    x[0, 0, 0] = np.nan  # sample 0: NaN from the first step on
    x[0, 1, 0] = np.inf  # sample 1: saturates (tanh(+-inf) = +-1), stays finite
    hs = fl.rnn(x, None, np.ones((3, 2)), 0.5 * np.eye(2), backend=backend)
    assert np.isnan(hs[:, 0]).all()
    np.testing.assert_array_equal(hs[0, 1], [1.0, 1.0])
    assert np.isfinite(hs[:, 1]).all()


@hostile("nan-inf", "rnn_backward")
def _(backend):
    # inf - inf makes the only state NaN: every gradient that sums a product with it is NaN,
    # including dWh = h0^T dz with the zero initial state (0 * NaN = NaN, as in PyTorch).
    x, Wx, Wh = np.array([[[np.inf, -np.inf]]]), np.array([[0.5], [0.25]]), np.array([[-0.25]])
    hs = reference.rnn(x, None, Wx, Wh)
    call = Call("rnn_backward", dict(grad_output=np.ones_like(hs), input=x, hx=None, Wx=Wx, Wh=Wh, output=hs),
                terms=(1,) * 5)
    assert np.isnan(hs).all()
    assert_matches_reference(call, call.run(backend), np.float64)


@hostile("nan-inf", "conv2d_backward")
def _(backend):
    # A NaN weight reaches only the dx cells its tap maps to; a NaN in dy at a border reaches every dw tap
    # of its filter (the reference multiplies it by the padding's zeros too): the same on every algorithm.
    if backend == "cuda":
        pytest.xfail("the cuda dx gemm multiplies the weights by the implicit zeros of its gather (open)")
    rng = np.random.default_rng(3)
    x, w, dy = rng.standard_normal((2, 2, 7, 7)), rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 2, 4, 4))
    w[1, 0, 2, 2] = np.nan
    dy[0, 0, 0, 0] = np.nan
    dy[1, 1, 3, 3] = np.inf
    want = reference.conv2d_backward(dy, x, w, stride=2, padding=1)
    for algo in ALGOS if backend == "cpu" else ("auto",):  # the cpu backend's algos; the others have one
        got = fl.conv2d_backward(dy, x, w, stride=2, padding=1, algo=algo, backend=backend)
        for i, (g, e) in enumerate(zip(got, want)):
            msg = f"algo={algo}, output {i}"
            np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=msg)
            np.testing.assert_array_equal(np.isposinf(g), np.isposinf(e), err_msg=msg)
            finite = np.isfinite(e)  # float64 sums of <= 32 products
            np.testing.assert_allclose(g[finite], e[finite], rtol=1e-12, atol=1e-12, err_msg=msg)


@hostile("auto-scratch", "conv2d")
def _(backend):
    # Stride and dilation 2**20 along w: direct would copy 2**20 column phases per row (hundreds of MiB
    # per thread); im2col's columns hold the 2 taps read. y[ow] = sum_kw w[kw] * x_padded[(ow + kw) * 2**20],
    # and the one input value sits at 2**20: y = (w1 * x, w0 * x).
    x, w = np.full((1, 1, 1, 1), 3.0), np.array([[[[5.0, 7.0]]]])
    params = dict(stride=(1, 2**20), dilation=(1, 2**20), padding=(0, 2**20))
    np.testing.assert_array_equal(fl.conv2d(x, w, **params, backend=backend), [[[[21.0, 15.0]]]])
    dy = np.array([[[[2.0, 1.0]]]])  # dx = w1 * 2 + w0 * 1, dw = (1, 2) * x, db = 3
    for got, want in zip(fl.conv2d_backward(dy, x, w, **params, backend=backend), ([[[[19.0]]]], [[[[3.0, 6.0]]]], [3.0])):
        np.testing.assert_array_equal(got, want)
    if backend == "cpu":
        _raises(ValueError, ["algo='direct'", "scratch", "algo='im2col'"], fl.conv2d, x, w, **params, algo="direct",
                backend=backend)
        # Here the scratch size (2**64.2 bytes) wrapped around int64 when it was a C product: a
        # wrong size, not an error. Its right value is refused; auto runs im2col.
        huge = dict(stride=(2**30, 2**27), padding=(2**30, 2**27), dilation=(2**30, 2**27))
        w2 = np.ones((1, 1, 2, 2))
        _raises(ValueError, ["algo='direct'", "20752587102250598464 bytes"], fl.conv2d, x, w2, **huge, algo="direct",
                backend=backend)
        np.testing.assert_array_equal(fl.conv2d(x, w2, **huge, backend=backend), np.full((1, 1, 2, 2), 3.0))


@hostile("pool-window-wider-than-input", "max_pool2d")
def _(backend):
    if backend == "numpy":
        pytest.skip("the reference materialises the padded windows: 2**31 cells a row")
    import subprocess
    import sys

    # A window of 2**31 - 1 columns over a 1-column input: 22 s when every tap was visited, whatever the
    # input; now the one cell. In a child with a deadline, so a regression fails instead of stalling CI.
    code = ("import numpy as np, fastlayers as fl\n"
            f"y, i = fl.max_pool2d(-np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1), (1, 2**31 - 1), "
            f"padding=(0, 2**30 - 1), return_indices=True, backend={backend!r})\n"
            "assert (y.ravel() == -np.arange(8)).all() and (i == 0).all(), (y, i)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@hostile("out-buffer", "conv2d")
def _(backend):
    good = fl.conv2d(X, Wc, backend="numpy")
    _raises(ValueError, ["out", str(good.shape)], fl.conv2d, X, Wc, out=np.zeros((2, 4, 5, 5), np.float32),
            backend=backend)
    _raises(TypeError, ["out", "float32"], fl.conv2d, X, Wc, out=np.zeros(good.shape), backend=backend)
    _raises(ValueError, ["out", "C-contiguous"], fl.conv2d, X, Wc, out=np.zeros(good.shape, np.float32, order="F"),
            backend=backend)
    ro = np.zeros(good.shape, np.float32)
    ro.flags.writeable = False
    _raises(ValueError, ["out", "writeable"], fl.conv2d, X, Wc, out=ro, backend=backend)
    _raises(TypeError, ["out", "numpy.ndarray", "list"], fl.conv2d, X, Wc, out=good.tolist(), backend=backend)


@hostile("out-buffer", "conv2d_backward")
def _(backend):
    dy = np.zeros((2, 4, 5, 4), np.float32)
    _raises(TypeError, ["out", "tuple of 3"], fl.conv2d_backward, dy, X, Wc, out=(None, None), backend=backend)
    _raises(ValueError, ["out[1]", "(4, 3, 3, 3)"], fl.conv2d_backward, dy, X, Wc,
            out=(None, np.zeros((4, 3, 3, 2), np.float32), None), backend=backend)


@hostile("out-aliases-input", "conv2d")
def _(backend):
    x = np.random.default_rng(2).standard_normal((2, 4, 6, 6))
    for algo in ALGOS:  # a kernel writing y over x while still reading x would return garbage
        _raises(ValueError, ["out", "share memory", "input"], fl.conv2d, x, np.ones((4, 4, 3, 3)), padding=1, out=x,
                algo=algo, backend=backend)


@hostile("out-aliases-input", "max_pool2d")
def _(backend):
    x = np.random.default_rng(2).standard_normal((2, 4, 6, 6))
    _raises(ValueError, ["out[0]", "share memory", "input"], fl.max_pool2d, x, 1, out=x, backend=backend)


@hostile("out-aliases-input", "max_pool2d")
def _(backend):
    # x takes rows 0 and 2 of a buffer, y row 1: their bounds overlap, their elements do not.
    buf = np.arange(24, dtype=np.float64).reshape(3, 8)
    x, y = buf[::2].reshape(2, 1, 1, 8), buf[1].reshape(2, 1, 1, 4)
    want = reference.max_pool2d(x, (1, 2), return_indices=False)
    got = fl.max_pool2d(x, (1, 2), out=(y, None), return_indices=False, backend=backend)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(y, want)
    overlapping = buf[0].reshape(2, 1, 1, 4)  # row 0: x's first row
    _raises(ValueError, ["out[0]", "share memory", "input"], fl.max_pool2d, x, (1, 2), out=(overlapping, None),
            backend=backend)


@hostile("out-aliases-input", "rnn_step_backward")
def _(backend):
    from _random_calls import fixed_call

    call = fixed_call("rnn_step_backward", np.float64)
    dx = np.empty_like(call.arrays["input"])
    _raises(ValueError, ["out[1]", "share memory", "hx"], call.run, backend,
            out=(dx, call.arrays["hx"], None, None, None))
    N, H = call.arrays["output"].shape
    dWh = np.empty((H, H))
    _raises(ValueError, ["out[3]", "share memory", "out[1]"], call.run, backend, out=(None, dWh[:N], None, dWh, None))


@hostile("pool-indices-out-of-range", "max_pool2d_backward")
def _(backend):
    dy = np.ones((2, 3, 3, 3), np.float32)
    for bad in (42, -1, 2**40):
        idx = np.zeros(dy.shape, np.int64)
        idx[1, 2, 2, 2] = bad
        _raises(ValueError, ["indices", "[0, 42)"], fl.max_pool2d_backward, dy, idx, (2, 3, 6, 7), backend=backend)
        out = np.full((2, 3, 6, 7), 7, np.float32)
        _raises(ValueError, ["indices", "[0, 42)"], fl.max_pool2d_backward, dy, idx, (2, 3, 6, 7), out=out,
                backend=backend)
        assert (out == 7).all(), "the caller's out= was written before the error"
    # No cell to route to (H*W = 0) and gradients to route: every index is out of range.
    _raises(ValueError, ["indices", "[0, 0)"], fl.max_pool2d_backward, dy, np.zeros(dy.shape, np.int64),
            (2, 3, 0, 7), backend=backend)


@hostile("unknown-name", "conv2d")
def _(backend):
    _raises(ValueError, ["algo", "'fft'"], fl.conv2d, X, Wc, algo="fft", backend=backend)
    _raises(ValueError, ["backend", "'tpu'"], fl.conv2d, X, Wc, backend="tpu")
    _raises(ValueError, ["padding_mode", "'mirror'"], fl.conv2d, X, Wc, padding_mode="mirror", backend=backend)
    _raises(ValueError, ["nonlinearity", "'sigmoid'"], fl.rnn, Xs, H0, Wx, Wh, None, "sigmoid", backend=backend)


@hostile("output-not-computed", "conv2d_backward")
def _(backend):
    dy = np.zeros((2, 4, 5, 4), np.float32)
    _raises(ValueError, ["out[0] must be None", "grad_input is not computed"], fl.conv2d_backward, dy, X, Wc,
            input_grad=False, out=(np.empty_like(X), None, None), backend=backend)
    _raises(TypeError, ["input_grad must be a bool", "int"], fl.conv2d_backward, dy, X, Wc, input_grad=0,
            backend=backend)


@hostile("channels-last", "conv2d")
def _(backend):
    _raises(ValueError, ["weight.shape[1]", "channels-last", "(N, C, H, W)", "transpose(0, 3, 1, 2)"],
            fl.conv2d, np.ascontiguousarray(X.transpose(0, 2, 3, 1)), Wc, backend=backend)


@hostile("pytorch-weight-layout", "rnn")
def _(backend):
    _raises(ValueError, ["Wx", "(3, 4)", "(4, 3)", "PyTorch", "Wx.T"], fl.rnn, Xs, H0, Wx.T, Wh, backend=backend)


@hostile("big-endian", "conv2d")
def _(backend):
    _raises(TypeError, ["input", "big-endian", "newbyteorder('=')"], fl.conv2d, X.astype(">f4"), Wc, backend=backend)


@hostile("declined", "max_pool2d")
def _(backend):
    if backend == "cpu":  # its kernel has no dilation: told so, not run on another backend
        _raises(NotImplementedError, ["cpu max_pool2d kernel", "dilation"], fl.max_pool2d, X, 2, dilation=2,
                backend=backend)
    else:  # a max is exact: 0 terms of rounding
        call = Call("max_pool2d", dict(input=X), dict(kernel_size=2, dilation=2, return_indices=True), None, (0, 0))
        assert_matches_reference(call, call.run(backend), np.float32)


# ---------------------------------------------------------------------------- lstm, gru (own section of the doc)

GATED_H = 4
Wx4, Wh4 = RNG.standard_normal((3, 4 * GATED_H)), 0.5 * RNG.standard_normal((GATED_H, 4 * GATED_H))
Wx3, Wh3 = Wx4[:, : 3 * GATED_H], Wh4[:, : 3 * GATED_H]


@hostile("gate-weights-pytorch-layout", "lstm")
def _(backend):
    _raises(ValueError, ["Wx", "(3, 16)", "(16, 3)", "weight_ih.T"], fl.lstm, Xs, None, None, Wx4.T, Wh4,
            backend=backend)
    _raises(ValueError, ["Wh", "(16, 4)", "weight_hh.T"], fl.lstm, Xs, None, None, Wx4, Wh4.T, backend=backend)


@hostile("gate-weights-pytorch-layout", "gru")
def _(backend):
    _raises(ValueError, ["Wx", "(3, 12)", "(12, 3)", "weight_ih.T"], fl.gru, Xs, None, Wx3.T, Wh3, backend=backend)


@hostile("gate-width", "lstm")
def _(backend):
    # GRU-sized weights (3H columns) for an LSTM: the gate count is named.
    _raises(ValueError, ["Wh", "(4, 16)", "(4, 12)"], fl.lstm, Xs, None, None, Wx3, Wh3, backend=backend)
    _raises(ValueError, ["Wx", "(3, 16)", "(3, 12)"], fl.lstm, Xs, None, None, Wx3, Wh4, backend=backend)


@hostile("gate-bias-shape", "lstm")
def _(backend):
    # bias_ih and bias_hh stacked instead of added
    _raises(ValueError, ["bias", "(16,)", "(32,)"], fl.lstm, Xs, None, None, Wx4, Wh4, np.zeros(32), backend=backend)


@hostile("gate-bias-shape", "gru")
def _(backend):
    _raises(ValueError, ["bias_hh", "(12,)", "(4,)"], fl.gru, Xs, None, Wx3, Wh3, np.zeros(12), np.zeros(4),
            backend=backend)


@hostile("lstm-states", "lstm")
def _(backend):
    _raises(ValueError, ["cx", "(2, 4)", "(1, 2, 4)", "per layer"], fl.lstm, Xs, H0, H0[None], Wx4, Wh4,
            backend=backend)
    _raises(ValueError, ["cx", "(2, 4)", "(2, 5)"], fl.lstm, Xs, H0, np.zeros((2, 5)), Wx4, Wh4, backend=backend)


@hostile("lstm-states", "lstm_backward")
def _(backend):
    hs, cs = reference.lstm(Xs, None, None, Wx4, Wh4)
    _raises(ValueError, ["grad_cell", "(5, 2, 4)", "(4, 2, 4)"], fl.lstm_backward, hs, cs[1:], Xs, None, None, Wx4, Wh4,
            None, hs, cs, backend=backend)
    _raises(ValueError, ["cell", "(5, 2, 4)", "(5, 2, 3)"], fl.lstm_backward, hs, None, Xs, None, None, Wx4, Wh4,
            None, hs, cs[..., :3], backend=backend)


@hostile("gate-workspace", "lstm_backward")
def _(backend):
    hs, cs, ws = fl.lstm(Xs, None, None, Wx4, Wh4, return_workspace=True, backend=backend)
    args = (hs, None, Xs, None, None, Wx4, Wh4, None, hs, cs)
    _raises(TypeError, ["return_workspace", "True or False", "str"], fl.lstm, Xs, None, None, Wx4, Wh4,
            return_workspace="yes", backend=backend)
    _raises(TypeError, ["workspace", "GateWorkspace", "return_workspace=True", "ndarray"], fl.lstm_backward, *args,
            workspace=np.zeros((10, 16)), backend=backend)
    _, gru_ws = fl.gru(Xs, None, Wx3, Wh3, return_workspace=True, backend=backend)
    _raises(ValueError, ["workspace", "gru", "lstm_backward"], fl.lstm_backward, *args, workspace=gru_ws,
            backend=backend)
    hs4, cs4, ws4 = fl.lstm(Xs[:4], None, None, Wx4, Wh4, return_workspace=True, backend=backend)
    _raises(ValueError, ["workspace", "(4, 2, 3, 4)", "(5, 2, 3, 4)"], fl.lstm_backward, *args, workspace=ws4,
            backend=backend)
    ws32 = fl.lstm(*(a.astype(np.float32) for a in (Xs, H0, H0, Wx4, Wh4)), return_workspace=True,
                   backend=backend)[2]
    _raises(TypeError, ["workspace", "float32", "float64"], fl.lstm_backward, *args, workspace=ws32, backend=backend)
    other = fl.lstm(Xs + 1, None, None, Wx4, Wh4, return_workspace=True, backend=backend)[2]  # same sizes
    _raises(ValueError, ["workspace", "another forward", "last hidden state"], fl.lstm_backward, *args,
            workspace=other, backend=backend)
    fl.lstm_backward(*args, workspace=ws, backend=backend)  # its own forward's: accepted


@hostile("gate-workspace", "gru_backward")
def _(backend):
    hs, ws = fl.gru(Xs, None, Wx3, Wh3, return_workspace=True, backend=backend)
    args = (hs, Xs, None, Wx3, Wh3, None, None, hs)
    _raises(TypeError, ["workspace", "GateWorkspace", "tuple"], fl.gru_backward, *args, workspace=(ws,),
            backend=backend)
    lstm_ws = fl.lstm(Xs, None, None, Wx4, Wh4, return_workspace=True, backend=backend)[2]
    _raises(ValueError, ["workspace", "lstm", "gru_backward"], fl.gru_backward, *args, workspace=lstm_ws,
            backend=backend)
    other = fl.gru(Xs, H0, Wx3, Wh3, return_workspace=True, backend=backend)[1]
    _raises(ValueError, ["workspace", "another forward"], fl.gru_backward, *args, workspace=other, backend=backend)
    fl.gru_backward(*args, workspace=ws, backend=backend)


@hostile("ndim", "gru")
def _(backend):
    _raises(ValueError, ["input", "3-D", "2-D"], fl.gru, Xs[0], None, Wx3, Wh3, backend=backend)


@hostile("mixed-dtypes", "lstm")
def _(backend):
    _raises(TypeError, ["Wh", "float32", "float64", "mixed"], fl.lstm, Xs, None, None, Wx4, Wh4.astype(np.float32),
            backend=backend)


@hostile("nan-inf", "lstm")
def _(backend):
    x = np.zeros((3, 2, 3))
    x[0, 0, 0] = np.nan  # sequence 0: NaN from the first step on
    x[0, 1, 0] = np.inf  # sequence 1: saturates every gate (sigmoid(inf) = 1, tanh(inf) = 1), stays finite
    hs, cs = fl.lstm(x, None, None, np.ones((3, 16)), 0.1 * np.ones((4, 16)), backend=backend)
    assert np.isnan(hs[:, 0]).all() and np.isnan(cs[:, 0]).all()
    np.testing.assert_allclose(cs[0, 1], 1.0)  # c = f * 0 + i * g = 1
    assert np.isfinite(hs[:, 1]).all()


@hostile("nan-inf", "gru_backward")
def _(backend):
    # inf - inf makes the only state NaN: every gradient summing a product with it is NaN.
    x, Wx, Wh = np.array([[[np.inf, -np.inf]]]), np.full((2, 3), 0.5), np.full((1, 3), -0.25)
    Wx[1] = 0.25
    hs = reference.gru(x, None, Wx, Wh)
    call = Call("gru_backward", dict(grad_output=np.ones_like(hs), input=x, hx=None, Wx=Wx, Wh=Wh, bias_ih=None,
                                     bias_hh=None, output=hs), terms=(1,) * 6)
    assert np.isnan(hs).all()
    assert_matches_reference(call, call.run(backend), np.float64)


@hostile("index-overflow", "gru")
def _(backend):
    x = _zero_strided((2**36, 2**20, 1))
    Wx, Wh = _zero_strided((1, 3 * 2**10)), _zero_strided((2**10, 3 * 2**10))
    _raises(ValueError, ["gru", "too large", "T=68719476736"], fl.gru, x, None, Wx, Wh, backend=backend)


@hostile("c-int-sizes", "lstm")
def _(backend):
    if backend != "cpu":
        pytest.skip("the cpu backend's BLAS takes C-int sizes; the other backends index in 64 bits")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # sparse memory maps: nothing is touched when refused
        D = 2**31
        x = np.memmap(f"{tmp}/x", np.float32, "w+", shape=(1, 1, D))
        Wx = np.memmap(f"{tmp}/w", np.float32, "w+", shape=(D, 4))
        Wh, hs = np.ones((1, 4), np.float32), np.zeros((1, 1, 1), np.float32)
        _raises(ValueError, ["lstm", "D=" + str(D), "C ints"], fl.lstm, x, None, None, Wx, Wh, backend=backend)
        _raises(ValueError, ["lstm", "D=" + str(D), "C ints"], fl.lstm_backward, hs, None, x, None, None, Wx, Wh,
                None, hs, hs, backend=backend)
        del x, Wx


@hostile("c-int-sizes", "gru_backward")
def _(backend):
    if backend != "cpu":
        pytest.skip("the cpu backend's BLAS takes C-int sizes; the other backends index in 64 bits")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        D = 2**31
        x = np.memmap(f"{tmp}/x", np.float32, "w+", shape=(1, 1, D))
        Wx = np.memmap(f"{tmp}/w", np.float32, "w+", shape=(D, 3))
        Wh, hs = np.ones((1, 3), np.float32), np.zeros((1, 1, 1), np.float32)
        _raises(ValueError, ["gru", "D=" + str(D), "C ints"], fl.gru, x, None, Wx, Wh, backend=backend)
        _raises(ValueError, ["gru", "D=" + str(D), "C ints"], fl.gru_backward, hs, x, None, Wx, Wh, None, None, hs,
                backend=backend)
        del x, Wx


@hostile("out-aliases-input", "lstm_backward")
def _(backend):
    from _random_calls import fixed_call

    call = fixed_call("lstm_backward", np.float64)
    _raises(ValueError, ["out[2]", "share memory", "cx"], call.run, backend, out=(None, None, call.arrays["cx"], None,
                                                                                   None, None))


@hostile("batch-norm-statistics", "batch_norm")
def _(backend):
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    stats = np.zeros(3, np.float32), np.ones(3, np.float32)
    _raises(ValueError, ["running_mean and running_var are required", "training=False"], fl.batch_norm, x, None,
            None, backend=backend)
    _raises(ValueError, ["given together"], fl.batch_norm, x, stats[0], None, training=True, backend=backend)
    frozen = stats[0].copy()
    frozen.flags.writeable = False
    _raises(ValueError, ["running_mean", "writeable"], fl.batch_norm, x, frozen, stats[1], training=True,
            backend=backend)
    assert not frozen.any()  # left as it was


@hostile("batch-norm-one-value", "batch_norm")
def _(backend):
    _raises(ValueError, ["more than one value per channel", "(1, 3, 1, 1)"], fl.batch_norm,
            np.ones((1, 3, 1, 1)), None, None, training=True, backend=backend)


@hostile("linear-weight-layout", "linear")
def _(backend):
    _raises(ValueError, ["in_features = 3", "pass weight.T"], fl.linear, np.ones((2, 4)), np.ones((4, 3)),
            backend=backend)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN/Inf rows
@pytest.mark.parametrize(
    "row, backend",
    [(row, backend) for row, (op, _) in HOSTILE.items() for (o, backend) in ALL_PAIRS if o == op],
)
def test_documented_hostile_input(row, backend):
    HOSTILE[row][1](backend)


def test_validation_doc_is_complete():
    """Every row of docs/validation.md is checked above, and every check has its row."""
    doc = (Path(__file__).parent.parent / "docs" / "validation.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", doc, flags=re.M))
    checked = {row.split(":")[0] for row in HOSTILE} | {"huge-allocation"}  # the last in test_memory.py
    assert documented == checked, f"doc only: {documented - checked}; tests only: {checked - documented}"
