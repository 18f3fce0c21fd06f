"""Optimisers, learning-rate schedules and gradient clipping, as ``torch.optim`` and
``torch.nn.utils.clip_grad_norm_``.

An optimiser works on any object with ``params`` and ``grads`` mappings (a layer or a
``Sequential``): ``step()`` updates every parameter that has a gradient, in place, from
``model.grads`` (read afresh at each step); ``zero_grad()`` clears the model's gradients, which
otherwise accumulate over backward calls. ``state_dict()``/``load_state_dict()`` carry the
optimiser's state (learning rate, step count, moments) for checkpoints.

Parameters on the GPU (a model moved with ``model.cuda()``) are updated there by the cuda
backend's kernels, their state (momentum buffers, moments) kept on the GPU too: a step moves
nothing between host and GPU. ``state_dict()`` then copies the state to the host and
``load_state_dict`` back. ``clip_grad_norm_`` has no GPU implementation yet.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ._cpu import optim as _kernels
from ._dispatch import threads_for
from .ops._checks import is_device_array

__all__ = ["Optimizer", "SGD", "Adam", "StepLR", "CosineAnnealingLR", "clip_grad_norm_"]

Model = Any  # an object with ``params`` and ``grads`` mappings: a layer, a Sequential


def _non_negative(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _device() -> Any:
    from .backends.cuda import training  # numba is imported only where a device function runs

    return training


def _like(value: Any, p: Any) -> Any:
    """``value`` as an array of parameter ``p``'s dtype, where ``p`` lives (host or GPU)."""
    a = np.array(value, dtype=p.dtype)
    return _device().to_device(a) if is_device_array(p) else a


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _flat(p: np.ndarray, *others: np.ndarray) -> Optional[List[np.ndarray]]:
    """1-D views of ``p`` and ``others`` for the compiled updates, which take NumPy arrays of one
    float dtype laid out alike in one contiguous block (C or F order), element for element; None
    for any other (the NumPy expressions run those)."""
    if type(p) is not np.ndarray:
        return None
    dtype, strides, shape, flags = p.dtype, p.strides, p.shape, p.flags
    order = "C" if flags.c_contiguous else "F" if flags.f_contiguous else None
    if order is None or dtype not in _FLOATS:
        return None
    for a in others:
        if type(a) is not np.ndarray or a.strides != strides or a.shape != shape or a.dtype != dtype:
            return None
    return [p.reshape(-1, order=order), *(a.reshape(-1, order=order) for a in others)]


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class Optimizer:
    """Base class: holds the model and per-parameter state keyed by parameter name."""

    def __init__(self, model: Model, lr: float) -> None:
        if not (hasattr(model, "params") and hasattr(model, "grads")):
            raise TypeError(f"model must have params and grads dicts, got {type(model).__name__}")
        self.model = model
        self.lr = _non_negative("lr", lr)
        self.state: Dict[str, Tuple[np.ndarray, ...]] = {}

    def _pairs(self) -> List[Tuple[str, np.ndarray, np.ndarray]]:
        """(name, parameter, gradient) of every parameter that has a gradient, each checked; the
        model's parameters and gradients are looked up once (a Sequential names them afresh at
        every lookup)."""
        params, grads = dict(self.model.params.items()), self.model.grads
        pairs = []
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                continue  # a parameter no backward reached (as torch.optim skips grad None)
            if g.shape != p.shape:
                raise ValueError(f"gradient of {name!r} has shape {g.shape}, the parameter {p.shape}")
            pairs.append((name, p, g))
        if not pairs:
            raise RuntimeError(f"no gradient for {sorted(params)}: call model.backward(...) before step()")
        return pairs

    def step(self) -> None:
        """Update every parameter that has a gradient, once (checks every gradient first)."""
        pairs = self._pairs()
        self._begin_step()
        for name, p, g in pairs:
            self._update(name, p, g)

    def _begin_step(self) -> None:
        pass

    if TYPE_CHECKING:  # each optimiser defines it
        def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None: ...

    def zero_grad(self) -> None:
        """Clear the model's gradients (``model.zero_grad()``, or ``model.grads.clear()`` for a
        plain object)."""
        if hasattr(self.model, "zero_grad"):
            self.model.zero_grad()
        else:
            self.model.grads.clear()

    _HYPER: Tuple[str, ...] = ("lr",)

    def state_dict(self) -> Dict[str, Any]:
        """Hyper-parameters, step count and per-parameter state (copies)."""
        return dict(hyper={k: getattr(self, k) for k in self._HYPER}, t=getattr(self, "t", 0),
                    state={name: tuple(_device().host_copy(a) for a in arrays) for name, arrays in self.state.items()})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the state of an optimiser of the same kind over a
        model with the same parameter names and shapes)."""
        hyper = state["hyper"]
        if set(hyper) != set(self._HYPER):
            raise ValueError(f"{type(self).__name__} state needs hyper-parameters {list(self._HYPER)}, got {sorted(hyper)}")
        params = self.model.params
        for name, arrays in state["state"].items():
            if name not in params:
                raise ValueError(f"optimiser state for {name!r}, which the model does not have ({sorted(params)})")
            for a in arrays:
                if np.shape(a) != params[name].shape:
                    raise ValueError(f"optimiser state for {name!r} has shape {np.shape(a)}, the parameter "
                                     f"{params[name].shape}")
        for k, v in hyper.items():
            setattr(self, k, v)
        if hasattr(self, "t"):
            self.t = int(state["t"])
        self.state = {name: tuple(_like(a, params[name]) for a in arrays) for name, arrays in state["state"].items()}


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay (as ``torch.optim.SGD``)::

        g = grad + weight_decay * p
        v = momentum * v + g          (v = g at the first step)
        p -= lr * v
    """

    _HYPER = ("lr", "momentum", "weight_decay")

    def __init__(self, model: Model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(model, lr)
        self.momentum = _non_negative("momentum", momentum)
        self.weight_decay = _non_negative("weight_decay", weight_decay)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        if is_device_array(p):
            first = self.momentum and name not in self.state
            if first:
                self.state[name] = (_device().zeros(tuple(p.shape), p.dtype),)
            v = self.state[name][0] if self.momentum else None
            _device().sgd_update(p, g, v, self.lr, self.momentum, self.weight_decay, first)
            return
        first = self.momentum and name not in self.state
        v = (np.empty_like(p),) if first else self.state.get(name, ())
        flat = _flat(p, g, *v)
        if flat is not None:  # one compiled pass, the same bits as the expressions below
            _kernels.sgd_update(*flat[:2], flat[2] if v else flat[0][:0], self.lr, self.momentum,
                                self.weight_decay, first, threads_for(p.size))
            if first:
                self.state[name] = v
            return
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            if name not in self.state:
                self.state[name] = (np.array(g, dtype=p.dtype),)
            else:
                (v,) = self.state[name]
                v *= self.momentum
                v += g
            g = self.state[name][0]
        p -= (self.lr * g).astype(p.dtype, copy=False)


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam`` (weight decay added to the gradient)::

        m = b1 * m + (1 - b1) * g;   v = b2 * v + (1 - b2) * g**2
        p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)
    """

    _HYPER = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, model: Model, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(model, lr)
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.betas = (b1, b2)
        self.eps = _non_negative("eps", eps)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.t = 0

    def _begin_step(self) -> None:
        self.t += 1

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        if is_device_array(p):
            if name not in self.state:
                self.state[name] = tuple(_device().zeros(tuple(p.shape), p.dtype) for _ in range(2))
            _device().adam_update(p, g, *self.state[name], self.lr, self.betas, self.eps, self.weight_decay, self.t)
            return
        if name not in self.state:
            self.state[name] = (np.zeros_like(p), np.zeros_like(p))
        m, v = self.state[name]
        flat = _flat(p, g, m, v)
        if flat is not None:  # one compiled pass, the same bits as the expressions below
            _kernels.adam_update(*flat, self.lr, b1, b2, self.eps, self.weight_decay, self.t, threads_for(p.size))
            return
        if self.weight_decay:
            g = g + self.weight_decay * p
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        m_hat = m / (1 - b1**self.t)
        v_hat = v / (1 - b2**self.t)
        p -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype, copy=False)


class _Schedule:
    """Base of the learning-rate schedules: ``step()`` once per epoch (after the optimiser's
    steps) sets ``optimizer.lr`` for the next epoch, as ``torch.optim.lr_scheduler``."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastlayers optimiser, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    if TYPE_CHECKING:  # each schedule defines it
        def lr_at(self, epoch: int) -> float: ...

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> Dict[str, Any]:
        return dict(base_lr=self.base_lr, last_epoch=self.last_epoch)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.base_lr, self.last_epoch = float(state["base_lr"]), int(state["last_epoch"])
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(_Schedule):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        self.step_size, self.gamma = _positive_int("step_size", step_size), _non_negative("gamma", gamma)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(_Schedule):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (Loshchilov and
    Hutter's SGDR without restarts): from base_lr down to eta_min over T_max epochs."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        self.T_max, self.eta_min = _positive_int("T_max", T_max), _non_negative("eta_min", eta_min)

    def lr_at(self, epoch: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


def clip_grad_norm_(model: Model, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale every gradient of ``model.grads`` in place so that their joint ``norm_type`` norm is
    at most ``max_norm`` (factor max_norm / (norm + 1e-6), as PyTorch); returns the norm before
    clipping (``inf`` norm: the largest magnitude)."""
    max_norm, norm_type = _non_negative("max_norm", max_norm), float(norm_type)
    grads = list(model.grads.values())
    if not grads:
        return 0.0
    if any(is_device_array(g) for g in grads):
        raise NotImplementedError("clip_grad_norm_ has no GPU implementation yet: gradients on the GPU (a model "
                                  "moved with .cuda()) cannot be clipped")
    if norm_type == math.inf:
        total = max(float(np.abs(g).max(initial=0.0)) for g in grads)
    elif norm_type > 0:
        total = float(sum(np.sum(np.abs(g.astype(np.float64)) ** norm_type) for g in grads) ** (1 / norm_type))
    else:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    coefficient = max_norm / (total + 1e-6)
    if coefficient < 1:
        for g in grads:
            g *= g.dtype.type(coefficient)
    return total
