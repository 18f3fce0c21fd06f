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
:func:`fastlayers.batch_norm`: with host parameters and the cuda backend they run on the CPU's
kernels (a GPU call would copy the parameters over each time); on a model moved to the GPU
(below) Dense, ReLU and BatchNorm2d run the cuda kernels, Tanh and Sigmoid elementwise cuda
kernels of their own. Embedding, Flatten and Dropout are NumPy on every backend (Flatten is a
reshape, on device arrays too), Tanh and Sigmoid on host arrays.

Parameters live in host memory (NumPy arrays) unless the model is moved to the GPU with
``model.cuda()`` (``model.to("cuda")``; back with ``model.cpu()``): its parameters, buffers and
gradients are then Numba device arrays, its layers run the cuda backend's kernels, inputs must be
GPU arrays (``numba.cuda.to_device(x)``, or any ``__cuda_array_interface__`` array) and outputs
are device arrays. With :func:`fastlayers.losses.softmax_cross_entropy` and the optimisers of
:mod:`fastlayers.optim`, which keep their state on the GPU too, a training step then moves nothing
between host and GPU but the loss the caller reads. Conv2D, MaxPool2D, Flatten, ReLU, Dense,
BatchNorm2d, Tanh, Sigmoid and Sequential can move; the other layers (Dropout, the recurrent ones,
Embedding) raise NotImplementedError (no device-resident version yet).

Conv2D, MaxPool2D, ReLU and Dense keep a plan per signature of their calls' arguments (type,
shape, dtype and strides of every array, the layer's options, the backend settings): the first
call is validated through the op's spec and dispatched in full, later ones call the chosen kernel
directly, and write their outputs into the buffers of the previous call when nothing refers to
those any more (the caller dropped them, no record or view holds them); an output you hold is
never overwritten. Assigning any attribute of a layer (its options, ``training``, ``backend``,
``.to(dtype)``) drops its plans; the thread count is read at every call. A Sequential in which no
layer keeps records (eval mode, ``no_grad()``) runs its forward on NumPy inputs through an
inference plan per input signature (``_InferencePlan``): the layers' kernels called directly into
buffers the plan keeps, ReLU in place, a ReLU after a MaxPool2D inside the pool's call, a
Conv2D's MaxPool2D(2) and ReLU inside the convolution's (its epilogue), and MaxPool2D without
indices. In every mode a Sequential
runs a ReLU followed by a MaxPool2D as the pool then the ReLU (the same values and gradients, but
for the sign of a zero; see ``Sequential._order``).

Initialisation is PyTorch's default (see :mod:`fastlayers.init` for Kaiming, Xavier and the
others): Conv2D and Dense weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), RNN weights and
bias U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), Embedding N(0, 1), BatchNorm2d scale 1 and
shift 0. ``rng`` is a seed or a ``numpy.random.Generator``.
"""
from __future__ import annotations

from dataclasses import replace
import contextlib
import contextvars
import math
import os
import sys
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import (TYPE_CHECKING, Any, BinaryIO, Callable, Dict, ItemsView, Iterator, KeysView, List, Optional, Tuple,
                    TypeVar, Union, ValuesView, cast)

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _dispatch, init, reference
from .ops import CONV2D, LINEAR, MAX_POOL2D, RELU
from .ops._checks import FLOAT_DTYPES, array_dtype, check_choice, is_device_array, pair
from .ops._spec import NONE, plan
from .ops.conv2d import PADDING_MODES, conv2d_geometry, fuse_epilogue
from .ops.rnn import NONLINEARITIES
from .functional import (
    IntOrPair,
    batch_norm,
    batch_norm_backward,
    gru,
    gru_backward,
    linear,
    linear_backward,
    lstm,
    lstm_backward,
    rnn,
    rnn_backward,
)

__all__ = ["no_grad", "is_grad_enabled", "Layer", "Conv2D", "MaxPool2D", "Flatten", "Dense", "ReLU", "Tanh",
           "Sigmoid", "Dropout", "BatchNorm2d", "RNN", "LSTM", "GRU", "Embedding", "TiedOutput", "Sequential"]

Seed = Union[None, int, np.random.Generator]  # rng: a seed or a generator
State = Union[None, np.ndarray, Tuple[Optional[np.ndarray], ...]]  # LSTM (h, c), GRU h, or None
_L = TypeVar("_L", bound="Layer")

_grad_enabled = contextvars.ContextVar("fastlayers_grad_enabled", default=True)


def no_grad() -> _dispatch.ContextSetting:
    """Within this context (per thread and per asyncio task) no layer keeps a record for a
    backward, as ``torch.no_grad()``; also a decorator."""
    return _dispatch.ContextSetting(_grad_enabled, False)


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


DEVICES = ("cpu", "cuda")


def _gpu() -> Any:
    """The cuda backend's device-array helpers (numba is imported only where one runs on the GPU)."""
    from .backends.cuda import training

    return training


