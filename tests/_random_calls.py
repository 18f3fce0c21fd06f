"""Random valid calls of every op, shared by the reliability tests (fuzz, threads, memory,
determinism).

The kernels land op by op, so nothing here names a backend: ``kernel_pairs()`` reads
``fastlayers.available_backends()`` at run time and the tests run on every (op, backend) pair that exists,
each compared with the NumPy reference.

A ``Call`` holds keyword arguments only (array names are the API's: ``input``, ``weight``, ...), so
one call runs unchanged on ``fastlayers`` (any backend) and on ``fastlayers.reference``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference
from fastlayers.ops import FUNCTIONS
from fastlayers.ops.conv2d import conv2d_geometry

# The ops with generators below (every public function but the lstm and gru steps).
OPS = tuple(op for op in FUNCTIONS if not op.startswith(("lstm_step", "gru_step")))
# Arguments that are arrays, in the order of the signature; the first float one fixes the dtype
# the others must share (the spec checks it first).
_FORWARD = {"conv2d": ("input", "weight", "bias"), "max_pool2d": ("input",), "rnn": ("input", "hx", "Wx", "Wh", "bias"),
            "lstm": ("input", "hx", "cx", "Wx", "Wh", "bias"),
            "gru": ("input", "hx", "Wx", "Wh", "bias_ih", "bias_hh"),
            "linear": ("input", "weight", "bias"), "relu": ("input",), "batch_norm": ("input", "running_mean", "running_var", "weight", "bias")}
_BACKWARD = {"conv2d": ("grad_output", "input", "weight"), "max_pool2d": ("grad_output", "indices"),
             "rnn": ("grad_output", "input", "hx", "Wx", "Wh", "output"),
             "lstm": ("grad_output", "grad_cell", "input", "hx", "cx", "Wx", "Wh", "bias", "output", "cell"),
             "gru": ("grad_output", "input", "hx", "Wx", "Wh", "bias_ih", "bias_hh", "output"),
             "linear": ("grad_output", "input", "weight"), "relu": ("grad_output", "input"),
             "batch_norm": ("grad_output", "input", "running_mean", "running_var", "weight")}
ARRAYS = {op: (_FORWARD if FUNCTIONS[op].functions[op] == "forward" else _BACKWARD)[FUNCTIONS[op].name] for op in OPS}
# The array whose dtype and shape the others are checked against: the forward's input (the
# pooled gradient for max_pool2d_backward, which has none).
ANCHOR = {op: next(a for a in (_FORWARD[FUNCTIONS[op].name][0], "grad_output") if a in ARRAYS[op]) for op in OPS}
LAYOUTS = ("C", "F", "reversed", "strided", "readonly")
# Ops whose arrays may have several ranks: op -> the array of the forward whose rank may change
# validly (relu's and linear's input: any rank; batch_norm's: 2-D to 5-D, valid again where the
# channel axis keeps its size). A rank change elsewhere may be blamed on any array of the call.
ANY_RANK = {"relu": "input", "relu_backward": None, "linear": "input", "linear_backward": None, "batch_norm": "input",
            "batch_norm_backward": None}


@dataclass
class Call:
    """One call of ``op``: array arguments, other parameters, and for each output the length of
    the longest sum that produced it (the rounding budget of ``tolerance_terms``; 0: exact)."""

    op: str
    arrays: dict
    params: dict = field(default_factory=dict)
    algo: str | None = None  # conv2d ops only; the reference has one algorithm
    terms: tuple = ()

    def kwargs(self):
        kw = dict(self.arrays, **self.params)
        if self.algo is not None:
            kw["algo"] = self.algo
        return kw

    def run(self, backend, **extra):
        return as_tuple(getattr(fl, self.op)(**self.kwargs(), backend=backend, **extra))

    def expected(self):
        """The reference's result, computed in float64 from the same values (the float32 inputs
        are exact in float64), so it is the exact answer up to float64 rounding."""
        arrays = {k: _upcast(v) for k, v in self.arrays.items()}
        return as_tuple(getattr(reference, self.op)(**arrays, **self.params))

    def with_arrays(self, **arrays):
        return replace(self, arrays=dict(self.arrays, **arrays))

    def with_params(self, **params):
        return replace(self, params=dict(self.params, **params))


def _upcast(a):
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        return a.astype(np.float64)
    return a


def as_tuple(result):
    return tuple(to_host(r) for r in result) if isinstance(result, tuple) else (to_host(result),)


def to_host(a):
    """A NumPy array from whatever a backend returned (NumPy, Numba device array, CuPy)."""
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    if hasattr(a, "get") and hasattr(a, "__cuda_array_interface__"):
        return a.get()
    return np.asarray(a)


def simulated(backend):
    """Is ``backend`` Numba's CUDA simulator? It runs every GPU thread as a Python thread: right
    answers, but far too slow for the thread, memory and determinism tests, and its threads,
    memory and rounding say nothing about a GPU's."""
    return backend == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def kernel_pairs(include_reference=False, include_simulator=True):
    """``(op, backend)`` for every op each available backend implements here."""
    pairs = []
    for name, entry in fl.available_backends().items():
        if not entry["available"] or (name == "numpy" and not include_reference):
            continue
        if simulated(name) and not include_simulator:
            continue
        pairs.extend((op, name) for op in entry["ops"] if op in OPS)
    return sorted(pairs)


