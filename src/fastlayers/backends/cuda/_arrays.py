"""What the cuda backend's op modules share: GPU array detection, views and contiguous copies, the
per-call input/output handling (``Call``), cached device workspaces and the launch helpers."""
from __future__ import annotations

import functools
import threading

import numpy as np


@functools.cache
def kernels():
    """The kernel modules, as attributes activation, batch_norm, conv2d, gated_rnn, launch, layout,
    loss, max_pool2d, optim, reduce, rnn (imports numba)."""
    from types import SimpleNamespace

    from ..._cuda import (activation, batch_norm, conv2d, gated_rnn, launch, layout, loss, max_pool2d, optim, reduce,
                          rnn)

    return SimpleNamespace(activation=activation, batch_norm=batch_norm, conv2d=conv2d, gated_rnn=gated_rnn,
                           launch=launch, layout=layout, loss=loss, max_pool2d=max_pool2d, optim=optim, reduce=reduce,
                           rnn=rnn)


# ---------------------------------------------------------------------------- arrays


def flat(d):
    return d if d.ndim == 1 else d.reshape(d.size)


def _device_array(a):
    """``a`` as a Numba device array if it lives on the GPU (no copy), else None."""
    from numba import config, cuda

    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    if config.ENABLE_CUDASIM:  # the simulator's device arrays have no __cuda_array_interface__
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        if isinstance(a, FakeCUDAArray):
            return a
    return None


def strided_span(shape, strides):
    """(lo, hi): the element offsets, relative to index 0, of the first and last element that an
    array of ``shape`` and ``strides`` (in elements, any sign) touches."""
    lo = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides))
    return lo, hi


class _ArrayInterface:
    """A bare ``__cuda_array_interface__`` holder: views existing GPU memory under a new shape
    (``owner``: the array whose memory it is, kept alive as long as the view)."""

    def __init__(self, interface, owner=None):
        self.__cuda_array_interface__ = interface
        self.owner = owner


def transpose_view(d):
    """The transpose of 2-D device array ``d`` as a view of the same memory (Numba's ``d.T``
    launches a copy kernel; the simulator's is a NumPy view already)."""
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        return d.T
    interface = dict(d.__cuda_array_interface__)
    interface.update(shape=tuple(d.shape)[::-1], strides=tuple(d.strides)[::-1])
    return cuda.as_cuda_array(_ArrayInterface(interface, owner=d))


def is_transpose_of_contiguous(d):
    """Whether 2-D ``d`` is the transpose of a C-ordered array (and not C-ordered itself): a
    kernel may then read ``d.T`` as a row-major matrix instead of copying ``d``."""
    return d.ndim == 2 and not d.is_c_contiguous() and d.is_f_contiguous()


_workspaces = threading.local()


