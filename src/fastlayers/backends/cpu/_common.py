"""What the CPU backend's part modules share: per-thread workspaces and C-order inputs."""
import math
import threading
import weakref

import numpy as np

from ..._cpu import bits as _bits
from ..._dispatch import threads_for

BLAS_INT_MAX = 2**31 - 1  # BLAS sizes and leading dimensions are C ints
# Workspaces start on a cache line: NumPy's large buffers start 16 bytes past a page, which puts
# half of a 32-byte vector load from a packed weight across two lines (measured:
# docs/performance.md, "lstm: aligned packed weights").
ALIGNMENT = 64

_local = threading.local()
_caches = weakref.WeakSet()  # every thread's cache, for release_workspaces()


class _Cache:
    """One Python thread's workspaces: ``buffers``, slot -> (uint8 buffer, ALIGNMENT-aligned; the
    typed view of it the last call used, handed out again to a call of the same shape and dtype)."""

    __slots__ = ("buffers", "__weakref__")

    def __init__(self):
        self.buffers = {}


class workspace:
    """``with workspace(slot, shape, dtype) as buf:`` a scratch array of ``shape`` for one call.

    Buffers are reused across the calling Python thread's calls (one per ``slot``), so multi-MiB
    buffers are not faulted in again on every call, and concurrent callers (the kernels run
    without the GIL) never share one. A buffer is checked out of the cache for the whole ``with``
    block and checked back in at its end: a call made meanwhile on the same thread (a signal
    handler, a finalizer run by the garbage collector) finds the slot empty and gets a buffer of
    its own, so it can never overwrite the interrupted call's partial results. Contents are
    undefined, the first element ALIGNMENT-aligned. ``release_workspaces()`` drops what is cached."""

    __slots__ = ("_slot", "_shape", "_dtype", "_entry")

    def __init__(self, slot, shape, dtype):
        self._slot, self._shape, self._dtype = slot, shape, dtype

    def __enter__(self):
        cache = getattr(_local, "cache", None)
        if cache is None:
            cache = _local.cache = _Cache()
            _caches.add(cache)
        entry = cache.buffers.pop(self._slot, None)  # one C call: atomic for signal handlers and threads
        if entry is not None and entry[1].shape == self._shape and entry[1].dtype == self._dtype:
            self._entry = entry  # a small call's set-up costs as much as its kernel: no new view
            return entry[1]
        dtype = np.dtype(self._dtype)
        size = math.prod(self._shape) * dtype.itemsize  # Python ints: exact, and numpy.prod costs microseconds
        buf = None if entry is None else entry[0]
        if buf is None or buf.size < size:
            raw = np.empty(size + ALIGNMENT, dtype=np.uint8)
            start = -raw.ctypes.data % ALIGNMENT
            buf = raw[start:start + size]  # cached aligned, so that a reuse costs no address lookup
        self._entry = (buf, buf[:size].view(dtype).reshape(self._shape))
        return self._entry[1]

    def __exit__(self, *exc):
        cache = _local.cache.buffers
        kept = cache.get(self._slot)
        if kept is None or kept[0].size < self._entry[0].size:  # keep the larger
            cache[self._slot] = self._entry
        self._entry = None
        return False


# What ``derived`` keeps: (kind, address, shape, strides, dtype, options) -> (a copy of the weight,
# what was made from it). Bounded: past either limit the whole cache is dropped.
_derived = {}
DERIVED_MAX_ENTRIES = 32
DERIVED_MAX_BYTES = 64 << 20


def derived(kind, w, options, make):
    """``make()``, the array a kernel derives from the weight array ``w`` (Winograd's transformed
    filters, the direct kernel's packed ones) or None (it cannot be used), made once and handed
    out again, read only, to
    calls on the same array (address, shape, strides, dtype, ``options``) while its bits equal
    those of a copy kept of them: a weight changed in place (an optimiser's step) is derived
    again, and so is one whose zeros changed sign (bits, not values: results stay the same bit
    for bit). The comparison (`_same_bits`) is one pass over w and its copy, stopping at the
    first difference, 5-10x cheaper than the transforms
    (measured: docs/performance.md, "Derived weights kept")."""
    key = (kind, _bits.address(w), w.shape, w.strides, w.dtype.str, options)
    kept = _derived.get(key)
    if kept is not None and _same_bits(kept[0], w):
        return kept[1]
    result = make()
    if result is not None:
        result.flags.writeable = False
    entry = (w.copy(), result)
    if len(_derived) >= DERIVED_MAX_ENTRIES or _derived_bytes() + entry[0].nbytes + _nbytes(result) > DERIVED_MAX_BYTES:
        _derived.clear()
    _derived[key] = entry
    return result


def _same_bits(kept, w):
    """Whether w holds the bits of ``kept``, its C-ordered copy: compiled and threaded (by the
    bytes both reads take) where w is C-ordered too (``_bits.same_bytes``), by NumPy otherwise."""
    if w.flags.c_contiguous:
        return _bits.same_bytes(kept, w, threads_for(2 * w.nbytes))
    bits = np.dtype(f"u{w.dtype.itemsize}")
    return np.array_equal(kept.view(bits), w.view(bits))


def _nbytes(result):
    return 0 if result is None else result.nbytes


def _derived_bytes():
    return sum(copy.nbytes + _nbytes(result) for copy, result in list(_derived.values()))


def release_workspaces():
    """``fastlayers.release_workspaces()``: empty every thread's cache and the derived weights.
    Buffers checked out by a running call stay with it and are cached again when it returns.
    Returns the bytes released."""
    released = _derived_bytes()
    _derived.clear()
    for cache in list(_caches):
        for slot in list(cache.buffers):
            entry = cache.buffers.pop(slot, None)
            if entry is not None:
                released += entry[0].nbytes
    return released


def contiguous(a):
    """``a`` in C order (copied once if it is not); None stays None."""
    return None if a is None else np.ascontiguousarray(a)