def relayout(a, layout):
    """The same values as ``a`` in another memory layout: Fortran order, a negative stride on the
    last axis, every other element of a larger buffer, or read-only."""
    if not isinstance(a, np.ndarray) or layout == "C":
        return a
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "reversed":
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim else None
        if wide is None:
            return a
        wide[..., ::2] = a
        return wide[..., ::2]
    if layout == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    raise ValueError(layout)


# ---------------------------------------------------------------------------- data


def _values(rng, shape, dtype, kind, scale=1.0):
    """Normal values; "ties": small integers, so that max-pool windows hold equal maxima;
    "nonfinite": normal values with a few NaN, +inf and -inf."""
    if kind == "ties":
        a = rng.integers(-2, 3, size=shape).astype(dtype)
    else:
        a = (scale * rng.standard_normal(shape)).astype(dtype)
    if kind == "nonfinite" and a.size:
        for v in (np.nan, np.inf, -np.inf):
            a.flat[rng.integers(0, a.size, size=max(1, a.size // 50))] = v
    return a


_KINDS = st.sampled_from(("normal", "normal", "ties", "nonfinite"))
_SEEDS = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------------- conv2d


@st.composite
def conv2d_calls(draw, dtype, backward=False, algos=("auto",)):
    groups = draw(st.integers(1, 3))
    C = groups * draw(st.integers(0, 3))
    F = groups * draw(st.integers(0, 3))
    N = draw(st.integers(0, 3))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.sampled_from(("valid", "same"))))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ext = (dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1)
    if padding == "same":
        pads = (ext[0] - 1, ext[1] - 1)
    elif padding == "valid":
        pads = (0, 0)
    else:
        pads = (2 * padding[0], 2 * padding[1])
    H = max(ext[0] - pads[0], 1 if padding == "same" else 0) + draw(st.integers(0, 5))
    W = max(ext[1] - pads[1], 1 if padding == "same" else 0) + draw(st.integers(0, 5))
    rng = np.random.default_rng(draw(_SEEDS))
    kind = draw(_KINDS)
    x = _values(rng, (N, C, H, W), dtype, kind)
    w = _values(rng, (F, C // groups, KH, KW), dtype, "normal")
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    algo = draw(st.sampled_from(algos))
    g = conv2d_geometry(x.shape, w.shape, **params)
    taps = (C // groups) * KH * KW
    if backward:
        dy = _values(rng, g.y_shape, dtype, "normal")
        # dx sums F/groups filters over the taps that reach a pixel; dw and db sum N*OH*OW terms.
        terms = ((F // groups) * KH * KW, N * g.OH * g.OW, N * g.OH * g.OW)
        return Call("conv2d_backward", dict(grad_output=dy, input=x, weight=w), params, algo, terms)
    b = _values(rng, (F,), dtype, "normal") if draw(st.booleans()) else None
    return Call("conv2d", dict(input=x, weight=w, bias=b), params, algo, (taps + 1,))


# ---------------------------------------------------------------------------- max_pool2d


@st.composite
def max_pool2d_calls(draw, dtype, backward=False):
    N, C = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = (draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2)))
    ceil_mode = draw(st.booleans())
    H = max(KH - 2 * padding[0], 1) + draw(st.integers(0, 6))
    W = max(KW - 2 * padding[1], 1) + draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(_SEEDS))
    x = _values(rng, (N, C, H, W), dtype, draw(_KINDS))
    params = dict(kernel_size=(KH, KW), stride=stride, padding=padding, ceil_mode=ceil_mode)
    if not backward:
        return Call("max_pool2d", dict(input=x), dict(params, return_indices=True), None, (0, 0))
    y, indices = reference.max_pool2d(x, **params, return_indices=True)
    if draw(st.booleans()) and indices.size:  # any in-range index is valid, not only argmaxes
        indices = rng.integers(0, H * W, size=indices.shape)
    dy = _values(rng, y.shape, dtype, "normal")
    # A cell receives at most one gradient per window that covers it.
    sh, sw = stride or (KH, KW)
    overlap = math.ceil(KH / sh) * math.ceil(KW / sw)
    return Call("max_pool2d_backward", dict(grad_output=dy, indices=indices), dict(input_shape=x.shape), None,
                (overlap,))


# ---------------------------------------------------------------------------- rnn


@st.composite
def rnn_calls(draw, dtype, sequence=False, backward=False):
    T = draw(st.integers(0, 6)) if sequence else 1
    N, D, H = draw(st.integers(0, 4)), draw(st.integers(0, 6)), draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(_SEEDS))
    kind = draw(_KINDS)
    x = _values(rng, (T, N, D) if sequence else (N, D), dtype, kind)
    # Weights scaled so that pre-activations stay O(1) and the recurrence does not amplify
    # rounding errors (spectral radius of Wh about 0.5).
    Wx = _values(rng, (D, H), dtype, "normal", 1 / math.sqrt(max(D, 1)))
    Wh = _values(rng, (H, H), dtype, "normal", 0.5 / math.sqrt(max(H, 1)))
    h0 = None if sequence and draw(st.booleans()) else _values(rng, (N, H), dtype, "normal")
    op = "rnn" if sequence else "rnn_step"
    params = dict(nonlinearity=draw(st.sampled_from(("tanh", "relu"))))
    # Each state sums D + H + 1 terms; through T steps rounding errors add up (the activation's
    # slope is at most 1 and Wh contracts, so they do not grow); the backward's weight gradients
    # sum T*N terms.
    step = D + H + 1
    if not backward:
        b = _values(rng, (H,), dtype, "normal") if draw(st.booleans()) else None
        return Call(op, dict(input=x, hx=h0, Wx=Wx, Wh=Wh, bias=b), params, None, (T * step,))
    b = _values(rng, (H,), dtype, "normal")
    h = getattr(reference, op)(x, h0, Wx, Wh, b, **params)
    dh = _values(rng, h.shape, dtype, "normal")
    terms = (T * (step + N),) * 5
    return Call(op + "_backward", dict(grad_output=dh, input=x, hx=h0, Wx=Wx, Wh=Wh, output=h), params, None, terms)


# ---------------------------------------------------------------------------- lstm, gru

GATES = {"lstm": 4, "gru": 3}


def _gated_call(rng, cell, T, N, D, H, dtype, kind="normal", backward=False, absent=()):
    """A call of ``cell`` (or its backward) on inputs drawn like rnn's; the arrays named in
    ``absent`` (initial states, biases, grad_cell) are None."""
    G = GATES[cell]
    arrays = dict(input=_values(rng, (T, N, D), dtype, kind),
                  Wx=_values(rng, (D, G * H), dtype, "normal", 1 / math.sqrt(max(D, 1))),
                  Wh=_values(rng, (H, G * H), dtype, "normal", 0.5 / math.sqrt(max(H, 1))))
    for name in ("hx", "cx") if cell == "lstm" else ("hx",):
        arrays[name] = _values(rng, (N, H), dtype, "normal")
    for name in ("bias",) if cell == "lstm" else ("bias_ih", "bias_hh"):
        arrays[name] = _values(rng, (G * H,), dtype, "normal")
    arrays = {k: None if k in absent else v for k, v in arrays.items()}
    arrays = {k: arrays[k] for k in ARRAYS[cell]}
    # A pre-activation sums D + H + 1 terms, then a few operations per gate; through T steps
    # rounding errors add up (gate derivatives <= 1, Wh and the forget/update gates contract);
    # the backward's dx and carried dh sum G*H terms, its weight gradients T*N.
    step = D + H + 4
    outs = getattr(reference, cell)(**arrays)
    if not backward:
        return Call(cell, arrays, {}, None, (T * step,) * len(as_tuple(outs)))
    douts = {"grad_output": _values(rng, (T, N, H), dtype, "normal")}
    if cell == "lstm":
        douts["grad_cell"] = None if "grad_cell" in absent else _values(rng, (T, N, H), dtype, "normal")
        states = dict(zip(("output", "cell"), outs))
    else:
        states = {"output": outs}
    args = dict(arrays, **douts, **states)
    terms = (T * (step + G * H + N),) * 6
    return Call(cell + "_backward", {k: args[k] for k in ARRAYS[cell + "_backward"]}, {}, None, terms)


@st.composite
def gated_calls(draw, dtype, cell, backward=False):
    T, N, D, H = draw(st.integers(0, 6)), draw(st.integers(0, 4)), draw(st.integers(0, 6)), draw(st.integers(0, 6))
    optional = ("hx", "cx", "bias", "grad_cell") if cell == "lstm" else ("hx", "bias_ih", "bias_hh")
    absent = tuple(name for name in optional if draw(st.booleans()))
    rng = np.random.default_rng(draw(_SEEDS))
    return _gated_call(rng, cell, T, N, D, H, dtype, draw(_KINDS), backward, absent)


# ---------------------------------------------------------------------------- linear, relu, batch_norm


def _linear_call(rng, lead, I, O, dtype, kind="normal", backward=False, has_bias=True, transposed=False):
    """``transposed``: the weight is the transpose of a C-contiguous (I, O) array, as the Dense
    layer passes it."""
    x = _values(rng, lead + (I,), dtype, kind)
    w = _values(rng, (I, O), dtype, "normal").T if transposed else _values(rng, (O, I), dtype, "normal")
    if not backward:
        b = _values(rng, (O,), dtype, "normal") if has_bias else None
        return Call("linear", dict(input=x, weight=w, bias=b), {}, None, (I + 1,))
    M = int(np.prod(lead, dtype=np.int64))
    dy = _values(rng, lead + (O,), dtype, "normal")
    return Call("linear_backward", dict(grad_output=dy, input=x, weight=w), {}, None, (O, M, M))


@st.composite
def linear_calls(draw, dtype, backward=False):
    lead = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=2)))
    I, O = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    return _linear_call(np.random.default_rng(draw(_SEEDS)), lead, I, O, dtype, draw(_KINDS), backward,
                        draw(st.booleans()), draw(st.booleans()))



