"""Optimisers for any object with ``params`` and ``grads`` dicts (a layer or a ``Sequential``).

``step()`` updates every array of ``model.params`` in place from ``model.grads`` (read afresh at
each step, since ``backward`` replaces the gradient arrays). Semantics follow ``torch.optim``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam"]


def _non_negative(name, value):
    value = float(value)
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class Optimizer:
    """Base class: holds the model and per-parameter state keyed by parameter name."""

    def __init__(self, model, lr):
        if not (hasattr(model, "params") and hasattr(model, "grads")):
            raise TypeError(f"model must have params and grads dicts, got {type(model).__name__}")
        self.model = model
        self.lr = _non_negative("lr", lr)
        self.state = {}

    def _pairs(self):
        params, grads = self.model.params, self.model.grads
        missing = sorted(set(params) - set(grads))
        if missing:
            raise RuntimeError(f"no gradient for {missing}: call model.backward(...) before step()")
        for name, p in params.items():
            g = grads[name]
            if g.shape != p.shape:
                raise ValueError(f"gradient of {name!r} has shape {g.shape}, the parameter {p.shape}")
            yield name, p, g

    def step(self):
        """Update every parameter once (checks every gradient before changing anything)."""
        pairs = list(self._pairs())
        self._begin_step()
        for name, p, g in pairs:
            self._update(name, p, g)

    def _begin_step(self):
        pass


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay (as ``torch.optim.SGD``)::

        g = grad + weight_decay * p
        v = momentum * v + g          (v = g at the first step)
        p -= lr * v
    """

    def __init__(self, model, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(model, lr)
        self.momentum = _non_negative("momentum", momentum)
        self.weight_decay = _non_negative("weight_decay", weight_decay)

    def _update(self, name, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            v = self.state.get(name)
            if v is None:
                v = self.state[name] = np.array(g, dtype=p.dtype)
            else:
                v *= self.momentum
                v += g
            g = v
        p -= (self.lr * g).astype(p.dtype, copy=False)


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam`` (weight decay added to the gradient)::

        m = b1 * m + (1 - b1) * g;   v = b2 * v + (1 - b2) * g**2
        p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr)
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.betas = (b1, b2)
        self.eps = _non_negative("eps", eps)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.t = 0

    def _begin_step(self):
        self.t += 1

    def _update(self, name, p, g):
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * p
        if name not in self.state:
            self.state[name] = (np.zeros_like(p), np.zeros_like(p))
        m, v = self.state[name]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        m_hat = m / (1 - b1**self.t)
        v_hat = v / (1 - b2**self.t)
        p -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype, copy=False)
