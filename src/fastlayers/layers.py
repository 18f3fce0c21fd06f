"""Layer objects: PyTorch-like constructors around the functional API, with PyTorch's gradient
semantics.

Every layer has ``forward(x)`` (also ``layer(x)``) and ``backward(dy)``, which returns dL/dx and
adds dL/d(parameter) into ``grads``:

* Each forward in training mode keeps a record of what its backward needs (its input, the
  pooling indices, ...), one record per call; each backward consumes the latest record. A layer
  called several times in one forward (a shared Dense, an Embedding also used for the output
  scores through :class:`TiedOutput`) thus goes back through every call, last call first, as
  backpropagation through a chain does, and the gradients of the calls add up.
* Gradients accumulate across backward calls until ``zero_grad()``, which also drops the records
  of forwards that were never gone back through.
* ``eval()`` mode (Dropout off, BatchNorm2d on its running statistics) and the ``no_grad()``
  context keep nothing: inference holds no memory for a backward. Unlike PyTorch, eval mode
  records nothing either, so there is no backward in eval mode.

``params`` maps names to the parameter arrays (assignment copies into the array, checked, so the
arrays an optimiser or a tied layer holds stay the ones trained); ``grads`` maps names to the
accumulated gradients. ``Sequential`` names its children's entries ``"<index>.<name>"``; a layer
placed several times is listed once, under its first index. ``state_dict()``/``load_state_dict()``
carry the parameters and the buffers (BatchNorm2d's running statistics); ``save``/``load`` write
and read them at exactly the path given.

Conv2D, MaxPool2D, RNN, LSTM and GRU call :func:`fastlayers.conv2d`, :func:`fastlayers.max_pool2d`,
:func:`fastlayers.rnn`, :func:`fastlayers.lstm` and :func:`fastlayers.gru` (and their backwards),
so they run on the backend the dispatch picks, or on the one given as ``backend``. Dense and
TiedOutput, ReLU and BatchNorm2d call :func:`fastlayers.linear`, :func:`fastlayers.relu` and
:func:`fastlayers.batch_norm`, which have host kernels only: with the cuda backend they run on the
CPU's. Embedding, Tanh, Sigmoid, Flatten and Dropout are NumPy on every backend. Parameters live in host memory (NumPy
arrays): layers that keep their parameters on a GPU are not implemented.

Initialisation is PyTorch's default (see :mod:`fastlayers.init` for Kaiming, Xavier and the
others): Conv2D and Dense weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), RNN weights and
bias U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), Embedding N(0, 1), BatchNorm2d scale 1 and
shift 0. ``rng`` is a seed or a ``numpy.random.Generator``.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import (TYPE_CHECKING, Any, BinaryIO, Callable, Dict, ItemsView, Iterator, KeysView, List, Optional, Tuple,
                    TypeVar, Union, ValuesView, cast)

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _dispatch, init, reference
from .ops._checks import FLOAT_DTYPES, check_choice, pair
from .ops.conv2d import PADDING_MODES
from .ops.rnn import NONLINEARITIES
from .functional import (
    IntOrPair,
    batch_norm,
    batch_norm_backward,
    conv2d,
    conv2d_backward,
    gru,
    gru_backward,
    linear,
    linear_backward,
    lstm,
    lstm_backward,
    max_pool2d,
    max_pool2d_backward,
    relu,
    relu_backward,
    rnn,
    rnn_backward,
)

__all__ = ["no_grad", "is_grad_enabled", "Layer", "Conv2D", "MaxPool2D", "Flatten", "Dense", "ReLU", "Tanh",
           "Sigmoid", "Dropout", "BatchNorm2d", "RNN", "LSTM", "GRU", "Embedding", "TiedOutput", "Sequential"]

Seed = Union[None, int, np.random.Generator]  # rng: a seed or a generator
State = Union[None, np.ndarray, Tuple[Optional[np.ndarray], ...]]  # LSTM (h, c), GRU h, or None
_L = TypeVar("_L", bound="Layer")

_grad_enabled = contextvars.ContextVar("fastlayers_grad_enabled", default=True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Within this context (per thread and per asyncio task) no layer keeps a record for a
    backward, as ``torch.no_grad()``."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


def is_grad_enabled() -> bool:
    """False inside :func:`no_grad`."""
    return _grad_enabled.get()


def _float_dtype(dtype: DTypeLike) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _shape(a: np.ndarray) -> str:
    return "x".join(str(s) for s in a.shape)


class ParameterDict(Mapping[str, np.ndarray]):
    """A live view of a model's parameters by name. ``view[name] = value`` copies ``value`` into
    the parameter's array, which keeps its dtype (float64 values are rounded into a float32
    model): the arrays an optimiser or a tied layer holds stay the ones trained."""

    def __init__(self, named: Callable[[], Dict[str, np.ndarray]]) -> None:
        self._named = named

    def __getitem__(self, name: str) -> np.ndarray:
        return self._named()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._named())

    def __len__(self) -> int:
        return len(self._named())

    def keys(self) -> KeysView[str]:
        return self._named().keys()

    def items(self) -> ItemsView[str, np.ndarray]:
        return self._named().items()

    def values(self) -> ValuesView[np.ndarray]:
        return self._named().values()

    def __setitem__(self, name: str, value: ArrayLike) -> None:
        params = self._named()
        if name not in params:
            raise KeyError(f"no parameter {name!r}; the parameters are {list(params)}")
        target = params[name]
        value = np.asarray(value)
        if value.shape != target.shape:
            raise ValueError(f"parameter {name!r} has shape {target.shape}, got a value of shape {value.shape}")
        np.copyto(target, value, casting="same_kind")

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: array({_shape(v)}, {v.dtype})" for k, v in self._named().items()) + "}"


class Layer:
    """Base class: records, gradient accumulation, modes, parameters, state dicts, dtype.

    Parameters
    ----------
    backend : "numpy", "cpu", "cuda" or None
        Backend of the layer's kernels; None lets the dispatch choose (see ``fastlayers.set_backend``).
    dtype : float32 or float64
        dtype of the parameters; inputs must have it (fastlayers never casts silently).
    rng : None, int or numpy.random.Generator
        Source of the initial parameters and of Dropout's masks (unused by the other layers; every
        layer takes it, so that one set of keyword arguments builds any of them).
    """

    def __init__(self, backend: Optional[str] = None, dtype: DTypeLike = np.float32, rng: Seed = None) -> None:
        self._configure(backend, dtype)
        self._parameters: Dict[str, np.ndarray] = {}
        self._buffers: Dict[str, np.ndarray] = {}
        self._grads: Dict[str, np.ndarray] = {}
        self._records: List[Any] = []
        self.training = True

    def _configure(self, backend: Optional[str], dtype: DTypeLike) -> None:
        if backend is not None:
            _dispatch._check_backend_name(backend)
        self.backend = backend
        self.dtype = _float_dtype(dtype)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    @property
    def host_backend(self) -> str:
        """The backend of the layers whose ops have host kernels only (Dense, ReLU, BatchNorm2d): this
        layer's if it is a host one, else (cuda, or none given) the host backend the dispatch would
        choose, which a surrounding ``use_backend("cuda")`` must not override."""
        return _dispatch.host_backend(self.backend)

    if TYPE_CHECKING:  # every layer defines them, with its own arguments
        def forward(self, *args: Any, **kwargs: Any) -> Any: ...

        def backward(self, *args: Any, **kwargs: Any) -> Any: ...

    # ------------------------------------------------------------------ records and gradients

    @property
    def recording(self) -> bool:
        """Whether a forward now keeps a record for its backward (training mode, outside no_grad)."""
        return self.training and _grad_enabled.get()

    def _record(self, record: Any) -> None:
        if self.recording:
            self._records.append(record)

    def _last_record(self) -> Any:
        if not self._records:
            raise RuntimeError(
                f"{type(self).__name__}.backward has no forward to go back through: each forward in training "
                f"mode (outside fastlayers.no_grad()) is gone back through by one backward, last forward first")
        return self._records.pop()

    def _accumulate(self, name: str, grad: ArrayLike) -> None:
        if name in self._grads:
            self._grads[name] += grad
        else:
            self._grads[name] = np.array(grad, dtype=self.dtype)

    def zero_grad(self) -> None:
        """Forget the gradients (they start again from the next backward) and the records of
        forwards that no backward went through."""
        for layer in self._unique_layers():
            layer._grads.clear()
            layer._records.clear()

    # ------------------------------------------------------------------ structure

    def children(self) -> List[Layer]:
        """The layers this one is made of (each once)."""
        return []

    def _unique_layers(self) -> List[Layer]:
        seen, out = set(), []
        stack = [self]
        while stack:
            layer = stack.pop(0)
            if id(layer) not in seen:
                seen.add(id(layer))
                out.append(layer)
                stack = list(layer.children()) + stack
        return out

    def _named(self, attribute: str, prefix: str = "") -> Dict[str, np.ndarray]:
        """(name, array) of ``attribute`` ("_parameters", "_buffers" or "_grads") of this layer and
        its children, each array once (the first name it has)."""
        out, seen = {}, set()
        for name, array in self._named_items(attribute, prefix):
            if id(array) not in seen:
                seen.add(id(array))
                out[name] = array
        return out

    def _named_items(self, attribute: str, prefix: str) -> Iterator[Tuple[str, np.ndarray]]:
        yield from ((prefix + name, a) for name, a in getattr(self, attribute).items())

    def named_parameters(self) -> Iterator[Tuple[str, np.ndarray]]:
        """(name, array) pairs of every trainable parameter, each once."""
        return iter(self._named("_parameters").items())

    def parameters(self) -> Iterator[np.ndarray]:
        return iter(self._named("_parameters").values())

    def named_buffers(self) -> Iterator[Tuple[str, np.ndarray]]:
        """(name, array) pairs of the state that is saved but not trained (running statistics)."""
        return iter(self._named("_buffers").items())

    @property
    def params(self) -> ParameterDict:
        return ParameterDict(lambda: self._named("_parameters"))

    @property
    def grads(self) -> Mapping[str, np.ndarray]:
        """Accumulated gradients by parameter name (only parameters that a backward reached)."""
        return MappingProxyType(self._named("_grads"))

    @property
    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # ------------------------------------------------------------------ modes and dtype

    def train(self: _L, mode: bool = True) -> _L:
        """Training mode (the default) for this layer and its children; returns self."""
        for layer in self._unique_layers():
            layer.training = bool(mode)
        return self

    def eval(self: _L) -> _L:
        """Evaluation mode: Dropout passes its input through, BatchNorm2d uses its running
        statistics, and no forward keeps a record. Returns self."""
        return self.train(False)

    def to(self: _L, dtype: DTypeLike) -> _L:
        """Convert every parameter and buffer to ``dtype`` (float32 or float64); drops gradients
        and records. Returns self. (Create optimisers after converting.)"""
        dtype = _float_dtype(dtype)
        for layer in self._unique_layers():
            for table in (layer._parameters, layer._buffers):
                for name, array in table.items():
                    if array.dtype.kind == "f":
                        table[name] = array.astype(dtype)
            layer.dtype = dtype
        self.zero_grad()
        return self

    def _check_input(self, x: Any, ndim: Optional[int] = None, name: str = "x") -> None:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{type(self).__name__} input {name} must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(
                f"{type(self).__name__} input {name} must have the layer's dtype {self.dtype}, got {x.dtype}; "
                f"cast with {name}.astype(numpy.{self.dtype})"
            )
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{type(self).__name__} input {name} must be {ndim}-D, got shape {x.shape}")

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of every parameter and buffer by name (a checkpoint that later training does not
        change)."""
        state = {name: a.copy() for name, a in self._named("_parameters").items()}
        state.update((name, a.copy()) for name, a in self._named("_buffers").items())
        return state

    def load_state_dict(self, state: Mapping[str, ArrayLike], strict: bool = True) -> Tuple[List[str], List[str]]:
        """Copy ``state`` (from :meth:`state_dict`) into this model's arrays, in place.

        With ``strict`` the names must match exactly; otherwise names missing on either side are
        skipped and returned as ``(missing, unexpected)``. Shapes and dtypes must match in either
        case (convert a model with :meth:`to` first)."""
        targets = {**self._named("_parameters"), **self._named("_buffers")}
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if strict and (missing or unexpected):
            raise ValueError(f"state dict does not match {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        for name in targets.keys() & state.keys():
            value, target = np.asarray(state[name]), targets[name]
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(f"state dict entry {name!r} has shape {value.shape} and dtype {value.dtype}, "
                                 f"the model's has {target.shape} and {target.dtype}")
        for name in targets.keys() & state.keys():
            np.copyto(targets[name], state[name])
        return missing, unexpected

    def save(self, file: Union[str, os.PathLike, BinaryIO]) -> None:
        """Write :meth:`state_dict` as an ``.npz`` archive to ``file``: exactly that path (no
        suffix added) or an open binary file."""
        if hasattr(file, "write"):
            np.savez(file, **self.state_dict())  # type: ignore[arg-type]  # numpy's stub: allow_pickle
        else:
            with open(file, "wb") as f:
                np.savez(f, **self.state_dict())  # type: ignore[arg-type]  # numpy's stub: allow_pickle

    def load(self, file: Union[str, os.PathLike, BinaryIO], strict: bool = True) -> Tuple[List[str], List[str]]:
        """Read what :meth:`save` wrote (a path or an open binary file) with :meth:`load_state_dict`."""
        with np.load(file) as data:
            state = {name: data[name] for name in data.files}
        return self.load_state_dict(state, strict=strict)

    # ------------------------------------------------------------------ repr

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={_shape(p)}" for name, p in self._parameters.items())
        parts = [s for s in (self._describe(), shapes) if s]
        count = f", {self.num_parameters} parameters" if self._parameters else ""
        return f"{type(self).__name__}({', '.join(parts)}{count})"


def _uniform_fan_in(array: np.ndarray, fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """PyTorch's default for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
    return init.uniform_(array, -bound, bound, rng)


class Conv2D(Layer):
    """2-D convolution layer on NCHW batches; see :func:`fastlayers.conv2d` for the parameters.

    ``params``: ``w`` (out_channels, in_channels // groups, KH, KW) and, if ``bias``, ``b`` (out_channels,).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding: Union[IntOrPair, str] = 0, dilation: IntOrPair = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", backend: Optional[str] = None, dtype: DTypeLike = np.float32,
                 rng: Seed = None) -> None:
        super().__init__(backend, dtype)
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.groups = _positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.padding_mode = check_choice("padding_mode", padding_mode, PADDING_MODES)
        # Check stride/padding/dilation now rather than at the first forward.
        pair("stride", stride, 1)
        pair("dilation", dilation, 1)
        if not isinstance(padding, str):
            pair("padding", padding, 0)
        rng = np.random.default_rng(rng)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._parameters["w"] = _uniform_fan_in(np.empty(shape, self.dtype), self.fans("w")[0], rng)
        if bias:
            self._parameters["b"] = _uniform_fan_in(np.empty(out_channels, self.dtype), self.fans("w")[0], rng)

    def fans(self, name: str) -> Tuple[int, int]:
        """(fan_in, fan_out) of parameter ``name``, for :mod:`fastlayers.init`."""
        taps = self.kernel_size[0] * self.kernel_size[1]
        return self.in_channels // self.groups * taps, self.out_channels // self.groups * taps

    def _conv_args(self) -> Dict[str, Any]:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    padding_mode=self.padding_mode, backend=self.backend)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x, 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2D input x must have {self.in_channels} channels (axis 1), got shape {x.shape}")
        w = self._parameters["w"]
        self._record((x, w))
        return conv2d(x, w, self._parameters.get("b"), **self._conv_args())

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, w = self._last_record()
        dx, dw, db = conv2d_backward(dy, x, w, **self._conv_args())
        self._accumulate("w", dw)
        if "b" in self._parameters:
            self._accumulate("b", db)
        return dx

    def _describe(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        for name, default in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1), ("padding_mode", "zeros")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s


class MaxPool2D(Layer):
    """Max pooling on NCHW batches (no parameters); see :func:`fastlayers.max_pool2d`."""

    def __init__(self, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: IntOrPair = 0,
                 ceil_mode: bool = False, backend: Optional[str] = None, dtype: DTypeLike = np.float32,
                 rng: Seed = None) -> None:
        super().__init__(backend, dtype)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        self.ceil_mode = ceil_mode

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x, 4)
        pool: Dict[str, Any] = dict(ceil_mode=self.ceil_mode, backend=self.backend)
        if not self.recording:
            return cast(np.ndarray, max_pool2d(x, self.kernel_size, self.stride, self.padding, return_indices=False,
                                               **pool))
        y, indices = max_pool2d(x, self.kernel_size, self.stride, self.padding, return_indices=True, **pool)
        self._record((indices, x.shape))
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        indices, shape = self._last_record()
        return max_pool2d_backward(dy, indices, shape, backend=self.backend)

    def _describe(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)), C order: the notes' "Flattening" slide."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        self._record(x.shape)
        return reference.flatten(x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return reference.flatten_backward(dy, self._last_record())


class ReLU(Layer):
    """max(x, 0); the gradient at 0 is 0 (as in PyTorch). See :func:`fastlayers.relu`."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        self._record(x)
        return relu(x, backend=self.host_backend)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return relu_backward(dy, self._last_record(), backend=self.host_backend)


class Tanh(Layer):
    """tanh(x); its backward uses the output: dL/dx = dy * (1 - y^2)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        y = np.tanh(x)
        self._record(y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._last_record()
        return dy * (1 - y * y)


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), without overflow for any x; dL/dx = dy * y * (1 - y)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        e = np.exp(-np.abs(x))  # in (0, 1]: exp never overflows
        y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        self._record(y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._last_record()
        return dy * y * (1 - y)


class Dropout(Layer):
    """In training mode, zero each element with probability ``p`` and scale the others by
    1 / (1 - p), so the expected output is the input (as ``torch.nn.Dropout``); in eval mode, the
    identity. ``rng`` draws the masks."""

    def __init__(self, p: float = 0.5, backend: Optional[str] = None, dtype: DTypeLike = np.float32,
                 rng: Seed = None) -> None:
        super().__init__(backend, dtype)
        p = float(p)
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout probability p must lie in [0, 1], got {p}")
        self.p = p
        self.rng = np.random.default_rng(rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        if not self.training or self.p == 0:
            self._record(None)
            return x
        keep = self.rng.random(x.shape) >= self.p
        scale = np.zeros((), x.dtype) if self.p == 1 else x.dtype.type(1 / (1 - self.p))
        mask = keep * scale
        self._record(mask)
        return x * mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        mask = self._last_record()
        return dy if mask is None else dy * mask

    def _describe(self) -> str:
        return f"p={self.p}"


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel of NCHW input, as ``torch.nn.BatchNorm2d``.

    Training mode normalises with the batch's mean and (biased) variance and updates the running
    statistics ``running_mean``/``running_var`` (buffers; the unbiased variance, weight
    ``momentum``); eval mode normalises with the running statistics. ``params``: ``w`` (scale,
    ones) and ``b`` (shift, zeros), if ``affine``. Statistics are accumulated in float64."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 backend: Optional[str] = None, dtype: DTypeLike = np.float32, rng: Seed = None) -> None:
        super().__init__(backend, dtype)
        self.num_features = _positive_int("num_features", num_features)
        self.eps, self.momentum = float(eps), float(momentum)
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if affine:
            self._parameters["w"] = np.ones(num_features, self.dtype)
            self._parameters["b"] = np.zeros(num_features, self.dtype)
        self._buffers["running_mean"] = np.zeros(num_features, self.dtype)
        self._buffers["running_var"] = np.ones(num_features, self.dtype)
        self._buffers["num_batches_tracked"] = np.zeros((), np.int64)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x, 4)
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d input x must have {self.num_features} channels (axis 1), got shape {x.shape}")
        p, buffers = self._parameters, self._buffers
        y = batch_norm(x, buffers["running_mean"], buffers["running_var"], p.get("w"), p.get("b"), self.training,
                       self.momentum, self.eps, backend=self.host_backend)
        if self.training:
            buffers["num_batches_tracked"] += 1
            self._record(x)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._last_record()
        buffers = self._buffers
        dx, dw, db = batch_norm_backward(dy, x, buffers["running_mean"], buffers["running_var"],
                                         self._parameters.get("w"), True, self.eps, backend=self.host_backend)
        if "w" in self._parameters:
            self._accumulate("w", dw)
            self._accumulate("b", db)
        return dx

    def _describe(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b`` on the last axis of x (..., in_features).

    ``params``: ``W`` (in_features, out_features) and, if ``bias``, ``b`` (out_features,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, backend: Optional[str] = None,
                 dtype: DTypeLike = np.float32, rng: Seed = None) -> None:
        super().__init__(backend, dtype)
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        rng = np.random.default_rng(rng)
        self._parameters["W"] = _uniform_fan_in(np.empty((in_features, out_features), self.dtype), in_features, rng)
        if bias:
            self._parameters["b"] = _uniform_fan_in(np.empty(out_features, self.dtype), in_features, rng)

    def fans(self, name: str) -> Tuple[int, int]:
        """(fan_in, fan_out) of parameter ``name``, for :mod:`fastlayers.init`."""
        return self.in_features, self.out_features

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Dense input x must have {self.in_features} features on its last axis, got shape {x.shape}"
            )
        W = self._parameters["W"]
        self._record((x, W))
        return linear(x, W.T, self._parameters.get("b"), backend=self.host_backend)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, W = self._last_record()
        dx, dWt, db = linear_backward(dy, x, W.T, backend=self.host_backend)
        self._accumulate("W", dWt.T)
        if "b" in self._parameters:
            self._accumulate("b", db)
        return dx

    def _describe(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class RNN(Layer):
    """RNN over a whole sequence: ``h_t = act(x_t @ Wx + h_{t-1} @ Wh + b)``, act ``nonlinearity``
    ("tanh" or "relu", as in ``torch.nn.RNN``).

    ``forward(x, h0=None)`` takes x (T, N, input_size), or (N, T, input_size) with
    ``batch_first=True``, and returns every hidden state in the same layout. ``backward(dhs)``
    takes dL/d(every state) and returns dL/dx; dL/dh0 of that call is left in ``self.dh0`` (None
    when the forward started from zeros). ``params``: ``Wx`` (input_size, hidden_size), ``Wh``
    (hidden_size, hidden_size), ``b`` (hidden_size,): one bias where PyTorch has two."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", batch_first: bool = False,
                 backend: Optional[str] = None, dtype: DTypeLike = np.float32, rng: Seed = None) -> None:
        super().__init__(backend, dtype)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.batch_first = bool(batch_first)
        rng = np.random.default_rng(rng)
        for name, shape in (("Wx", (input_size, hidden_size)), ("Wh", (hidden_size, hidden_size)),
                            ("b", (hidden_size,))):
            self._parameters[name] = _uniform_fan_in(np.empty(shape, self.dtype), hidden_size, rng)
        self.dh0: Optional[np.ndarray] = None

    def fans(self, name: str) -> Tuple[int, int]:
        """(fan_in, fan_out) of parameter ``name``, for :mod:`fastlayers.init`."""
        return (self.input_size if name == "Wx" else self.hidden_size), self.hidden_size

    def _time_major(self, a: np.ndarray) -> np.ndarray:
        return a.swapaxes(0, 1) if self.batch_first else a

    def forward(self, x: np.ndarray, h0: Optional[np.ndarray] = None) -> np.ndarray:
        self._check_input(x, 3)
        if x.shape[2] != self.input_size:
            raise ValueError(f"RNN input x must have {self.input_size} features on its last axis, got shape {x.shape}")
        if h0 is not None:
            self._check_input(h0, 2, name="h0")
        x_seq = self._time_major(x)
        p = self._parameters
        hs = rnn(x_seq, h0, p["Wx"], p["Wh"], p["b"], self.nonlinearity, backend=self.backend)
        self._record((x_seq, h0, hs, p["Wx"], p["Wh"]))
        return self._time_major(hs)

    def backward(self, dhs: np.ndarray) -> np.ndarray:
        x_seq, h0, hs, Wx, Wh = self._last_record()
        dx, dh0, dWx, dWh, db = rnn_backward(self._time_major(dhs), x_seq, h0, Wx, Wh, hs, self.nonlinearity,
                                             backend=self.backend)
        for name, grad in (("Wx", dWx), ("Wh", dWh), ("b", db)):
            self._accumulate(name, grad)
        self.dh0 = None if h0 is None else dh0
        return self._time_major(dx)

    def _describe(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s + (", batch_first=True" if self.batch_first else "")


class _GatedRecurrent(Layer):
    """What LSTM and GRU share: layers stacked (``num_layers``), both directions
    (``bidirectional``), dropout between layers, the (T, N, features) or (N, T, features) layouts,
    PyTorch's parameter names. A subclass says how many gates it has, which states it carries and
    how one direction of one layer runs forward and backward."""

    gates = 0
    state_names: Tuple[str, ...] = ()  # ("h",) or ("h", "c")
    bias_names: Tuple[str, ...] = ()  # the subclass's bias parameters
    dstate: State  # set by backward

    if TYPE_CHECKING:  # each subclass defines them
        # The result: every step's states, then the forward's GateWorkspace (None when not recording).
        def _run_forward(self, seq: np.ndarray, initial: Tuple[Optional[np.ndarray], ...],
                         suffix: str) -> Tuple[Any, ...]: ...

        def _run_backward(self, douts: List[Optional[np.ndarray]], seq: np.ndarray,
                          initial: Tuple[Optional[np.ndarray], ...], result: Tuple[Any, ...],
                          suffix: str) -> Tuple[np.ndarray, Tuple[np.ndarray, ...], Dict[str, np.ndarray]]: ...

        def _map_torch_biases(self, bias_ih: np.ndarray, bias_hh: np.ndarray, suffix: str) -> Dict[str, np.ndarray]: ...

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 backend: Optional[str] = None, dtype: DTypeLike = np.float32, rng: Seed = None) -> None:
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
        self._rng = np.random.default_rng(rng)
        # PyTorch's initialisation: every weight and bias uniform in +-1/sqrt(hidden_size).
        bound = 1 / np.sqrt(hidden_size)
        width = self.gates * hidden_size
        for layer in range(self.num_layers):
            fan_in = input_size if layer == 0 else hidden_size * self.directions
            for suffix in self._suffixes(layer):
                self._parameters["Wx" + suffix] = self._rng.uniform(-bound, bound, (fan_in, width)).astype(self.dtype)
                self._parameters["Wh" + suffix] = self._rng.uniform(-bound, bound, (hidden_size, width)).astype(self.dtype)
                if self.bias:
                    for name in self.bias_names:
                        self._parameters[name + suffix] = self._rng.uniform(-bound, bound, width).astype(self.dtype)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer: int) -> List[str]:
        """Parameter name suffixes of ``layer``'s directions, as PyTorch names them."""
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.directions]

    def _time_major(self, a: np.ndarray) -> np.ndarray:
        return a.swapaxes(0, 1) if self.batch_first else a

    def _check_state(self, name: str, s: np.ndarray, N: int) -> None:
        shape = (self.num_layers * self.directions, N, self.hidden_size)
        self._check_input(s, 3, name=name)
        if s.shape != shape:
            raise ValueError(f"{type(self).__name__} {name} must have shape {shape} (num_layers * directions, N, "
                             f"hidden_size), got {s.shape}")

    def forward(self, x: np.ndarray, state: State = None) -> Tuple[np.ndarray, State]:
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
        caches: List[Any] = []
        finals: List[List[np.ndarray]] = [[] for _ in self.state_names]
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
        self._record((caches, states))
        final = tuple(np.stack(f) for f in finals)
        return self._time_major(inputs), final[0] if len(final) == 1 else final

    def backward(self, doutput: np.ndarray, dstate: State = None) -> np.ndarray:
        """dL/dx from dL/d(output) (in output's layout) and, optionally, dL/d(final states)
        (shaped and grouped like ``state``). Adds into ``grads``; dL/d(initial states) is left in
        ``self.dstate`` (None where the forward started from zeros)."""
        caches, states = self._last_record()
        H = self.hidden_size
        dfinal = (dstate,) if len(self.state_names) == 1 else (dstate if dstate is not None else (None,) * 2)
        grads: Dict[str, np.ndarray] = {}
        dinitial: List[List[Any]] = [[None] * (self.num_layers * self.directions) for _ in self.state_names]
        d_out: Any = self._time_major(doutput)
        for layer in range(self.num_layers - 1, -1, -1):
            layer_cache, mask = caches[layer]
            if mask is not None:
                d_out = d_out * mask
            dx = None
            for d, suffix in enumerate(self._suffixes(layer)):
                k = layer * self.directions + d
                seq, initial, result = layer_cache[d]
                dhs = d_out[..., d * H:(d + 1) * H]
                douts: List[Any] = [dhs[::-1] if d else dhs] + [None] * (len(self.state_names) - 1)
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
        for name, grad in grads.items():
            self._accumulate(name, grad)
        self.dstate = tuple(None if s is None else np.stack(g) for s, g in zip(states, dinitial))
        if len(self.state_names) == 1:
            self.dstate = self.dstate[0]
        return self._time_major(d_out)

    def load_torch_state_dict(self, state_dict: Mapping[str, Any]) -> None:
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
            if value.shape != self._parameters[name].shape:
                raise ValueError(f"{name} would get shape {value.shape} from the state_dict, the layer's is "
                                 f"{self._parameters[name].shape}")
        for name, value in mapped.items():
            np.copyto(self._parameters[name], value, casting="same_kind")

    def _describe(self) -> str:
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
        """(output, cell, workspace): the gates are kept (GateWorkspace) when a backward may follow."""
        p = self._parameters
        results = lstm(seq, *initial, p["Wx" + suffix], p["Wh" + suffix], p.get("b" + suffix),
                       return_workspace=self.recording, backend=self.backend)
        return results if self.recording else (*results, None)

    def _run_backward(self, douts, seq, initial, result, suffix):
        p = self._parameters
        *states, workspace = result
        dx, dh0, dc0, dWx, dWh, db = lstm_backward(*douts, seq, *initial, p["Wx" + suffix], p["Wh" + suffix],
                                                   p.get("b" + suffix), *states, workspace=workspace,
                                                   backend=self.backend)
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
    and direction: ``Wx`` = ``weight_ih.T``, ``Wh`` = ``weight_hh.T``, ``bias_ih`` and
    ``bias_hh`` as PyTorch's (kept apart: the reset gate multiplies ``h @ Wh_n + bias_hh_n``)."""

    gates = 3
    state_names = ("h",)
    bias_names = ("bias_ih", "bias_hh")

    def _run_forward(self, seq, initial, suffix):
        """(output, workspace): the gates are kept (GateWorkspace) when a backward may follow."""
        p = self._parameters
        results = gru(seq, *initial, p["Wx" + suffix], p["Wh" + suffix], p.get("bias_ih" + suffix),
                      p.get("bias_hh" + suffix), return_workspace=self.recording, backend=self.backend)
        return results if self.recording else (results, None)

    def _run_backward(self, douts, seq, initial, result, suffix):
        p = self._parameters
        output, workspace = result
        dx, dh0, dWx, dWh, dbias_ih, dbias_hh = gru_backward(
            douts[0], seq, *initial, p["Wx" + suffix], p["Wh" + suffix], p.get("bias_ih" + suffix),
            p.get("bias_hh" + suffix), output, workspace=workspace, backend=self.backend)
        grads = {"Wx" + suffix: dWx, "Wh" + suffix: dWh}
        if self.bias:
            grads.update({"bias_ih" + suffix: dbias_ih, "bias_hh" + suffix: dbias_hh})
        return dx, (dh0,), grads

    def _map_torch_biases(self, bias_ih, bias_hh, suffix):
        return {"bias_ih" + suffix: bias_ih, "bias_hh" + suffix: bias_hh}


class Embedding(Layer):
    """Lookup table: integer ids of any shape -> their rows of ``W`` (num_embeddings, embedding_dim).

    ``backward(dy)`` adds into ``grads["W"]`` (rows of repeated ids add up) and returns None:
    integer ids have no gradient. :class:`TiedOutput` reuses ``W`` for output scores."""

    def __init__(self, num_embeddings: int, embedding_dim: int, backend: Optional[str] = None,
                 dtype: DTypeLike = np.float32, rng: Seed = None) -> None:
        super().__init__(backend, dtype)
        self.num_embeddings = _positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        self._parameters["W"] = init.normal_(np.empty((num_embeddings, embedding_dim), self.dtype),
                                             rng=np.random.default_rng(rng))

    def forward(self, ids: ArrayLike) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding input ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(
                f"Embedding input ids must lie in [0, {self.num_embeddings}), got values in [{ids.min()}, {ids.max()}]"
            )
        self._record(ids)
        return self._parameters["W"][ids]

    def backward(self, dy: np.ndarray) -> None:
        ids = self._last_record()
        dW = np.zeros_like(self._parameters["W"])
        np.add.at(dW, ids.reshape(-1), dy.reshape(-1, self.embedding_dim))
        self._accumulate("W", dW)

    def _describe(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class TiedOutput(Layer):
    """Scores against every row of an :class:`Embedding`'s table, ``y = h @ W.T`` (..., num_embeddings):
    weight tying, as in language models whose output layer shares the input embedding. The
    parameter is the embedding's (listed there, not here), and this layer's gradient adds into
    the embedding's ``grads["W"]``."""

    def __init__(self, embedding: Embedding) -> None:
        if not isinstance(embedding, Embedding):
            raise TypeError(f"TiedOutput needs an Embedding, got {type(embedding).__name__}")
        super().__init__(embedding.backend, embedding.dtype)
        self.embedding = embedding

    def children(self) -> List[Layer]:
        return [self.embedding]

    def forward(self, h: np.ndarray) -> np.ndarray:
        self._check_input(h, name="h")
        if h.ndim < 1 or h.shape[-1] != self.embedding.embedding_dim:
            raise ValueError(f"TiedOutput input h must have {self.embedding.embedding_dim} features on its last "
                             f"axis, got shape {h.shape}")
        W = self.embedding._parameters["W"]
        self._record((h, W))
        return linear(h, W, backend=self.host_backend)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        h, W = self._last_record()
        dh, dW, _ = linear_backward(dy, h, W, backend=self.host_backend)
        self.embedding._accumulate("W", dW)
        return dh

    def _named_items(self, attribute: str, prefix: str) -> Iterator[Tuple[str, np.ndarray]]:
        # the embedding's entries, under this layer's name unless the embedding came first
        return self.embedding._named_items(attribute, f"{prefix}embedding.")

    def _describe(self) -> str:
        return f"tied to Embedding({self.embedding.num_embeddings}, {self.embedding.embedding_dim})"


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``params``/``grads``/``state_dict`` hold every child's entries under ``"<index>.<name>"`` (a
    layer placed twice is listed once, at its first index). ``backend``, when given, is used by
    every child that was built with ``backend=None``. ``dtype`` is the children's (they must agree)."""

    def __init__(self, *layers: Layer, backend: Optional[str] = None) -> None:
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential argument {i} must be a fastlayers layer, got {type(layer).__name__}")
        dtypes = {layer.dtype for layer in layers}
        if len(dtypes) > 1:
            raise TypeError(f"Sequential layers must share one dtype, got {sorted(str(d) for d in dtypes)}")
        super().__init__(backend, dtypes.pop())  # no parameters of its own: the children's
        self.layers = list(layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def children(self) -> List[Layer]:
        return list({id(layer): layer for layer in self.layers}.values())

    def _named_items(self, attribute: str, prefix: str) -> Iterator[Tuple[str, np.ndarray]]:
        for i, layer in enumerate(self.layers):
            yield from layer._named_items(attribute, f"{prefix}{i}.")

    def _run(self, fn: Callable[[], Any]) -> Any:
        if self.backend is None:
            return fn()
        with _dispatch.use_backend(self.backend):
            return fn()

    def forward(self, x: Any) -> Any:
        def run():
            out = x
            for layer in self.layers:
                out = layer.forward(out)
            return out

        return self._run(run)

    def backward(self, dy: Any) -> Any:
        def run():
            grad = dy
            for layer in reversed(self.layers):
                grad = layer.backward(grad)
            return grad

        return self._run(run)

    def __repr__(self) -> str:
        lines = [f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + f"\n)  # {self.num_parameters} parameters"
