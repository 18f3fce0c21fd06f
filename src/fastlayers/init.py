"""Parameter initialisers, as ``torch.nn.init``: each fills an array in place and returns it.

Fan-in and fan-out follow PyTorch for a weight of shape (out, in, *kernel), like Conv2D's ``w``:
fan_in = in * prod(kernel), fan_out = out * prod(kernel). fastlayers' Dense and RNN weights are
(in_features, out_features), the transpose of PyTorch's: pass ``fan_in`` and ``fan_out`` for them
(``Layer.fans(name)`` gives a layer's), as the layers' own initialisation does.

``rng`` is a seed or a ``numpy.random.Generator``; values are drawn in float64 and rounded to the
array's dtype.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["calculate_gain", "uniform_", "normal_", "zeros_", "ones_", "kaiming_uniform_", "kaiming_normal_",
           "xavier_uniform_", "xavier_normal_", "orthogonal_"]

_GAINS = {"linear": 1.0, "conv2d": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0)}


def calculate_gain(nonlinearity, param=None):
    """The recommended gain of ``nonlinearity`` ("linear", "conv2d", "sigmoid", "tanh", "relu",
    "leaky_relu" with negative slope ``param``, default 0.01), as ``torch.nn.init.calculate_gain``."""
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"nonlinearity must be one of {sorted(_GAINS) + ['leaky_relu']}, got {nonlinearity!r}")
    return _GAINS[nonlinearity]


def _fill(array, values):
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise TypeError(f"array must be a floating-point numpy.ndarray, got {type(array).__name__}")
    array[...] = values
    return array


def _fans(array, fan_in, fan_out):
    """(fan_in, fan_out): given, or PyTorch's reading of a (out, in, *kernel) shape."""
    if fan_in is None or fan_out is None:
        if array.ndim < 2:
            raise ValueError(f"fan in and fan out need an array of at least 2 dimensions, got shape {array.shape}")
        receptive = int(np.prod(array.shape[2:], dtype=np.int64))
        fan_in = array.shape[1] * receptive if fan_in is None else fan_in
        fan_out = array.shape[0] * receptive if fan_out is None else fan_out
    return fan_in, fan_out


def uniform_(array, a=0.0, b=1.0, rng=None):
    return _fill(array, np.random.default_rng(rng).uniform(a, b, array.shape))


def normal_(array, mean=0.0, std=1.0, rng=None):
    return _fill(array, np.random.default_rng(rng).normal(mean, std, array.shape))


def zeros_(array):
    return _fill(array, 0)


def ones_(array):
    return _fill(array, 1)


def _kaiming_std(array, a, mode, nonlinearity, fan_in, fan_out):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(array, fan_in, fan_out)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None, fan_in=None, fan_out=None):
    """He et al. (2015): U(-bound, bound), bound = gain * sqrt(3 / fan). PyTorch's Conv2d and
    Linear weights default to a = sqrt(5), that is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = math.sqrt(3.0) * _kaiming_std(array, a, mode, nonlinearity, fan_in, fan_out)
    return uniform_(array, -bound, bound, rng)


def kaiming_normal_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None, fan_in=None, fan_out=None):
    """He et al. (2015): N(0, std^2), std = gain / sqrt(fan) (with ReLU: sqrt(2 / fan_in))."""
    return normal_(array, 0.0, _kaiming_std(array, a, mode, nonlinearity, fan_in, fan_out), rng)


def xavier_uniform_(array, gain=1.0, rng=None, fan_in=None, fan_out=None):
    """Glorot and Bengio (2010): U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(array, fan_in, fan_out)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(array, -bound, bound, rng)


def xavier_normal_(array, gain=1.0, rng=None, fan_in=None, fan_out=None):
    """Glorot and Bengio (2010): N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(array, fan_in, fan_out)
    return normal_(array, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng)


def orthogonal_(array, gain=1.0, rng=None):
    """A (semi-)orthogonal matrix (Saxe et al., 2013) over the first axis and the others
    flattened, uniformly distributed (QR of a Gaussian matrix with the signs of R's diagonal)."""
    if array.ndim < 2:
        raise ValueError(f"orthogonal_ needs an array of at least 2 dimensions, got shape {array.shape}")
    rows, cols = array.shape[0], array.size // array.shape[0]
    gaussian = np.random.default_rng(rng).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(gaussian)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(array, gain * q.reshape(array.shape))