def _copy_into(target: Any, value: Any) -> None:
    """Copy ``value`` into ``target`` (host or GPU), ``same_kind`` casting into target's dtype."""
    if is_device_array(target):
        target.copy_to_device(np.ascontiguousarray(np.asarray(value).astype(target.dtype, casting="same_kind")))
    else:
        np.copyto(target, value, casting="same_kind")


def _transpose(a: Any) -> Any:
    """``a.T`` as a view for NumPy and GPU arrays alike (Numba's device ``.T`` copies)."""
    if isinstance(a, np.ndarray):
        return a.T
    from .backends.cuda._arrays import transpose_view

    return transpose_view(a)


def _signature(a: Any) -> Any:
    """What validating array ``a`` depends on: its type, shape, dtype and strides (None: no
    array). An AttributeError for what is not an array: such a call takes the full path."""
    return None if a is None else (type(a), a.shape, a.dtype, a.strides)


def _unshared(buffers: Tuple[Any, ...], alone: int) -> Tuple[Any, ...]:
    """``buffers`` with None for every one that anything besides the layer holds (the caller, a
    record, a view of it): those must not be written again. ``alone``: the reference count of a
    buffer only ``buffers`` holds, as seen here."""
    return tuple(b if sys.getrefcount(b) <= alone else None for b in buffers)


# Calibrated, not assumed: the count the interpreter reports for a buffer that only a tuple holds.
_ALONE = next(n for n in range(1, 64) if _unshared((np.empty(0),), n)[0] is not None)


def _owned(a: Any) -> Any:
    """``a`` if it is a NumPy array that owns its memory (none of its views is anyone else's
    array), else None: what a layer may keep to write again."""
    return a if type(a) is np.ndarray and a.flags.owndata else None


class _Planned:
    """A layer's op call planned for one signature of its arguments (``ops._spec.Plan``), and
    the output buffers of its last call: the next call writes them again when no one but this
    object holds them any more (the caller dropped them, no record refers to them), else it gets
    new ones. ``keep=False``: every call gets new buffers (outputs the kernel checks again when
    given, as max_pool2d's backward does)."""

    __slots__ = ("plan", "buffers", "keep")

    def __init__(self, p: Any, count: int, keep: bool) -> None:
        self.plan, self.keep = p, keep
        self.buffers: Tuple[Any, ...] = (None,) * count

    def __call__(self, arrays: Tuple[Any, ...]) -> Any:
        p = self.plan
        if not self.keep:
            return p.finish(p.call(arrays, p.to_kernel_out(self.buffers)), self.buffers)
        outs = _unshared(self.buffers, _ALONE)
        results = p.call(arrays, p.to_kernel_out(outs))
        if NONE in map(type, outs):  # new buffers: keep those that may be written again
            self.buffers = tuple(r if r is o else _owned(r) for r, o in zip(results, outs))
        return p.finish(results, outs)


# Plans a layer keeps (one per signature of its calls' arguments); past this many it starts over.
_MAX_PLANS = 8

# Bumped by every assignment of any layer's attribute: a Sequential's inference plan, made of its
# children's plans, is valid while this stays what it was when the plan was made.
_epoch = 0


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
        if value.shape != tuple(target.shape):
            raise ValueError(f"parameter {name!r} has shape {target.shape}, got a value of shape {value.shape}")
        _copy_into(target, value)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: array({_shape(v)}, {v.dtype})" for k, v in self._named().items()) + "}"


def _fusable(layer: Layer, following: Layer, kind: type) -> bool:
    """Whether ``following`` is a ``kind`` layer that an inference step of ``layer`` may run in
    its own call: exactly that type, on the same backend."""
    return type(following) is kind and following.backend == layer.backend