class Call:
    """One op call: moves inputs to the GPU, allocates or checks outputs, returns results in the
    callers' family (NumPy in -> NumPy out; GPU in -> device arrays out)."""

    def __init__(self, *arrays):
        from numba import cuda

        self.cuda = cuda
        self.gpu = any(_device_array(a) is not None for a in arrays)

    def input(self, name, a):
        if a is None:
            return None
        d = _device_array(a)
        if d is None:
            return self.cuda.to_device(np.ascontiguousarray(a))
        return d if d.is_c_contiguous() else self._contiguous_copy(name, d)

    def _contiguous_copy(self, name, d):
        """A C-ordered copy of non-contiguous GPU array ``d``, made on the GPU: the kernel reads
        the memory ``d`` spans as one flat array, at ``d``'s strides."""
        from numba import config

        if config.ENABLE_CUDASIM:  # the simulator's device arrays expose no memory pointer
            return self.cuda.to_device(np.ascontiguousarray(d.copy_to_host()))
        k = kernels()
        item = d.dtype.itemsize
        if any(s % item for s in d.strides):
            raise ValueError(f"{name} has strides {d.strides}, not multiples of its item size {item}")
        strides = [s // item for s in d.strides]
        lo, hi = strided_span(d.shape, strides)
        out = self.empty(d.shape, d.dtype)
        if d.size == 0:
            return out
        interface = d.__cuda_array_interface__
        span = self.cuda.as_cuda_array(_ArrayInterface(dict(
            shape=(hi - lo + 1,), strides=None, typestr=interface["typestr"],
            data=(interface["data"][0] + lo * item, False), version=3,
        )))
        pad = 4 - d.ndim
        grid, block = k.launch.launch_config("elementwise", d.size)
        k.layout.gather_strided_kernel(d.dtype)[grid, block](
            span, -lo, (1,) * pad + tuple(d.shape), (0,) * pad + tuple(strides), flat(out)
        )
        return out

    def empty(self, shape, dtype):
        return self.cuda.device_array(shape, dtype=dtype)

    def scratch(self, name, shape, dtype):
        """A device buffer for intermediate ``name``, kept and reused by later calls (growing as
        needed): fresh device allocations cost more than many of our kernels. Kept per host
        thread, so two threads never share one; one thread's launches run in issue order on the
        default stream, so a call never overwrites what an earlier call still reads."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        key = (name, dtype)
        buf = _workspaces.__dict__.get(key)
        if buf is None or buf.size < size:
            buf = _workspaces.__dict__[key] = self.cuda.device_array(max(size, 1), dtype=dtype)
        return buf[:size].reshape(shape)

    def output(self, name, out, shape, dtype):
        """The device buffer for an output: the caller's GPU ``out`` (checked), else a new one."""
        if out is None or not self.gpu:
            return self.empty(shape, dtype)
        d = _device_array(out)
        if d is None:
            raise TypeError(f"{name} must be a GPU array when the inputs are on the GPU, got {type(out).__name__}")
        if tuple(d.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(d.shape)}")
        if np.dtype(d.dtype) != np.dtype(dtype):
            raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {d.dtype}")
        if not d.is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous")
        return d

    def result(self, d, out):
        if self.gpu:
            return d if out is None else out  # the caller's own object (torch, CuPy, ...)
        if out is not None:
            d.copy_to_host(out)
            return out
        return d.copy_to_host()


def bias_or_empty(call, b, dtype):
    """b on the GPU, or an empty array for None: the Numba kernels add a bias only when it has
    elements (one compiled kernel for both cases, where a None argument would make two)."""
    return call.input("b", b) if b is not None else call.empty(0, dtype)


def fill(d, value):
    launch, reduce = kernels().launch, kernels().reduce
    if d.size:
        grid, block = launch.launch_config("elementwise", d.size)
        reduce.fill_kernel(d.dtype)[grid, block](flat(d), value, d.size)


def gemm(kernel, a, b, c, p, q, geo, M, N, K, batches=1, k_chunk=None):
    """Launch a tiled-GEMM kernel over a (M, N) result, ``batches`` x splits blocks deep."""
    launch = kernels().launch
    if M == 0 or N == 0:
        return
    k_chunk = max(K, 1) if k_chunk is None else k_chunk
    splits = max(1, -(-K // k_chunk))
    grid, block = launch.launch_config("gemm", M, N, batches * splits)
    kernel[grid, block](flat(a), flat(b), flat(c), flat(p), flat(q), geo, M, N, K, k_chunk)


def split_k_gemm(call, kernel, a, b, c, geo, M, N, K, batches, total):
    """A GEMM whose K is long and M x N small (weight gradients), split along K into partial
    products summed by a second kernel in a fixed order: reproducible, no atomics.
    ``total`` is the element count of ``c`` (all batches)."""
    launch, reduce = kernels().launch, kernels().reduce
    splits, chunk = launch.split_k(M, N, K, batches)
    if splits == 1:
        gemm(kernel, a, b, c, c, c, geo, M, N, K, batches, chunk)
        return
    partial = call.scratch("split-k partial sums", splits * total, c.dtype)
    gemm(kernel, a, b, partial, c, c, geo, M, N, K, batches, chunk)
    grid, block = launch.launch_config("elementwise", total)
    reduce.sum_splits_kernel(c.dtype)[grid, block](partial, flat(c), splits, total)


def column_sums(a, out, I, J, K):
    """out[j] = sum of a[i, j, k] over i and k, for a flat (I, J, K) array."""
    launch, reduce = kernels().launch, kernels().reduce
    if J:
        grid, block = launch.launch_config("reduce", J)
        reduce.sum_outer_inner_kernel(out.dtype)[grid, block](flat(a), out, I, J, K)


