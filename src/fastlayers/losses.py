"""Losses: softmax cross-entropy (and the softmax that turns scores into the notes' "80% flower,
15% sky" probabilities).

``softmax_cross_entropy`` takes host logits (NumPy: fastlayers.reference's) or GPU logits (the
cuda backend's kernels: the loss stays on the GPU as a 0-d device array until read with
``loss.copy_to_host()``, the one transfer of a device-resident training step)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from . import reference
from ._cpu import loss as _kernels
from .ops._checks import FLOAT_DTYPES, array_dtype, check_labels, is_device_array

__all__ = ["softmax", "softmax_cross_entropy"]


def softmax(logits: ArrayLike, axis: int = -1) -> np.ndarray:
    """Probabilities ``exp(z) / sum(exp(z))`` along ``axis``, stable for any logits (the maximum is
    subtracted first, so exp never overflows)."""
    z = np.asarray(logits)
    if z.dtype.kind != "f":
        raise TypeError(f"logits must be a floating-point array, got dtype {z.dtype}")
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) over the last axis against integer ``labels``.

    logits (..., K), labels (...) of ints in [0, K). Returns ``(loss, dlogits)``, dlogits the
    gradient of the mean loss, in the logits' dtype. Stable for any logits (the maximum is
    subtracted before exp). Host logits: loss is a NumPy scalar and labels are range-checked.
    GPU logits: loss is a 0-d device array and dlogits a device array; labels may be on the GPU
    (no transfer) or the host (copied); a label outside [0, K) makes the loss NaN instead of
    raising, since checking would read the labels back to the host."""
    if not is_device_array(logits):
        return _host_softmax_cross_entropy(logits, labels)
    dt = array_dtype("logits", logits)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"logits must be float32 or float64, got {dt}")
    kind = array_dtype("labels", labels)
    if kind.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {kind}")
    shape, label_shape = tuple(logits.shape), tuple(labels.shape)
    if len(shape) < 1 or label_shape != shape[:-1]:
        raise ValueError(f"labels must have shape {shape[:-1]} (logits without its last axis), got {label_shape}")
    from .backends.cuda.training import softmax_cross_entropy as on_device

    return on_device(logits, labels)


def _host_softmax_cross_entropy(logits, labels):
    """The host loss: float32 and float64 scores with at least one class by the compiled rows
    (kernels/cpu/loss.pyx: in double, each result rounded once), others by the reference."""
    z = np.asarray(logits)
    if z.dtype not in FLOAT_DTYPES or z.ndim < 1 or z.shape[-1] == 0:
        return reference.softmax_cross_entropy(logits, labels)
    labels = check_labels(labels, z.shape)
    count = max(labels.size, 1)
    rows = np.ascontiguousarray(z).reshape(-1, z.shape[-1])
    dz = np.empty_like(rows)
    total = _kernels.softmax_cross_entropy(rows, labels.astype(np.intp, copy=False).reshape(-1), dz, 1 / count)
    return z.dtype.type(total / count), dz.reshape(z.shape)
