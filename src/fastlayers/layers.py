"""Layer objects: PyTorch-like constructors around the functional API.

Every layer has ``forward(x)`` (also ``layer(x)``), ``backward(dy)`` returning dL/dx, and two
dicts: ``params`` (name -> array, updated in place by the optimisers) and ``grads`` (name ->
array, *replaced* by every ``backward``: gradients are set, never accumulated).
``Sequential`` exposes its children's entries under nested names (``"0.w"``, ``"3.b"``).

Conv2D, MaxPool2D and RNN call :func:`fastlayers.conv2d`, :func:`fastlayers.max_pool2d` and
:func:`fastlayers.rnn` (and their backwards), so they run on the backend the dispatch picks, or
on the one given as ``backend``. Dense, ReLU, Flatten and Embedding are a matrix product or a
gather: they use the NumPy reference on every backend. Parameters live in host memory (NumPy
arrays); layers that keep their parameters on a GPU are not implemented.

Initialisation: He (Kaiming) normal for Conv2D and Dense (both are followed by ReLU in the usual
stacks), Xavier uniform for the RNN input weights and an orthogonal recurrent matrix (its
singular values are 1, so the state neither explodes nor vanishes at the start), N(0, 1) for
Embedding, zero biases. ``rng`` is a seed or a ``numpy.random.Generator``.
"""
from __future__ import annotations

import numpy as np

from . import _dispatch, reference
from ._params import FLOAT_DTYPES, pair
from .functional import (
    conv2d,
    conv2d_backward,
    gru,
    gru_backward,
    lstm,
    lstm_backward,
    max_pool2d,
    max_pool2d_backward,
    rnn,
    rnn_backward,
)

__all__ = ["Layer", "Conv2D", "MaxPool2D", "Flatten", "Dense", "ReLU", "RNN", "LSTM", "GRU", "Embedding", "Sequential"]


def _float_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _shape(a):
    return "x".join(str(s) for s in a.shape)


