"""C-order index arithmetic on the GPU, and the strided-to-contiguous copy for non-contiguous GPU
inputs (transposed views, ...)."""
from __future__ import annotations

import functools

from numba import cuda

from .launch import jit


@cuda.jit(device=True, inline=True)
def unravel3(i, n1, n2):
    """``(i0, i1, i2)``: the coordinates of flat index ``i`` in a C-order grid (., n1, n2)."""
    i2 = i % n2
    t = i // n2
    i1 = t % n1
    return t // n1, i1, i2


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
        i0, i1, i2 = unravel3(e // s3, s1, s2)
        dst[e] = src[offset + i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3]

    return gather_strided