def _relu_call(rng, shape, dtype, kind="normal", backward=False):
    x = _values(rng, shape, dtype, kind)
    if not backward:
        return Call("relu", dict(input=x), {}, None, (0,))  # a selection: exact
    return Call("relu_backward", dict(grad_output=_values(rng, shape, dtype, "normal"), input=x), {}, None, (0,))


@st.composite
def relu_calls(draw, dtype, backward=False):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    return _relu_call(np.random.default_rng(draw(_SEEDS)), shape, dtype, draw(_KINDS), backward)


def _batch_norm_conditioning(x, stats, eps):
    """(kappa, invstd): how much float32 rounding of x - mean is amplified, the max over channels
    of (|x| + |mean|) / sqrt(var + eps), and the largest 1 / sqrt(var + eps) (the mean and
    variance are the batch's, or ``stats``, the running ones). Channels holding a NaN or an
    infinity are all NaN in both results: left out."""
    axes = (0,) + tuple(range(2, x.ndim))
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if stats[0] is None:
            mean, var = x64.mean(axis=axes), x64.var(axis=axes)
        else:
            mean, var = stats[0].astype(np.float64), stats[1].astype(np.float64)
        invstd = 1 / np.sqrt(var + eps)
        kappa = (np.abs(x64).max(axis=axes, initial=0) + np.abs(mean)) * invstd
    finite = np.isfinite(kappa)
    return max(1.0, float(kappa[finite].max(initial=1.0))), float(invstd[finite].max(initial=1.0))