class Layer:
    """Base class: parameter bookkeeping, dtype checks, repr, save/load.

    Parameters
    ----------
    backend : "numpy", "cpu", "cuda" or None
        Backend of the layer's kernels; None lets the dispatch choose (see ``fastlayers.set_backend``).
    dtype : float32 or float64
        dtype of the parameters; inputs must have it (fastlayers never casts silently).
    rng : None, int or numpy.random.Generator
        Source of the initial parameters (unused by layers without parameters).
    """

    def __init__(self, backend=None, dtype=np.float32, rng=None):
        self._configure(backend, dtype)
        self.params = {}
        self.grads = {}

    def _configure(self, backend, dtype):
        if backend is not None:
            _dispatch._check_backend_name(backend)
        self.backend = backend
        self.dtype = _float_dtype(dtype)
        self._cache = None

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    @property
    def num_parameters(self):
        return int(sum(p.size for p in self.params.values()))

    def _check_input(self, x, ndim=None, name="x"):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{type(self).__name__} input {name} must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(
                f"{type(self).__name__} input {name} must have the layer's dtype {self.dtype}, got {x.dtype}; "
                f"cast with {name}.astype(numpy.{self.dtype})"
            )
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{type(self).__name__} input {name} must be {ndim}-D, got shape {x.shape}")

    def _saved(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._cache

    # ------------------------------------------------------------------ persistence

    def save(self, path):
        """Write every parameter to one ``.npz`` file (names as in ``params``)."""
        np.savez(path, **self.params)

    def load(self, path):
        """Read parameters written by :meth:`save` into this layer's arrays (in place, so an
        optimiser keeps tracking them). Names, shapes and dtypes must match exactly."""
        with np.load(path) as data:
            stored = {name: data[name] for name in data.files}
        params = self.params
        if set(stored) != set(params):
            missing, extra = sorted(set(params) - set(stored)), sorted(set(stored) - set(params))
            raise ValueError(f"{path} does not match {type(self).__name__}: missing {missing}, unexpected {extra}")
        for name, value in stored.items():
            p = params[name]
            if value.shape != p.shape or value.dtype != p.dtype:
                raise ValueError(
                    f"parameter {name!r} in {path} has shape {value.shape} and dtype {value.dtype}, "
                    f"the layer's has {p.shape} and {p.dtype}"
                )
        for name, value in stored.items():
            np.copyto(params[name], value)

    # ------------------------------------------------------------------ repr

    def _describe(self):
        return ""

    def __repr__(self):
        shapes = ", ".join(f"{name}={_shape(p)}" for name, p in self.params.items())
        parts = [s for s in (self._describe(), shapes) if s]
        count = f", {self.num_parameters} parameters" if self.params else ""
        return f"{type(self).__name__}({', '.join(parts)}{count})"


class Conv2D(Layer):
    """2-D convolution layer on NCHW batches; see :func:`fastlayers.conv2d` for the parameters.

    ``params``: ``w`` (out_channels, in_channels // groups, KH, KW) and, if ``bias``, ``b`` (out_channels,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, backend=None, dtype=np.float32, rng=None):
        super().__init__(backend, dtype)
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.groups = _positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        # Check stride/padding/dilation now rather than at the first forward.
        pair("stride", stride, 1)
        pair("dilation", dilation, 1)
        if not isinstance(padding, str):
            pair("padding", padding, 0)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        rng = np.random.default_rng(rng)
        self.params["w"] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(self.dtype)
        if bias:
            self.params["b"] = np.zeros(out_channels, dtype=self.dtype)

    def _conv_args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    backend=self.backend)

    def forward(self, x):
        self._check_input(x, 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2D input x must have {self.in_channels} channels (axis 1), got shape {x.shape}")
        self._cache = x
        return conv2d(x, self.params["w"], self.params.get("b"), **self._conv_args())

    def backward(self, dy):
        x = self._saved()
        dx, dw, db = conv2d_backward(dy, x, self.params["w"], **self._conv_args())
        self.grads = {"w": dw, "b": db} if "b" in self.params else {"w": dw}
        return dx

    def _describe(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        for name, default in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s


class MaxPool2D(Layer):
    """Max pooling on NCHW batches (no parameters); see :func:`fastlayers.max_pool2d`."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, backend=None, dtype=np.float32,
                 rng=None):
        super().__init__(backend, dtype, rng)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        self.ceil_mode = ceil_mode

    def forward(self, x):
        self._check_input(x, 4)
        y, indices = max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                return_indices=True, backend=self.backend)
        self._cache = (indices, x.shape)
        return y

    def backward(self, dy):
        indices, shape = self._saved()
        return max_pool2d_backward(dy, indices, shape, backend=self.backend)

    def _describe(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)), C order: the notes' "Flattening" slide."""

    def forward(self, x):
        self._check_input(x)
        self._cache = x.shape
        return reference.flatten(x)

    def backward(self, dy):
        return reference.flatten_backward(dy, self._saved())


