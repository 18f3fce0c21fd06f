"""Strided-to-contiguous copy on the GPU, for non-contiguous GPU inputs (transposed views, ...)."""
from __future__ import annotations

import functools

from numba import cuda

from .launch import jit


@functools.cache
def gather_strided_kernel(dtype):
    @jit(lineinfo=True)
    def gather_strided(src, offset, shape, strides, dst):
        # One thread per element e of dst (C order over the 4-D ``shape``, leading sizes 1 for
        # fewer dimensions): dst[e] = src[offset + sum(index_k * strides_k)], strides in elements
        # (negative allowed; ``offset`` is where index 0 lies in the flat ``src``).
        e = cuda.grid(1)
        if e >= dst.shape[0]:
            return
        s0, s1, s2, s3 = shape
        t0, t1, t2, t3 = strides
        i3 = e % s3
        r = e // s3
        i2 = r % s2
        r = r // s2
        i1 = r % s1
        i0 = r // s1
        dst[e] = src[offset + i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3]

    return gather_strided