def _batch_norm_call(rng, shape, dtype, training, kind="normal", backward=False, affine=True):
    """Training calls pass no running statistics (the forward would update them in place: the
    layer tests and tests/test_batch_norm.py check that); eval calls pass them."""
    C = shape[1]
    x = _values(rng, shape, dtype, kind)
    stats = (None, None) if training else (_values(rng, (C,), dtype, "normal"), 0.5 + np.abs(_values(rng, (C,), dtype, "normal")))
    weight = _values(rng, (C,), dtype, "normal") if affine else None
    params = dict(training=training, eps=1e-5)
    arrays = dict(input=x, running_mean=stats[0], running_var=stats[1], weight=weight)
    # A normalised value carries the rounding of x - mean amplified by the conditioning (a batch of
    # nearly equal values has a tiny variance); dx = a * dy + b * (x - mean) + c adds terms of
    # the size of weight * invstd * dy, each with that rounding; the parameter gradients sum N*S
    # terms in float64, rounded once.
    kappa, invstd = _batch_norm_conditioning(x, stats, 1e-5)
    count = max(x.size // max(C, 1), 1)
    if not backward:
        bias = _values(rng, (C,), dtype, "normal") if affine else None
        return Call("batch_norm", dict(arrays, bias=bias), params, None, (8 * kappa,))
    dy = _values(rng, shape, dtype, "normal")
    scale = invstd * float(np.abs(dy).max(initial=0)) * (1 if weight is None else float(np.abs(weight).max(initial=0)))
    return Call("batch_norm_backward", dict(grad_output=dy, **arrays), params, None,
                (8 * kappa * max(scale, 1.0), 4 * count, 4 * count))


@st.composite
def batch_norm_calls(draw, dtype, backward=False):
    N, C = draw(st.integers(1, 4)), draw(st.integers(0, 4))
    trailing = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))
    training = draw(st.booleans()) and N * int(np.prod(trailing)) > 1
    return _batch_norm_call(np.random.default_rng(draw(_SEEDS)), (N, C) + trailing, dtype, training, draw(_KINDS),
                            backward, affine=draw(st.booleans()))