class ReLU(Layer):
    """max(x, 0); the gradient at 0 is 0 (as in PyTorch)."""

    def forward(self, x):
        self._check_input(x)
        self._cache = x
        return reference.relu(x)

    def backward(self, dy):
        return reference.relu_backward(dy, self._saved())


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b`` on the last axis of x (..., in_features).

    ``params``: ``W`` (in_features, out_features) and, if ``bias``, ``b`` (out_features,)."""

    def __init__(self, in_features, out_features, bias=True, backend=None, dtype=np.float32, rng=None):
        super().__init__(backend, dtype)
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        rng = np.random.default_rng(rng)
        scale = np.sqrt(2.0 / in_features)
        self.params["W"] = (rng.standard_normal((in_features, out_features)) * scale).astype(self.dtype)
        if bias:
            self.params["b"] = np.zeros(out_features, dtype=self.dtype)

    def forward(self, x):
        self._check_input(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Dense input x must have {self.in_features} features on its last axis, got shape {x.shape}"
            )
        self._cache = x
        return reference.dense(x, self.params["W"], self.params.get("b"))

    def backward(self, dy):
        x = self._saved()
        dx, dW, db = reference.dense_backward(dy, x, self.params["W"])
        self.grads = {"W": dW, "b": db} if "b" in self.params else {"W": dW}
        return dx

    def _describe(self):
        return f"{self.in_features}, {self.out_features}"


class RNN(Layer):
    """Tanh RNN over a whole sequence: ``h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b)``.

    ``forward(x, h0=None)`` takes x (T, N, input_size), or (N, T, input_size) with
    ``batch_first=True``, and returns every hidden state in the same layout. ``backward(dhs)``
    takes dL/d(every state) and returns dL/dx; dL/dh0 is left in ``self.dh0`` (None when the
    forward started from zeros). ``params``: ``Wx`` (input_size, hidden_size), ``Wh``
    (hidden_size, hidden_size), ``b`` (hidden_size,)."""

    def __init__(self, input_size, hidden_size, batch_first=False, backend=None, dtype=np.float32, rng=None):
        super().__init__(backend, dtype)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.batch_first = bool(batch_first)
        rng = np.random.default_rng(rng)
        limit = np.sqrt(6.0 / (input_size + hidden_size))
        q, r = np.linalg.qr(rng.standard_normal((hidden_size, hidden_size)))
        q *= np.sign(np.diag(r))  # makes the orthogonal matrix uniformly distributed
        self.params["Wx"] = rng.uniform(-limit, limit, (input_size, hidden_size)).astype(self.dtype)
        self.params["Wh"] = q.astype(self.dtype)
        self.params["b"] = np.zeros(hidden_size, dtype=self.dtype)
        self.dh0 = None

    def _time_major(self, a):
        return a.swapaxes(0, 1) if self.batch_first else a

    def forward(self, x, h0=None):
        self._check_input(x, 3)
        if x.shape[2] != self.input_size:
            raise ValueError(f"RNN input x must have {self.input_size} features on its last axis, got shape {x.shape}")
        if h0 is not None:
            self._check_input(h0, 2, name="h0")
        x_seq = self._time_major(x)
        p = self.params
        hs = rnn(x_seq, h0, p["Wx"], p["Wh"], p["b"], backend=self.backend)
        self._cache = (x_seq, h0, hs)
        return self._time_major(hs)

    def backward(self, dhs):
        x_seq, h0, hs = self._saved()
        p = self.params
        dx, dh0, dWx, dWh, db = rnn_backward(self._time_major(dhs), x_seq, h0, p["Wx"], p["Wh"], hs,
                                             backend=self.backend)
        self.grads = {"Wx": dWx, "Wh": dWh, "b": db}
        self.dh0 = None if h0 is None else dh0
        return self._time_major(dx)

    def _describe(self):
        return f"{self.input_size}, {self.hidden_size}" + (", batch_first=True" if self.batch_first else "")


class _GatedRecurrent(Layer):
    """What LSTM and GRU share: layers stacked (``num_layers``), both directions
    (``bidirectional``), dropout between layers, the (T, N, features) or (N, T, features) layouts,
    PyTorch's parameter names. A subclass says how many gates it has, which states it carries and
    how one direction of one layer runs forward and backward."""

    gates = 0
    state_names = ()  # ("h",) or ("h", "c")
    bias_names = ()  # the subclass's bias parameters

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, backend=None, dtype=np.float32, rng=None):
        super().__init__(backend, dtype)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.training = True
        self._rng = np.random.default_rng(rng)
        # PyTorch's initialisation: every weight and bias uniform in +-1/sqrt(hidden_size).
        bound = 1 / np.sqrt(hidden_size)
        width = self.gates * hidden_size
        for layer in range(self.num_layers):
            fan_in = input_size if layer == 0 else hidden_size * self.directions
            for suffix in self._suffixes(layer):
                self.params["Wx" + suffix] = self._rng.uniform(-bound, bound, (fan_in, width)).astype(self.dtype)
                self.params["Wh" + suffix] = self._rng.uniform(-bound, bound, (hidden_size, width)).astype(self.dtype)
                if self.bias:
                    for name in self.bias_names:
                        self.params[name + suffix] = self._rng.uniform(-bound, bound, width).astype(self.dtype)

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer):
        """Parameter name suffixes of ``layer``'s directions, as PyTorch names them."""
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.directions]

    def train(self, mode=True):
        """Training mode (dropout between layers on) or, with ``mode=False``, evaluation."""
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _time_major(self, a):
        return a.swapaxes(0, 1) if self.batch_first else a

    def _check_state(self, name, s, N):
        shape = (self.num_layers * self.directions, N, self.hidden_size)
        self._check_input(s, 3, name=name)
        if s.shape != shape:
            raise ValueError(f"{type(self).__name__} {name} must have shape {shape} (num_layers * directions, N, "
                             f"hidden_size), got {s.shape}")

    def forward(self, x, state=None):
        """Run the stack over x (T, N, input_size), or (N, T, input_size) with ``batch_first``.

        ``state``: the initial states, each (num_layers * directions, N, hidden_size) as in
        PyTorch (``(h0, c0)`` for the LSTM, ``h0`` for the GRU), or None for zeros. Returns
        ``(output, final_state)``: output (T, N, directions * hidden_size) in x's layout, the
        final states shaped like the initial ones."""
        name = type(self).__name__
        self._check_input(x, 3)
        if x.shape[2] != self.input_size:
            raise ValueError(f"{name} input x must have {self.input_size} features on its last axis, "
                             f"got shape {x.shape}")
        x_seq = self._time_major(x)
        N = x_seq.shape[1]
        states = (state,) if len(self.state_names) == 1 else (state if state is not None else (None,) * 2)
        if len(states) != len(self.state_names):
            raise ValueError(f"{name} state must be a tuple {self.state_names} of arrays or None")
        for sname, s in zip(self.state_names, states):
            if s is not None:
                self._check_state(sname + "0", s, N)
        caches, finals = [], [[] for _ in self.state_names]
        inputs = x_seq
        for layer in range(self.num_layers):
            outs, layer_cache = [], []
            for d, suffix in enumerate(self._suffixes(layer)):
                k = layer * self.directions + d
                initial = tuple(None if s is None else s[k] for s in states)
                seq = inputs[::-1] if d else inputs
                result = self._run_forward(seq, initial, suffix)
                layer_cache.append((seq, initial, result))
                for f, r in zip(finals, result):
                    f.append(r[-1])
                outs.append(result[0][::-1] if d else result[0])
            output = np.concatenate(outs, axis=2) if self.bidirectional else outs[0]
            mask = None
            if self.dropout and self.training and layer < self.num_layers - 1:
                keep = 1 - self.dropout
                mask = (self._rng.random(output.shape) < keep).astype(self.dtype) / self.dtype.type(keep)
                output = output * mask
            caches.append((layer_cache, mask))
            inputs = output
        self._cache = (caches, states)
        final = tuple(np.stack(f) for f in finals)
        return self._time_major(inputs), final[0] if len(final) == 1 else final

    def backward(self, doutput, dstate=None):
        """dL/dx from dL/d(output) (in output's layout) and, optionally, dL/d(final states)
        (shaped and grouped like ``state``). Sets ``grads``; dL/d(initial states) is left in
        ``self.dstate`` (None where the forward started from zeros)."""
        caches, states = self._saved()
        H = self.hidden_size
        dfinal = (dstate,) if len(self.state_names) == 1 else (dstate if dstate is not None else (None,) * 2)
        grads, dinitial = {}, [[None] * (self.num_layers * self.directions) for _ in self.state_names]
        d_out = self._time_major(doutput)
        for layer in range(self.num_layers - 1, -1, -1):
            layer_cache, mask = caches[layer]
            if mask is not None:
                d_out = d_out * mask
            dx = None
            for d, suffix in enumerate(self._suffixes(layer)):
                k = layer * self.directions + d
                seq, initial, result = layer_cache[d]
                dhs = d_out[..., d * H:(d + 1) * H]
                douts = [dhs[::-1] if d else dhs] + [None] * (len(self.state_names) - 1)
                for i, df in enumerate(dfinal):  # the final states are the last step's (a copy: the
                    if df is not None:  # caller's doutput stays as it was)
                        douts[i] = np.zeros_like(result[i]) if douts[i] is None else douts[i].copy()
                        douts[i][-1] += df[k]
                dseq, dinit, layer_grads = self._run_backward(douts, seq, initial, result, suffix)
                grads.update(layer_grads)
                for i, g in enumerate(dinit):
                    dinitial[i][k] = None if initial[i] is None else g
                dseq = dseq[::-1] if d else dseq
                dx = dseq if dx is None else dx + dseq
            d_out = dx
        self.grads = grads
        self.dstate = tuple(None if s is None else np.stack(g) for s, g in zip(states, dinitial))
        if len(self.state_names) == 1:
            self.dstate = self.dstate[0]
        return self._time_major(d_out)

    def load_torch_state_dict(self, state_dict):
        """Copy the weights of a torch.nn.LSTM / torch.nn.GRU of the same configuration into this
        layer: ``Wx = weight_ih.T``, ``Wh = weight_hh.T`` and the biases (see the subclass).
        ``state_dict`` maps PyTorch's names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) to
        tensors or arrays; names, shapes and the presence of biases must match."""
        arrays = {name: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                  for name, v in state_dict.items()}
        expected = {f"{kind}_{part}{suffix}" for layer in range(self.num_layers) for suffix in self._suffixes(layer)
                    for kind in (("weight", "bias") if self.bias else ("weight",)) for part in ("ih", "hh")}
        if set(arrays) != expected:
            raise ValueError(f"state_dict does not match this {type(self).__name__}: missing "
                             f"{sorted(expected - set(arrays))}, unexpected {sorted(set(arrays) - expected)}")
        mapped = {}
        for layer in range(self.num_layers):
            for suffix in self._suffixes(layer):
                mapped["Wx" + suffix] = arrays["weight_ih" + suffix].T
                mapped["Wh" + suffix] = arrays["weight_hh" + suffix].T
                if self.bias:
                    mapped.update(self._map_torch_biases(arrays["bias_ih" + suffix], arrays["bias_hh" + suffix],
                                                         suffix))
        for name, value in mapped.items():
            if value.shape != self.params[name].shape:
                raise ValueError(f"{name} would get shape {value.shape} from the state_dict, the layer's is "
                                 f"{self.params[name].shape}")
        for name, value in mapped.items():
            np.copyto(self.params[name], value, casting="same_kind")

    def _describe(self):
        extras = [f"num_layers={self.num_layers}"] if self.num_layers > 1 else []
        extras += [f"{k}=True" for k in ("batch_first", "bidirectional") if getattr(self, k)]
        extras += ["bias=False"] if not self.bias else []
        extras += [f"dropout={self.dropout}"] if self.dropout else []
        return ", ".join([f"{self.input_size}, {self.hidden_size}", *extras])


