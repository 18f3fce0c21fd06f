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
    max_pool2d,
    max_pool2d_backward,
    rnn,
    rnn_backward,
)

__all__ = ["Layer", "Conv2D", "MaxPool2D", "Flatten", "Dense", "ReLU", "RNN", "Embedding", "Sequential"]


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
