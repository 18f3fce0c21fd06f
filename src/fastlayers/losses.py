"""Losses: softmax cross-entropy (and the softmax that turns scores into the notes' "80% flower,
15% sky" probabilities)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .reference import softmax_cross_entropy

__all__ = ["softmax", "softmax_cross_entropy"]


def softmax(logits: ArrayLike, axis: int = -1) -> np.ndarray:
    """Probabilities ``exp(z) / sum(exp(z))`` along ``axis``, stable for any logits (the maximum is
    subtracted first, so exp never overflows)."""
    z = np.asarray(logits)
    if z.dtype.kind != "f":
        raise TypeError(f"logits must be a floating-point array, got dtype {z.dtype}")
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