class LSTM(_GatedRecurrent):
    """Multi-layer LSTM over a whole sequence, torch.nn.LSTM's equations and gate order
    (i, f, g, o); see :func:`fastlayers.lstm`.

    ``forward(x, state=None)`` returns ``(output, (h_n, c_n))`` as torch.nn.LSTM does.
    ``params`` per layer k and direction (suffix ``_l{k}``, ``_l{k}_reverse``): ``Wx``
    (features in, 4 * hidden_size) = ``weight_ih.T``, ``Wh`` (hidden_size, 4 * hidden_size) =
    ``weight_hh.T``, ``b`` (4 * hidden_size,) = ``bias_ih + bias_hh``."""

    gates = 4
    state_names = ("h", "c")
    bias_names = ("b",)

    def _run_forward(self, seq, initial, suffix):
        p = self.params
        return lstm(seq, *initial, p["Wx" + suffix], p["Wh" + suffix], p.get("b" + suffix), backend=self.backend)

    def _run_backward(self, douts, seq, initial, result, suffix):
        p = self.params
        dx, dh0, dc0, dWx, dWh, db = lstm_backward(*douts, seq, *initial, p["Wx" + suffix], p["Wh" + suffix],
                                                   p.get("b" + suffix), *result, backend=self.backend)
        grads = {"Wx" + suffix: dWx, "Wh" + suffix: dWh}
        if self.bias:
            grads["b" + suffix] = db
        return dx, (dh0, dc0), grads

    def _map_torch_biases(self, bias_ih, bias_hh, suffix):
        return {"b" + suffix: bias_ih + bias_hh}