def calls(op, dtype, algos=("auto",)):
    """A strategy of valid ``Call``s of ``op`` in ``dtype``."""
    dtype = np.dtype(dtype)
    return {
        "conv2d": lambda: conv2d_calls(dtype, algos=algos),
        "conv2d_backward": lambda: conv2d_calls(dtype, backward=True, algos=algos),
        "max_pool2d": lambda: max_pool2d_calls(dtype),
        "max_pool2d_backward": lambda: max_pool2d_calls(dtype, backward=True),
        "rnn_step": lambda: rnn_calls(dtype),
        "rnn_step_backward": lambda: rnn_calls(dtype, backward=True),
        "rnn": lambda: rnn_calls(dtype, sequence=True),
        "rnn_backward": lambda: rnn_calls(dtype, sequence=True, backward=True),
        "lstm": lambda: gated_calls(dtype, "lstm"),
        "lstm_backward": lambda: gated_calls(dtype, "lstm", backward=True),
        "gru": lambda: gated_calls(dtype, "gru"),
        "gru_backward": lambda: gated_calls(dtype, "gru", backward=True),
        "linear": lambda: linear_calls(dtype),
        "linear_backward": lambda: linear_calls(dtype, backward=True),
        "relu": lambda: relu_calls(dtype),
        "relu_backward": lambda: relu_calls(dtype, backward=True),
        "batch_norm": lambda: batch_norm_calls(dtype),
        "batch_norm_backward": lambda: batch_norm_calls(dtype, backward=True),
    }[op]()