class Layer:
    """Base class: records, gradient accumulation, modes, parameters, state dicts, dtype, device.

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

    device = "cpu"  # where the parameters live: "cpu" (NumPy) or "cuda" (after .cuda())
    movable = False  # whether .cuda() can move this layer (its forward and backward run on device arrays)
    skips_input_grad = False  # whether backward takes input_grad=False (computes no dL/dx)

    def __init__(self, backend: Optional[str] = None, dtype: DTypeLike = np.float32, rng: Seed = None) -> None:
        self._configure(backend, dtype)
        self._parameters: Dict[str, np.ndarray] = {}
        self._buffers: Dict[str, np.ndarray] = {}
        self._grads: Dict[str, np.ndarray] = {}
        self._records: List[Any] = []
        self._plans: Dict[Any, _Planned] = {}
        self.training = True

    def _configure(self, backend: Optional[str], dtype: DTypeLike) -> None:
        if backend is not None:
            _dispatch._check_backend_name(backend)
        self.backend = backend
        self.dtype = _float_dtype(dtype)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        # Plans are valid for the layer's attributes as they were (options, mode, backend, dtype):
        # any assignment drops them.
        global _epoch
        object.__setattr__(self, name, value)
        _epoch += 1
        plans = self.__dict__.get("_plans")
        if plans:
            plans.clear()

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_plans": {}}  # plans hold closures and buffers, not state

    def _run(self, key: Any, arrays: Tuple[Any, ...], prepare: Callable[[], Tuple[Any, Any, Any]],
             keep: bool = True) -> Any:
        """Run one op call on ``arrays`` (the kernel's array arguments, in its order) through the
        plan kept under ``key`` (what the call depends on besides the layer's attributes: the
        arrays' signatures, the backend settings). Without one, ``prepare()`` checks the call and
        returns ``(spec, problem, backend)``, and the plan made from it is kept; so a call is
        validated in full once per signature, and its outputs are written into the buffers of
        the previous call when no one holds them any more."""
        try:
            planned = self._plans.get(key)
        except TypeError:  # an unhashable option (a list): planned every time
            planned, key = None, None
        if planned is None:
            spec, problem, backend = prepare()
            p = plan(spec, problem, backend, "auto", arrays)
            none = (None,) * len(problem.outputs)
            if key is None or not p.direct or not problem.replayable:
                return p.finish(p.call(problem.arrays.values(), p.to_kernel_out(none)), none)
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()  # one C call: safe beside another thread's call of this layer
            planned = self._plans[key] = _Planned(p, len(none), keep)
        return planned(arrays)

    def _key(self, arrays: Tuple[Any, ...], *options: Any) -> Any:
        """A plan's key: the signatures of ``arrays``, ``options`` and the backend settings; None
        (no plan) when one of ``arrays`` is not an array."""
        try:
            return (*map(_signature, arrays), *options, self.backend, *_dispatch.backend_settings())
        except AttributeError:
            return None

    def _inference_step(self, x: Any, keep: bool, owned: bool) -> Tuple[Callable[[Any], Any], Any, bool]:
        """A step of a Sequential's inference plan (no record kept, input signature fixed):
        ``(step, y, owned)``: the function the plan calls on later inputs of x's signature, this
        call's output, and whether that output is (a view of) a buffer of the plan's own, written
        again each call, which the next step may overwrite. ``keep``: the step may keep its output
        buffer across calls (else each call's output is new: the plan's last step); ``owned``:
        whether x is such a buffer. By default the layer's forward, whose output is never one."""
        return self.forward, self.forward(x), False

    def _fused_inference_step(self, following: List[Layer], x: Any,
                              owned: bool) -> Optional[Tuple[Callable[[Any], Any], Any, bool, int]]:
        """``_inference_step`` of this layer and the first ``n`` of ``following`` (the layers
        after it in the plan) as one step: ``(step, y, owned, n)``, the step keeping its output
        where layers follow those (``len(following) > n``); or None where this layer fuses none
        (the default)."""
        return None

    def _planned_step(self, x: Any, keep: bool, owned: bool = False, forward_call: Optional[Callable[[Any], Any]] = None
                      ) -> Tuple[Callable[[Any], Any], Any, bool]:
        """``_inference_step`` of a layer whose forward is one planned op call on x and the
        layer's parameters (``forward_call``, by default ``_forward_call``): the step calls the
        plan's kernel directly."""
        key, arrays, prepare = (forward_call or self._forward_call)(x)
        y = self._run(key, arrays, prepare)
        try:
            planned = self._plans.get(key)
        except TypeError:  # an unhashable option: no plan kept
            planned = None
        if planned is None:
            return self.forward, y, False
        p, rest = planned.plan, arrays[1:]
        call, finish = p.call, p.finish
        if keep and planned.buffers[0] is not None:  # this call's outputs, now the step's own (None:
            # an output not computed, max_pool2d's indices outside training)
            buffers = tuple(list(planned.buffers))  # a tuple of its own: the layer's calls see them held
            outs = p.to_kernel_out(buffers)
            return (lambda x: finish(call((x, *rest), outs), buffers)), y, True
        none = (None,) * len(planned.buffers)
        blank = p.to_kernel_out(none)
        return (lambda x: finish(call((x, *rest), blank), none)), y, False

    @property
    def host_backend(self) -> str:
        """The backend of the layers that keep host parameters on the CPU kernels (Dense, ReLU,
        BatchNorm2d): "cuda" once the layer is on the GPU (``.cuda()``); else this layer's if it is
        a host one, else (cuda, or none given) the host backend the dispatch would choose, which a
        surrounding ``use_backend("cuda")`` must not override (each call would copy the parameters)."""
        if self.device == "cuda":
            return "cuda"
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
        if self.device == "cuda":  # on the GPU, as the host path: a copy, then += in place
            if name in self._grads:
                _gpu().accumulate(self._grads[name], grad)
            else:
                self._grads[name] = _gpu().copy(grad)
        elif name in self._grads:
            self._grads[name] += grad
        elif type(grad) is np.ndarray and grad.dtype == self.dtype and grad.flags.owndata and grad.flags.writeable:
            # the kernel's own output (fresh, or its plan's buffer, which the plan writes again only
            # once no one holds it: after zero_grad): kept as it is, not copied
            self._grads[name] = grad
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

    def to(self: _L, dtype: Optional[DTypeLike] = None, device: Optional[str] = None) -> _L:
        """Convert every parameter and buffer to ``dtype`` (float32 or float64) and/or move them to
        ``device`` ("cuda": GPU device arrays, and the layers run the cuda backend; "cpu": NumPy
        arrays, and a layer whose backend was "cuda" lets the dispatch choose again); as in
        PyTorch, ``model.to("cuda")`` names a device. Drops gradients and records. Returns self.
        (Create optimisers after converting.)"""
        if isinstance(dtype, str) and dtype in DEVICES and device is None:
            dtype, device = None, dtype
        dtype = None if dtype is None else _float_dtype(dtype)
        if device is not None and device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        layers = self._unique_layers()
        if device == "cuda":
            fixed = sorted({type(layer).__name__ for layer in layers if not layer.movable})
            if fixed:
                raise NotImplementedError(f"{', '.join(fixed)} cannot be moved to the GPU yet (no device-resident "
                                          f"version): the movable layers are Conv2D, MaxPool2D, Flatten, ReLU, Dense, "
                                          f"BatchNorm2d and Sequential")
        for layer in layers:
            target = layer.device if device is None else device
            for table in (layer._parameters, layer._buffers):
                for name, array in table.items():
                    if target == layer.device == "cpu":
                        if dtype is not None and array.dtype.kind == "f":
                            table[name] = array.astype(dtype)
                        continue
                    host = _gpu().to_host(array) if is_device_array(array) else array
                    if dtype is not None and host.dtype.kind == "f":
                        host = host.astype(dtype)
                    # Integer buffers (BatchNorm2d's batch count) stay on the host: counters the host updates.
                    table[name] = _gpu().to_device(host) if target == "cuda" and host.dtype.kind == "f" else host
            if dtype is not None:
                layer.dtype = dtype
            if target == "cuda":
                layer.backend = "cuda"
            elif layer.device == "cuda" and layer.backend == "cuda":
                layer.backend = None
            layer.device = target
        self.zero_grad()
        return self

    def cuda(self: _L) -> _L:
        """``to(device="cuda")``: parameters, buffers and gradients on the GPU. Returns self."""
        return self.to(device="cuda")

    def cpu(self: _L) -> _L:
        """``to(device="cpu")``: parameters and buffers back in NumPy arrays. Returns self."""
        return self.to(device="cpu")

    def _check_input(self, x: Any, ndim: Optional[int] = None, name: str = "x") -> None:
        if self.device == "cuda":
            if not is_device_array(x):
                raise TypeError(f"{type(self).__name__} input {name} must be a GPU array (the layer is on the GPU: "
                                f"move the batch with numba.cuda.to_device({name})), got {type(x).__name__}")
            dtype = array_dtype(name, x)
        elif not isinstance(x, np.ndarray):
            hint = " (a GPU array: move the model with model.cuda())" if is_device_array(x) else ""
            raise TypeError(f"{type(self).__name__} input {name} must be a numpy.ndarray, got {type(x).__name__}{hint}")
        else:
            dtype = x.dtype
        if dtype != self.dtype:
            raise TypeError(
                f"{type(self).__name__} input {name} must have the layer's dtype {self.dtype}, got {dtype}; "
                f"cast with {name}.astype(numpy.{self.dtype})"
            )
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{type(self).__name__} input {name} must be {ndim}-D, got shape {x.shape}")

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of every parameter and buffer by name (a checkpoint that later training does not
        change)."""
        state = {name: _gpu().host_copy(a) for name, a in self._named("_parameters").items()}
        state.update((name, _gpu().host_copy(a)) for name, a in self._named("_buffers").items())
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
            if value.shape != tuple(target.shape) or value.dtype != target.dtype:
                raise ValueError(f"state dict entry {name!r} has shape {value.shape} and dtype {value.dtype}, "
                                 f"the model's has {target.shape} and {target.dtype}")
        for name in targets.keys() & state.keys():
            _copy_into(targets[name], state[name])
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

    movable = True
    skips_input_grad = True

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

    def _options(self) -> Tuple[Any, ...]:
        return self.stride, self.padding, self.dilation, self.groups, self.padding_mode

    def _forward_call(self, x: Any, pool: bool = False,
                      relu: bool = False) -> Tuple[Any, Tuple[Any, ...], Callable[[], Tuple[Any, Any, Any]]]:
        """The forward's op call: its plan key, its arrays and how to check it. ``pool``,
        ``relu``: the output through a 2x2 stride-2 max-pool and a ReLU, in the same call (the
        geometry's epilogue)."""
        w, b = self._parameters["w"], self._parameters.get("b")

        def prepare():
            self._check_input(x, 4)
            if x.shape[1] != self.in_channels:
                raise ValueError(f"Conv2D input x must have {self.in_channels} channels (axis 1), got shape {x.shape}")
            problem = CONV2D.forward(x, w, b, *self._options())
            if pool or relu:
                fuse_epilogue(problem, pool, relu)
            return CONV2D, problem, self.backend

        arrays = (x, w, b)
        return self._key(arrays, "forward", *self._options(), pool, relu), arrays, prepare

    _inference_step = Layer._planned_step

    def _fused_inference_step(self, following: List[Layer], x: Any,
                              owned: bool) -> Optional[Tuple[Callable[[Any], Any], Any, bool, int]]:
        """A MaxPool2D(2) after the convolution (2x2, stride 2, no padding, floor mode) and a
        ReLU after that (as ``Sequential._order`` puts Conv2D -> ReLU -> MaxPool2D), or a ReLU
        alone, run as the convolution's epilogue (the cpu kernels: backends/cpu/conv2d.py). One
        step, and with the pool no full-size output buffer."""
        pool = _fusable(self, following[0], MaxPool2D) and following[0]._pools_2x2() and self._pools(x)
        relu = len(following) > pool and _fusable(self, following[pool], ReLU)
        if not (pool or relu):
            return None
        n = pool + relu
        return (*self._planned_step(x, len(following) > n, owned, lambda x: self._forward_call(x, pool, relu)), n)

    def _pools(self, x: Any) -> bool:
        """Whether this layer's output on x has planes of at least 2x2 (a pool's windows fit);
        False where x is not a valid input (the layer's own forward then says why)."""
        try:
            g = conv2d_geometry(x.shape, self._parameters["w"].shape, self.stride, self.padding, self.dilation,
                                self.groups)
        except (TypeError, ValueError, AttributeError):
            return False
        return g.OH >= 2 and g.OW >= 2

    def forward(self, x: np.ndarray) -> np.ndarray:
        # A forward that records is a training step's: its weights change before the next call
        # (the kernel choice then counts their derived arrays as made on every call).
        with _dispatch.weights_change() if self.recording else contextlib.nullcontext():
            key, arrays, prepare = self._forward_call(x)
            y = self._run(key, arrays, prepare)
        self._record((x, arrays[1]))
        return y

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> Optional[np.ndarray]:
        """dL/dx (None with ``input_grad=False``: for an input that needs no gradient, such as a
        network's input, the backward then computes only the parameters' gradients)."""
        x, w = self._last_record()
        arrays = (dy, x, w)
        with _dispatch.weights_change():
            dx, dw, db = self._run(self._key(arrays, "backward", *self._options(), input_grad), arrays,
                                   lambda: (CONV2D, CONV2D.backward(dy, x, w, *self._options(), input_grad),
                                            self.backend))
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

    movable = True

    def __init__(self, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: IntOrPair = 0,
                 ceil_mode: bool = False, backend: Optional[str] = None, dtype: DTypeLike = np.float32,
                 rng: Seed = None) -> None:
        super().__init__(backend, dtype)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        self.ceil_mode = ceil_mode

    def _forward_call(self, x: Any,
                      relu: bool = False) -> Tuple[Any, Tuple[Any, ...], Callable[[], Tuple[Any, Any, Any]]]:
        """The forward's op call: its plan key, its arrays and how to check it. The indices only
        when recording: without them the kernel writes the maxima alone. ``relu``: the maxima
        through a ReLU, in the same call (the geometry's ``relu``)."""
        options = (self.kernel_size, self.stride, self.padding, 1, self.ceil_mode, self.recording)

        def prepare():
            self._check_input(x, 4)
            problem = MAX_POOL2D.forward(x, *options)
            if relu:
                problem.geometry = replace(problem.geometry, relu=True)
            return MAX_POOL2D, problem, self.backend

        return self._key((x,), "forward", *options, relu), (x,), prepare

    _inference_step = Layer._planned_step

    def _fused_inference_step(self, following: List[Layer], x: Any,
                              owned: bool) -> Optional[Tuple[Callable[[Any], Any], Any, bool, int]]:
        """A ReLU after the pool (as ``Sequential._order`` puts the ReLU of ReLU -> MaxPool2D)
        runs in the pool's call, on each plane as it is pooled: one pass and one step fewer."""
        if not following or not _fusable(self, following[0], ReLU):
            return None
        return (*self._planned_step(x, len(following) > 1, owned, lambda x: self._forward_call(x, relu=True)), 1)

    def _pools_2x2(self) -> bool:
        """Whether this pool is the 2x2 stride-2 one a Conv2D's epilogue runs (no padding, floor)."""
        return self.kernel_size == (2, 2) and self.stride == (2, 2) and self.padding == (0, 0) and not self.ceil_mode

    def forward(self, x: np.ndarray) -> np.ndarray:
        recording = self.recording
        key, arrays, prepare = self._forward_call(x)
        result = self._run(key, arrays, prepare)
        if not recording:
            return cast(np.ndarray, result)
        y, indices = result
        self._record((indices, x.shape))
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        indices, shape = self._last_record()
        arrays = (dy, indices)
        # The indices are this layer's own forward's: in range, so the cuda backend need not read
        # its out-of-range flag back (a device-to-host transfer per call). New buffers every call:
        # the host kernels check every index of a buffer they are given first.
        return self._run(self._key(arrays, "backward", shape), arrays,
                         lambda: (MAX_POOL2D, MAX_POOL2D.backward(dy, indices, shape, False), self.backend),
                         keep=False)

    def _describe(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)), C order: the notes' "Flattening" slide."""

    movable = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        self._record(x.shape)
        return reference.flatten(x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return reference.flatten_backward(dy, self._last_record())

    def _inference_step(self, x: Any, keep: bool, owned: bool) -> Tuple[Callable[[Any], Any], Any, bool]:
        y = self.forward(x)  # checked once: later inputs have x's signature, so y's shape
        shape = y.shape
        return (lambda x: x.reshape(shape)), y, owned


class ReLU(Layer):
    """max(x, 0); the gradient at 0 is 0 (as in PyTorch). See :func:`fastlayers.relu`."""

    movable = True

    def _forward_call(self, x: Any) -> Tuple[Any, Tuple[Any, ...], Callable[[], Tuple[Any, Any, Any]]]:
        """The forward's op call: its plan key, its arrays and how to check it."""
        def prepare():
            self._check_input(x)
            return RELU, RELU.forward(x), self.host_backend

        return self._key((x,), "forward"), (x,), prepare

    def forward(self, x: np.ndarray) -> np.ndarray:
        key, arrays, prepare = self._forward_call(x)
        y = self._run(key, arrays, prepare)
        self._record(x)
        return y

    def _inference_step(self, x: Any, keep: bool, owned: bool) -> Tuple[Callable[[Any], Any], Any, bool]:
        """With ``owned`` (x is a buffer of the plan's own) the step rewrites x in place instead of
        writing a new buffer."""
        return self._in_place_step(x, keep, owned) if owned else self._planned_step(x, keep)

    def _in_place_step(self, x: Any, keep: bool, owned: bool) -> Tuple[Callable[[Any], Any], Any, bool]:
        """A step that rewrites x, a buffer of the plan's own."""
        key, arrays, prepare = self._forward_call(x)
        try:
            planned = self._plans.get(key)
        except TypeError:
            planned = None
        if planned is None:  # planned by a first call (into a buffer of its own)
            self._run(key, arrays, prepare)
            planned = self._plans.get(key)
        if planned is None or planned.plan.specs is None:  # kernels that allocate: no in-place call
            return self._planned_step(x, keep)
        call = planned.plan.call

        def step(x):
            call((x,), (x,))  # elementwise: each element read before its own is written
            return x

        return step, step(x), owned

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._last_record()
        arrays = (dy, x)
        return self._run(self._key(arrays, "backward"), arrays,
                         lambda: (RELU, RELU.backward(dy, x), self.host_backend))


class Tanh(Layer):
    """tanh(x); its backward uses the output: dL/dx = dy * (1 - y^2)."""

    movable = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        y = _gpu().tanh(x) if is_device_array(x) else np.tanh(x)
        self._record(y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._last_record()
        return _gpu().tanh_backward(dy, y) if is_device_array(y) else dy * (1 - y * y)


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), without overflow for any x; dL/dx = dy * y * (1 - y)."""

    movable = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        if is_device_array(x):
            y = _gpu().sigmoid(x)
        else:
            e = np.exp(-np.abs(x))  # in (0, 1]: exp never overflows
            y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        self._record(y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._last_record()
        return _gpu().sigmoid_backward(dy, y) if is_device_array(y) else dy * y * (1 - y)


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

    def _inference_step(self, x: Any, keep: bool, owned: bool) -> Tuple[Callable[[Any], Any], Any, bool]:
        y = self.forward(x)
        if self.training and self.p:  # masks under no_grad too, as in PyTorch
            return self.forward, y, False
        return (lambda x: x), y, owned

    def _describe(self) -> str:
        return f"p={self.p}"


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel of NCHW input, as ``torch.nn.BatchNorm2d``.

    Training mode normalises with the batch's mean and (biased) variance and updates the running
    statistics ``running_mean``/``running_var`` (buffers; the unbiased variance, weight
    ``momentum``); eval mode normalises with the running statistics. ``params``: ``w`` (scale,
    ones) and ``b`` (shift, zeros), if ``affine``. Statistics are accumulated in float64 (on the
    GPU, after ``.cuda()``, in the input's dtype; ``num_batches_tracked`` stays on the host)."""

    movable = True

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

    movable = True

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

    def _forward_call(self, x: Any) -> Tuple[Any, Tuple[Any, ...], Callable[[], Tuple[Any, Any, Any]]]:
        """The forward's op call: its plan key, its arrays and how to check it."""
        arrays = (x, _transpose(self._parameters["W"]), self._parameters.get("b"))

        def prepare():
            self._check_input(x)
            if x.ndim < 1 or tuple(x.shape)[-1] != self.in_features:
                raise ValueError(
                    f"Dense input x must have {self.in_features} features on its last axis, got shape {x.shape}"
                )
            return LINEAR, LINEAR.forward(*arrays), self.host_backend

        return self._key(arrays, "forward"), arrays, prepare

    _inference_step = Layer._planned_step

    def forward(self, x: np.ndarray) -> np.ndarray:
        key, arrays, prepare = self._forward_call(x)
        y = self._run(key, arrays, prepare)
        self._record((x, self._parameters["W"]))
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, W = self._last_record()
        arrays = (dy, x, _transpose(W))
        dx, dWt, db = self._run(self._key(arrays, "backward"), arrays,
                                lambda: (LINEAR, LINEAR.backward(*arrays), self.host_backend))
        self._accumulate("W", _transpose(dWt))
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


class _InferencePlan:
    """A Sequential's forward for one input signature where no layer keeps records: each layer's
    ``_inference_step`` in ``Sequential._order`` (its planned kernel called directly, checked
    once), the outputs of all but the last written into buffers the plan keeps (no allocation per
    call), a ReLU in place on the buffer before it, and a layer and the next ones as one step
    where the first fuses them (``_fused_inference_step``: a Conv2D's MaxPool2D(2) and ReLU run
    as the convolution's epilogue, a ReLU moved after its MaxPool2D in the pool's call, on each
    plane as it is pooled). The last step's output is new at every call (a
    copy where it is a view of a kept buffer), as the caller may hold it. Made by its first call;
    ``lock``: one call at a time (the kept buffers), a concurrent one takes the layers' own
    forwards."""

    __slots__ = ("layers", "order", "epoch", "usable", "lock", "steps", "copy_out")

    def __init__(self, layers: List[Layer], order: List[Layer], usable: bool) -> None:
        self.layers, self.order, self.epoch, self.usable = list(layers), order, _epoch, usable
        self.lock = threading.Lock()
        self.steps: Optional[List[Callable[[Any], Any]]] = None
        self.copy_out = False

    def __call__(self, x: Any) -> Any:
        steps = self.steps
        if steps is None:
            return self._make(x)
        for step in steps:
            x = step(x)
        return x.copy() if self.copy_out else x

    def _make(self, x: Any) -> Any:
        steps, owned, order, i = [], False, self.order, 0
        while i < len(order):  # a layer and the next ones as one step where the first fuses them
            following = order[i + 1:]
            fused = order[i]._fused_inference_step(following, x, owned) if following else None
            step, x, owned, n = fused or (*order[i]._inference_step(x, bool(following), owned), 0)
            steps.append(step)
            i += 1 + n
        self.steps, self.copy_out = steps, owned
        return x.copy() if owned else x


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``params``/``grads``/``state_dict`` hold every child's entries under ``"<index>.<name>"`` (a
    layer placed twice is listed once, at its first index). ``backend``, when given, is used by
    every child that was built with ``backend=None``. ``dtype`` is the children's (they must agree)."""

    movable = True
    skips_input_grad = True

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
        """The layers in order. Where no layer keeps a record (eval mode, or ``no_grad()``) and x
        is a NumPy array, through the inference plan kept for x's signature (``_InferencePlan``)."""
        if type(x) is np.ndarray:
            planned = self._inference_plan(x)
            if planned is not None and planned.lock.acquire(False):  # a concurrent call takes the loop
                try:
                    return self._run(lambda: planned(x))
                finally:
                    planned.lock.release()

        def run():
            out = x
            for layer in self._order():
                out = layer.forward(out)
            return out

        return self._run(run)

    def _order(self) -> List[Layer]:
        """The layers in the order their forwards run (their backwards in reverse): ``layers``,
        but a ReLU followed by a MaxPool2D runs after it. Max commutes with ReLU, which then
        touches a quarter of the cells (forward, and backward on the pool's output), and the
        gradient is the same: where a window's maximum is positive its first maximum is the same
        cell either way, and where it is not the gradient is zero either way. Only a zero's sign
        may differ (the maximum of -0.0 and a negative is -0.0, of their ReLUs +0.0)."""
        layers = self.layers
        order, i, last = [], 0, len(layers) - 1
        while i <= last:
            if type(layers[i]) is ReLU and i < last and type(layers[i + 1]) is MaxPool2D:
                order += (layers[i + 1], layers[i])
                i += 2
            else:
                order.append(layers[i])
                i += 1
        return order

    def _inference_plan(self, x: np.ndarray) -> Optional[_InferencePlan]:
        """The plan for x's signature (made at its first call), where no layer keeps records (no
        backward may follow) and none is on the GPU; else None. A plan is stale once any layer's
        attribute was assigned (``_epoch``: the children's options, modes, dtypes, devices) or
        ``layers`` changed."""
        if self.recording:  # the usual training forward: no look-up
            return None
        key = (x.shape, x.dtype, x.strides, _grad_enabled.get(), *_dispatch.backend_settings())
        planned = self._plans.get(key)
        if planned is None or planned.epoch != _epoch or planned.layers != self.layers:
            usable = not any(layer.recording or layer.device != "cpu" for layer in self._unique_layers())
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            planned = self._plans[key] = _InferencePlan(self.layers, self._order(), usable)
        return planned if planned.usable else None

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        """dL/dx of the model's input; with ``input_grad=False`` (the input is data, as in
        training) None, and the first layer skips computing it where it can (``Conv2D``, a
        ``Sequential``)."""
        if not isinstance(input_grad, bool):
            raise TypeError(f"input_grad must be True or False, got {input_grad!r}")

        def run():
            grad = dy
            order = self._order()  # as the forward ran them
            for layer in reversed(order[1:]):
                grad = layer.backward(grad)
            first = order[0]  # a Sequential has at least one layer
            if input_grad:
                return first.backward(grad)
            if first.skips_input_grad:
                first.backward(grad, input_grad=False)
            else:
                first.backward(grad)
            return None

        return self._run(run)

    def __repr__(self) -> str:
        lines = [f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + f"\n)  # {self.num_parameters} parameters"