class GRU(_GatedRecurrent):
    """Multi-layer GRU over a whole sequence, torch.nn.GRU's equations and gate order (r, z, n);
    see :func:`fastlayers.gru`.

    ``forward(x, h0=None)`` returns ``(output, h_n)`` as torch.nn.GRU does. ``params`` per layer
    and direction: ``Wx`` = ``weight_ih.T``, ``Wh`` = ``weight_hh.T``, ``bx`` = ``bias_ih``,
    ``bh`` = ``bias_hh`` (kept apart: the reset gate multiplies ``h @ Wh_n + bh_n``)."""

    gates = 3
    state_names = ("h",)
    bias_names = ("bx", "bh")

    def _run_forward(self, seq, initial, suffix):
        p = self.params
        hs = gru(seq, *initial, p["Wx" + suffix], p["Wh" + suffix], p.get("bx" + suffix), p.get("bh" + suffix),
                 backend=self.backend)
        return (hs,)

    def _run_backward(self, douts, seq, initial, result, suffix):
        p = self.params
        dx, dh0, dWx, dWh, dbx, dbh = gru_backward(douts[0], seq, *initial, p["Wx" + suffix], p["Wh" + suffix],
                                                   p.get("bx" + suffix), p.get("bh" + suffix), result[0],
                                                   backend=self.backend)
        grads = {"Wx" + suffix: dWx, "Wh" + suffix: dWh}
        if self.bias:
            grads.update({"bx" + suffix: dbx, "bh" + suffix: dbh})
        return dx, (dh0,), grads

    def _map_torch_biases(self, bias_ih, bias_hh, suffix):
        return {"bx" + suffix: bias_ih, "bh" + suffix: bias_hh}