def _fixed_conv2d(op, backward, rng, dtype, big):
    N, C, H, W, F = (8, 16, 16, 16, 16) if big else (4, 8, 12, 12, 8)
    x = _values(rng, (N, C, H, W), dtype, "normal")
    w = _values(rng, (F, C, 3, 3), dtype, "normal")
    params = dict(stride=1, padding=1, dilation=1, groups=1)
    if not backward:
        return Call(op, dict(input=x, weight=w, bias=_values(rng, (F,), dtype, "normal")), params, "auto",
                    (C * 9 + 1,))
    dy = _values(rng, (N, F, H, W), dtype, "normal")
    return Call(op, dict(grad_output=dy, input=x, weight=w), params, "auto", (F * 9, N * H * W, N * H * W))


def _fixed_max_pool2d(op, backward, rng, dtype, big):
    x = _values(rng, (8, 16, 32, 32) if big else (4, 8, 16, 16), dtype, "normal")
    params = dict(kernel_size=3, stride=2, padding=1, ceil_mode=False)
    if not backward:
        return Call(op, dict(input=x), dict(params, return_indices=True), None, (0, 0))
    y, indices = reference.max_pool2d(x, **params, return_indices=True)
    dy = _values(rng, y.shape, dtype, "normal")
    return Call(op, dict(grad_output=dy, indices=indices), dict(input_shape=x.shape), None, (4,))


def _fixed_rnn(op, backward, rng, dtype, big):
    fwd = op.removesuffix("_backward")  # the forward of the pair: rnn or rnn_step
    sequence = fwd == "rnn"
    T, N, D, H = (10, 16, 32, 48) if big else (5, 8, 16, 24)
    if not sequence:
        T = 1
    x = _values(rng, (T, N, D) if sequence else (N, D), dtype, "normal")
    Wx = _values(rng, (D, H), dtype, "normal", 1 / math.sqrt(D))
    Wh = _values(rng, (H, H), dtype, "normal", 0.5 / math.sqrt(H))
    h0 = _values(rng, (N, H), dtype, "normal")
    b = _values(rng, (H,), dtype, "normal")
    step = D + H + 1
    if not backward:
        return Call(op, dict(input=x, hx=h0, Wx=Wx, Wh=Wh, bias=b), {}, None, (T * step,))
    h = getattr(reference, fwd)(x, h0, Wx, Wh, b)
    dh = _values(rng, h.shape, dtype, "normal")
    return Call(op, dict(grad_output=dh, input=x, hx=h0, Wx=Wx, Wh=Wh, output=h), {}, None, (T * (step + N),) * 5)


def _fixed_gated(op, backward, rng, dtype, big):
    T, N, D, H = (10, 16, 32, 48) if big else (5, 8, 16, 24)
    return _gated_call(rng, FUNCTIONS[op].name, T, N, D, H, dtype, backward=backward)


def _fixed_linear(op, backward, rng, dtype, big):
    return _linear_call(rng, (64,) if big else (16,), 512 if big else 128, 64 if big else 32, dtype,
                        backward=backward, transposed=True)


def _fixed_relu(op, backward, rng, dtype, big):
    return _relu_call(rng, (8, 16, 32, 32) if big else (4, 8, 16, 16), dtype, backward=backward)


def _fixed_batch_norm(op, backward, rng, dtype, big):
    return _batch_norm_call(rng, (8, 16, 32, 32) if big else (4, 8, 16, 16), dtype, True, backward=backward)


# One fixed-call generator per spec (``FUNCTIONS[op].name``), given the function's direction.
_FIXED = {"conv2d": _fixed_conv2d, "max_pool2d": _fixed_max_pool2d, "rnn": _fixed_rnn, "lstm": _fixed_gated,
          "gru": _fixed_gated, "linear": _fixed_linear, "relu": _fixed_relu, "batch_norm": _fixed_batch_norm}


def fixed_call(op, dtype=np.float32, seed=0, size="small"):
    """A deterministic, moderately sized call of ``op`` (threads, memory, determinism tests):
    big enough that the kernels run multi-threaded, small enough for CI."""
    spec = FUNCTIONS[op]
    backward = spec.functions[op] == "backward"
    return _FIXED[spec.name](op, backward, np.random.default_rng(seed), dtype, size == "big")
