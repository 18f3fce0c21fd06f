"""What the CPU backend's part modules share: per-thread workspaces and C-order inputs."""
import threading

import numpy as np

_local = threading.local()


def workspace(slot, shape, dtype):
    """A scratch array of ``shape`` reused across this Python thread's calls (one per ``slot``),
    so multi-MiB buffers are not faulted in again on every call, and concurrent callers (the
    kernels run without the GIL) never share one. Contents are undefined."""
    cache = _local.__dict__.setdefault("buffers", {})
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = cache.get(slot)
    if buf is None or buf.size < size:
        buf = cache[slot] = np.empty(size, dtype=np.uint8)
    return buf[:size].view(dtype).reshape(shape)


def contiguous(a):
    """``a`` in C order (copied once if it is not); None stays None."""
    return None if a is None else np.ascontiguousarray(a)