class Embedding(Layer):
    """Lookup table: integer ids of any shape -> their rows of ``W`` (num_embeddings, embedding_dim).

    ``backward(dy)`` sets ``grads["W"]`` (rows of repeated ids add up) and returns None: integer
    ids have no gradient."""

    def __init__(self, num_embeddings, embedding_dim, backend=None, dtype=np.float32, rng=None):
        super().__init__(backend, dtype)
        self.num_embeddings = _positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        rng = np.random.default_rng(rng)
        self.params["W"] = rng.standard_normal((num_embeddings, embedding_dim)).astype(self.dtype)

    def forward(self, ids):
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding input ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(
                f"Embedding input ids must lie in [0, {self.num_embeddings}), got values in [{ids.min()}, {ids.max()}]"
            )
        self._cache = ids
        return self.params["W"][ids]

    def backward(self, dy):
        ids = self._saved()
        dW = np.zeros_like(self.params["W"])
        np.add.at(dW, ids.reshape(-1), dy.reshape(-1, self.embedding_dim))
        self.grads = {"W": dW}

    def _describe(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``params``/``grads`` hold every child's entries under ``"<index>.<name>"``. ``backend``, when
    given, is used by every child that was built with ``backend=None``. ``dtype`` is the
    children's (they must agree)."""

    def __init__(self, *layers, backend=None):
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential argument {i} must be a fastlayers layer, got {type(layer).__name__}")
        dtypes = {layer.dtype for layer in layers}
        if len(dtypes) > 1:
            raise TypeError(f"Sequential layers must share one dtype, got {sorted(str(d) for d in dtypes)}")
        self._configure(backend, dtypes.pop())  # no params/grads of its own: the children's
        self.layers = list(layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    @property
    def params(self):
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}

    @property
    def grads(self):
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.grads.items()}

    def _run(self, fn):
        if self.backend is None:
            return fn()
        with _dispatch.use_backend(self.backend):
            return fn()

    def forward(self, x):
        def run():
            out = x
            for layer in self.layers:
                out = layer.forward(out)
            return out

        return self._run(run)

    def backward(self, dy):
        def run():
            grad = dy
            for layer in reversed(self.layers):
                grad = layer.backward(grad)
            return grad

        return self._run(run)

    def __repr__(self):
        lines = [f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + f"\n)  # {self.num_parameters} parameters"
