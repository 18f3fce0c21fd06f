"""Softmax cross-entropy: the mean loss over the rows of (R, K) logits against integer labels, and
its gradient. One thread per row (1-D grid, ``launch_config("elementwise", R)``) writes its row of
dlogits and its term of the loss; ``reduce.sum_outer_inner_kernel`` then adds the terms in a fixed
order (reproducible, no atomics)."""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .launch import jit


@functools.cache
def softmax_cross_entropy_kernel(dtype):
    scalar = np.dtype(dtype).type
    zero, one, nan = scalar(0), scalar(1), scalar(math.nan)

    @jit(lineinfo=True)
    def softmax_cross_entropy(logits, labels, dlogits, terms, R, K, count):
        # Row r: z = logits[r] - max, log p = z - log(sum exp z); terms[r] = -log p[label] / count,
        # dlogits[r] = (p - onehot(label)) / count (count: the mean's divisor). Labels are not
        # checked on the host (that would read them back): one outside [0, K) makes its term NaN.
        r = cuda.grid(1)
        if r < R:
            row = r * K
            top = logits[row]
            for k in range(1, K):
                top = max(top, logits[row + k])
            total = zero
            for k in range(K):
                total += math.exp(logits[row + k] - top)
            log_total = math.log(total)
            label = labels[r]
            terms[r] = nan if label < 0 or label >= K else zero
            for k in range(K):
                log_p = logits[row + k] - top - log_total
                if k == label:
                    terms[r] = -log_p / count
                    dlogits[row + k] = (math.exp(log_p) - one) / count
                else:
                    dlogits[row + k] = math.exp(log_p) / count

    return softmax_cross_entropy
