"""max_pool2d on the CPU backend: wraps kernels/cpu/max_pool2d.pyx.

Arguments arrive validated by the max_pool2d spec (fastlayers.ops.max_pool2d); here only the sizes
the kernels cannot take (empty arrays) are handled, and the caller's ``out`` buffers (None where
not given: the spec's entry says ``allocates``) are written in place.
"""
import numpy as np

from ..._cpu import max_pool2d as _kernels
from ..._dispatch import threads_for
from ._common import workspace
from ...ops.max_pool2d import check_indices_range

# Outputs at least this large are written by the 2x2 path with non-temporal stores (around the
# cache): they cannot stay cached for the next layer anyway (a typical L3 is 16-32 MiB, shared by
# all cores), and skipping the read-before-write of each line saves memory traffic: a gain from
# pool-112's size, even at half of it (docs/performance.md). Smaller outputs stay in cache, where
# the next op finds them.
STREAMING_MIN_BYTES = 16 << 20

# The general forward copies the input rows a row of windows reads into phase rows
# (kernels/cpu/max_pool2d_phases.h): KH rows, kept in a thread's L2 cache. Larger windows
# (global pooling of big planes) scan each window in place instead.
PHASE_ROWS_MAX_BYTES = 1 << 20

# The work argument of the calls that need none (the 2x2 path): never written.
_NO_WORK = {np.dtype(dt): np.empty((1, 1), dt) for dt in (np.float32, np.float64)}


def forward(x, g, outs):
    """(y, indices); indices None when the caller takes none (``g.indices`` False, no buffer given):
    the kernel then writes the maxima only."""
    y, indices = outs
    if y is None:
        y = np.empty(g.y_shape, dtype=x.dtype)
    if indices is None and g.indices:
        indices = np.empty(g.y_shape, dtype=np.int64)
    planes = g.N * g.C
    if planes and g.OH and g.OW:
        threads = threads_for(y.size * g.KH * g.KW)
        cells = _kernels.phase_cells(g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.stride_h, g.stride_w, g.pad_h, g.pad_w)
        args = (np.ascontiguousarray(x).reshape(planes, g.H, g.W), y.reshape(planes, g.OH, g.OW),
                None if indices is None else indices.reshape(planes, g.OH, g.OW),
                g.KH, g.KW, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
                y.nbytes + (0 if indices is None else indices.nbytes) >= STREAMING_MIN_BYTES, g.relu)
        if cells == 0:  # the 2x2 path: no workspace to check out (microseconds a call)
            _kernels.max_pool2d_forward(*args, _NO_WORK[x.dtype], threads)
            return y, indices
        if cells * x.itemsize > PHASE_ROWS_MAX_BYTES:
            cells = 1  # too small: the kernel scans each window instead
        with workspace("max_pool2d_phases", (threads, cells), x.dtype) as work:
            _kernels.max_pool2d_forward(*args, work, threads)
    return y, indices


def backward(dy, indices, g, outs):
    (out,) = outs
    if g.H * g.W == 0:
        check_indices_range(indices, 0)
    elif out is not None and indices.size:
        # The kernel finds bad indices as it writes: the caller's buffer is checked first, so an
        # error leaves it untouched, as the reference does.
        flat = np.ascontiguousarray(indices).reshape(-1)
        if _kernels.count_out_of_range(flat, g.H * g.W, threads_for(flat.size)):
            check_indices_range(indices, g.H * g.W)  # raises, naming the range found
    dx = np.empty(g.x_shape, dtype=dy.dtype) if out is None else out
    planes = g.N * g.C
    if planes == 0 or g.H * g.W == 0:
        return (dx,)
    if dy.size == 0:  # no outputs: nothing routes anywhere
        dx.fill(0)
        return (dx,)
    bad = _kernels.max_pool2d_backward(
        np.ascontiguousarray(dy).reshape(planes, g.OH, g.OW),
        np.ascontiguousarray(indices).reshape(planes, g.OH, g.OW),
        dx.reshape(planes, g.H, g.W),
        dx.nbytes >= STREAMING_MIN_BYTES,
        threads_for(dx.size + dy.size),
    )
    if bad:
        raise ValueError(f"indices must lie in [0, H*W) = [0, {g.H * g.W}); {bad} do not")
    return (dx,)
