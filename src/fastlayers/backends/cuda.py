"""The ``"cuda"`` backend: Numba CUDA kernels (``kernels/cuda``, installed as ``fastlayers._cuda``).

Arrays: NumPy inputs are copied to the GPU and the results copied back into NumPy arrays (or the
caller's ``out``). GPU arrays (anything with ``__cuda_array_interface__``: Numba device arrays,
CuPy arrays, PyTorch CUDA tensors) are used in place, without a copy, and the results are Numba
device arrays (wrap them with ``cupy.asarray`` / ``torch.as_tensor(..., device="cuda")`` for free),
or the caller's GPU ``out`` buffers. Non-contiguous GPU inputs are copied once, on the GPU.

Numba is imported only when an op runs or ``availability()`` is asked, never by ``import
fastlayers``; each kernel is compiled on its first launch (per dtype), then cached in the process.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

OPS = frozenset(
    {"conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
     "rnn_step", "rnn_step_backward", "rnn", "rnn_backward", "lstm", "lstm_backward", "gru", "gru_backward"}
)

# algo="auto" takes the direct kernel when a group has fewer filters than this: the implicit GEMM
# then fills less than a quarter of its TILE_N = 64 columns (e.g. lenet's 8 filters, depthwise).
# A rule from the tile shape, not yet from GPU measurements.
DIRECT_MAX_FILTERS_PER_GROUP = 16


@functools.cache
def availability():
    try:
        from numba import config, cuda
    except ImportError as exc:
        return False, f"numba is not installed ({exc}); pip install 'fastlayers[cuda]'"
    if config.ENABLE_CUDASIM:
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct, but very slow"
    if not cuda.is_available():
        why = " ".join(str(cuda.cuda_error() or "numba.cuda.is_available() is False").split())
        return False, f"no usable CUDA GPU/driver: {why}"
    name = cuda.get_current_device().name
    return True, f"GPU {name.decode() if isinstance(name, bytes) else name}"


@functools.cache
def _k():
    """The kernel modules, as attributes conv2d, gated_rnn, launch, layout, max_pool2d, reduce, rnn
    (imports numba)."""
    from types import SimpleNamespace

    from .._cuda import conv2d, gated_rnn, launch, layout, max_pool2d, reduce, rnn

    return SimpleNamespace(conv2d=conv2d, gated_rnn=gated_rnn, launch=launch, layout=layout, max_pool2d=max_pool2d,
                           reduce=reduce, rnn=rnn)


# ---------------------------------------------------------------------------- arrays


def _flat(d):
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
    """A bare ``__cuda_array_interface__`` holder: views existing GPU memory under a new shape."""

    def __init__(self, interface):
        self.__cuda_array_interface__ = interface


_workspaces = threading.local()


class _Call:
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
        k = _k()
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
            span, -lo, (1,) * pad + tuple(d.shape), (0,) * pad + tuple(strides), _flat(out)
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


def _bias(call, b, dtype):
    """b on the GPU, or an empty array: the kernels add a bias only when it has elements."""
    return call.input("b", b) if b is not None else call.empty(0, dtype)


def _fill(d, value):
    launch, reduce = _k().launch, _k().reduce
    if d.size:
        grid, block = launch.launch_config("elementwise", d.size)
        reduce.fill_kernel(d.dtype)[grid, block](_flat(d), value, d.size)


def _gemm(kernel, a, b, c, p, q, geo, M, N, K, batches=1, k_chunk=None):
    """Launch a tiled-GEMM kernel over a (M, N) result, ``batches`` x splits blocks deep."""
    launch = _k().launch
    if M == 0 or N == 0:
        return
    k_chunk = max(K, 1) if k_chunk is None else k_chunk
    splits = max(1, -(-K // k_chunk))
    grid, block = launch.launch_config("gemm", M, N, batches * splits)
    kernel[grid, block](_flat(a), _flat(b), _flat(c), _flat(p), _flat(q), geo, M, N, K, k_chunk)


def _split_k_gemm(call, kernel, a, b, c, geo, M, N, K, batches, total):
    """A GEMM whose K is long and M x N small (weight gradients), split along K into partial
    products summed by a second kernel in a fixed order: reproducible, no atomics.
    ``total`` is the element count of ``c`` (all batches)."""
    launch, reduce = _k().launch, _k().reduce
    splits, chunk = launch.split_k(M, N, K, batches)
    if splits == 1:
        _gemm(kernel, a, b, c, c, c, geo, M, N, K, batches, chunk)
        return
    partial = call.scratch("split-k partial sums", splits * total, c.dtype)
    _gemm(kernel, a, b, partial, c, c, geo, M, N, K, batches, chunk)
    grid, block = launch.launch_config("elementwise", total)
    reduce.sum_splits_kernel(c.dtype)[grid, block](partial, _flat(c), splits, total)


def _column_sums(a, out, I, J, K):
    """out[j] = sum of a[i, j, k] over i and k, for a flat (I, J, K) array."""
    launch, reduce = _k().launch, _k().reduce
    if J:
        grid, block = launch.launch_config("reduce", J)
        reduce.sum_outer_inner_kernel(out.dtype)[grid, block](_flat(a), out, I, J, K)


# ---------------------------------------------------------------------------- conv2d


def _conv2d_algo(algo, g):
    if algo == "auto":
        return "direct" if g.F // g.groups < DIRECT_MAX_FILTERS_PER_GROUP else "im2col"
    return algo


def conv2d(x, w, b, g, algo, out):
    conv, launch = _k().conv2d, _k().launch
    call = _Call(x, w, b)
    xd, wd = call.input("x", x), call.input("w", w)
    bd = _bias(call, b, xd.dtype)
    y = call.output("out", out, g.y_shape, xd.dtype)
    geo = conv.conv2d_geo(g)
    if y.size:
        if _conv2d_algo(algo, g) == "direct":
            grid, block = launch.launch_config("direct", g.N * g.F, g.OH * g.OW)
            conv.direct_kernel(xd.dtype)[grid, block](_flat(xd), _flat(wd), bd, _flat(y), geo)
        else:
            K = g.C // g.groups * g.KH * g.KW
            _gemm(conv.gemm_kernel("forward", xd.dtype), xd, wd, y, bd, bd, geo,
                  g.N * g.OH * g.OW, g.F // g.groups, K, g.groups)
    return call.result(y, out)


def conv2d_backward(dy, x, w, g, algo, out):
    """dX and dW by their implicit GEMMs (the same kernels for every ``algo``), db by reduction."""
    conv = _k().conv2d
    call = _Call(dy, x, w)
    outs = out if out is not None else (None, None, None)
    dyd, xd, wd = call.input("dy", dy), call.input("x", x), call.input("w", w)
    dt = xd.dtype
    dx = call.output("out[0]", outs[0], g.x_shape, dt)
    dw = call.output("out[1]", outs[1], g.w_shape, dt)
    db = call.output("out[2]", outs[2], (g.F,), dt)
    geo = conv.conv2d_geo(g)
    Cg, Fg, taps = g.C // g.groups, g.F // g.groups, g.KH * g.KW
    _gemm(conv.gemm_kernel("dx", dt), dyd, wd, dx, dx, dx, geo, g.N * g.H * g.W, Cg, Fg * taps, g.groups)
    _split_k_gemm(call, conv.gemm_kernel("dw", dt), dyd, xd, dw, geo, Fg, Cg * taps, g.N * g.OH * g.OW,
                  g.groups, dw.size)
    _column_sums(dyd, db, g.N, g.F, g.OH * g.OW)
    return tuple(call.result(d, o) for d, o in zip((dx, dw, db), outs))


# ---------------------------------------------------------------------------- max_pool2d


def max_pool2d(x, g, out):
    launch, pool = _k().launch, _k().max_pool2d
    call = _Call(x)
    outs = out if out is not None else (None, None)
    xd = call.input("x", x)
    y = call.output("out[0]", outs[0], g.y_shape, xd.dtype)
    indices = call.output("out[1]", outs[1], g.y_shape, np.int64)
    if y.size:
        grid, block = launch.launch_config("elementwise", y.size)
        pool.forward_kernel(xd.dtype)[grid, block](_flat(xd), _flat(y), _flat(indices), pool.pool2d_geo(g))
    return call.result(y, outs[0]), call.result(indices, outs[1])


def max_pool2d_backward(dy, indices, input_shape, out):
    launch, pool = _k().launch, _k().max_pool2d
    call = _Call(dy, indices)
    dyd, idx = call.input("dy", dy), call.input("indices", indices)
    N, C, H, W = input_shape
    dx = call.output("out", out, input_shape, dyd.dtype)
    _fill(dx, 0)
    if dyd.size:
        bad = call.scratch("bad index flag", 1, np.int32)
        bad.copy_to_device(np.zeros(1, dtype=np.int32))
        grid, block = launch.launch_config("elementwise", dyd.size)
        pool.backward_kernel(dyd.dtype)[grid, block](
            _flat(dyd), _flat(idx), _flat(dx), bad, N * C, dyd.shape[2] * dyd.shape[3], H * W
        )
        if bad.copy_to_host()[0]:
            raise ValueError(f"indices must lie in [0, H*W) = [0, {H * W}); some do not (those were skipped)")
    return call.result(dx, out)


# ---------------------------------------------------------------------------- rnn


def _rnn_forward(call, xd, h0d, Wxd, Whd, bd, hs):
    """hs (T, N, H) = all states; xd (T, N, D); h0d None for zeros."""
    rnn = _k().rnn
    T, N, D = xd.shape
    H = hs.shape[2]
    dt = xd.dtype
    if h0d is None:
        h0d = call.scratch("zero initial state", (N, H), dt)
        _fill(h0d, 0)
    # x @ Wx + b for every step in one GEMM, then the recurrence, one launch per step (no host
    # synchronisation in between: launches queue on the stream).
    _gemm(rnn.gemm_kernel("ab_bias", dt), xd, Wxd, hs, bd, bd, rnn.gemm_geo(T * N, H, D), T * N, H, D)
    step = rnn.gemm_kernel("ab_tanh", dt)
    h0f, Whf, hsf = _flat(h0d), _flat(Whd), _flat(hs)  # once, not per step: launches are host-bound
    for t in range(T):
        a, a_offset = (h0f, 0) if t == 0 else (hsf, (t - 1) * N * H)
        _gemm(step, a, Whf, hsf, hsf, hsf, rnn.gemm_geo(N, H, H, a_offset, 0, t * N * H), N, H, H)


def _rnn_backward(call, dhs, xd, h0d, Wxd, Whd, hs, dx, dh0, dWx, dWh, db):
    launch, rnn = _k().launch, _k().rnn
    T, N, D = xd.shape
    H = hs.shape[2]
    dt = xd.dtype
    if T == 0 or N == 0:
        for d in (dx, dh0, dWx, dWh, db):
            _fill(d, 0)
        return
    # dz[t] = dL/d(pre-activation of step t), seeded at the last step, then back through time.
    dz = call.scratch("rnn pre-activation gradients", (T, N, H), dt)
    grid, block = launch.launch_config("elementwise", N * H)
    rnn.tanh_grad_kernel(dt)[grid, block](_flat(dz), _flat(dhs), _flat(hs), (T - 1) * N * H, N * H)
    back = rnn.gemm_kernel("abt_tanh_grad", dt)
    dzf, Whf, dhsf, hsf = _flat(dz), _flat(Whd), _flat(dhs), _flat(hs)
    for t in range(T - 1, 0, -1):
        _gemm(back, dzf, Whf, dzf, dhsf, hsf, rnn.gemm_geo(N, H, H, t * N * H, 0, (t - 1) * N * H), N, H, H)
    abt = rnn.gemm_kernel("abt", dt)
    _gemm(abt, dz, Whd, dh0, dh0, dh0, rnn.gemm_geo(N, H, H), N, H, H)
    _gemm(abt, dz, Wxd, dx, dx, dx, rnn.gemm_geo(T * N, D, H), T * N, D, H)
    # Weight gradients: X^T dz and Hprev^T dz over all T*N rows, Hprev = [h0, hs[:-1]].
    atb = rnn.gemm_kernel("atb", dt)
    _split_k_gemm(call, atb, xd, dz, dWx, rnn.gemm_geo(D, H, T * N), D, H, T * N, 1, D * H)
    hprev = call.scratch("rnn previous states", (T, N, H), dt)
    if h0d is None:
        _fill(hprev[0], 0)
    else:
        hprev[0].copy_to_device(h0d)
    if T > 1:
        hprev[1:].copy_to_device(hs[: T - 1])
    _split_k_gemm(call, atb, hprev, dz, dWh, rnn.gemm_geo(H, H, T * N), H, H, T * N, 1, H * H)
    _column_sums(dz, db, T * N, H, 1)


def rnn(x_seq, h0, Wx, Wh, b, out):
    call = _Call(x_seq, h0, Wx, Wh, b)
    xd = call.input("x_seq", x_seq)
    T, N, _ = xd.shape
    H = Wx.shape[1]
    hs = call.output("out", out, (T, N, H), xd.dtype)
    _rnn_forward(call, xd, call.input("h0", h0), call.input("Wx", Wx), call.input("Wh", Wh),
                 _bias(call, b, xd.dtype), hs)
    return call.result(hs, out)


def rnn_step(x, h_prev, Wx, Wh, b, out):
    call = _Call(x, h_prev, Wx, Wh, b)
    xd = call.input("x", x)
    N, D = xd.shape
    H = Wx.shape[1]
    h = call.output("out", out, (N, H), xd.dtype)
    _rnn_forward(call, xd.reshape(1, N, D), call.input("h_prev", h_prev), call.input("Wx", Wx),
                 call.input("Wh", Wh), _bias(call, b, xd.dtype), h.reshape(1, N, H))
    return call.result(h, out)


def _backward_outputs(call, outs, shapes, dt):
    outs = outs if outs is not None else (None,) * len(shapes)
    names = [f"out[{i}]" for i in range(len(shapes))]
    return outs, [call.output(n, o, s, dt) for n, o, s in zip(names, outs, shapes)]


def rnn_backward(dhs, x_seq, h0, Wx, Wh, hs, out):
    call = _Call(dhs, x_seq, h0, Wx, Wh, hs)
    xd = call.input("x_seq", x_seq)
    T, N, D = xd.shape
    H = Wx.shape[1]
    shapes = ((T, N, D), (N, H), (D, H), (H, H), (H,))
    outs, grads = _backward_outputs(call, out, shapes, xd.dtype)
    _rnn_backward(call, call.input("dhs", dhs), xd, call.input("h0", h0), call.input("Wx", Wx),
                  call.input("Wh", Wh), call.input("hs", hs), *grads)
    return tuple(call.result(d, o) for d, o in zip(grads, outs))


def rnn_step_backward(dh, x, h_prev, Wx, Wh, h, out):
    """One step is the sequence backward with T = 1 and h0 = h_prev."""
    call = _Call(dh, x, h_prev, Wx, Wh, h)
    xd = call.input("x", x)
    N, D = xd.shape
    H = Wx.shape[1]
    shapes = ((N, D), (N, H), (D, H), (H, H), (H,))
    outs, grads = _backward_outputs(call, out, shapes, xd.dtype)
    seq = lambda d, width: d.reshape(1, N, width)  # noqa: E731  (a view, no copy)
    dx = grads[0]
    _rnn_backward(call, seq(call.input("dh", dh), H), seq(xd, D), call.input("h_prev", h_prev),
                  call.input("Wx", Wx), call.input("Wh", Wh), seq(call.input("h", h), H),
                  seq(dx, D), *grads[1:])
    return tuple(call.result(d, o) for d, o in zip(grads, outs))


# ---------------------------------------------------------------------------- lstm, gru
# The GEMMs of the RNN module, the gates in kernels/cuda/gated_rnn.py: per step one launch of
# h_prev @ Wh and one of the cell (forward), or of the backward cell and d(pre-activations) @ Wh^T.


def _zeros_state(call, name, s, N, H, dt):
    if s is not None:
        return s
    z = call.scratch(name, (N, H), dt)
    _fill(z, 0)
    return z


def _previous_states(call, name, s0, ss):
    """(T, N, H): s0, then ss[:-1], on the device."""
    T = ss.shape[0]
    prev = call.scratch(name, ss.shape, ss.dtype)
    prev[0].copy_to_device(s0)
    if T > 1:
        prev[1:].copy_to_device(ss[: T - 1])
    return prev


def _optional(call, name, a, dt):
    """``a`` on the GPU, or an empty array: the kernels skip an input with no elements."""
    return call.input(name, a) if a is not None else call.empty(0, dt)


def _pre_activations(call, xd, hprev, Wxd, Whd):
    """The backward's recomputed pre-activations of every step, x @ Wx and h_prev @ Wh, each
    (T, N, G*H) (without the biases), in scratch buffers the backward cells overwrite."""
    rnn = _k().rnn
    T, N, D = xd.shape
    H, G = Whd.shape
    dt = xd.dtype
    zx = call.scratch("gated pre-activations", (T, N, G), dt)
    zh = call.scratch("gated recurrent pre-activations", (T, N, G), dt)
    ab = rnn.gemm_kernel("ab", dt)
    _gemm(ab, xd, Wxd, zx, zx, zx, rnn.gemm_geo(T * N, G, D), T * N, G, D)
    _gemm(ab, hprev, Whd, zh, zh, zh, rnn.gemm_geo(T * N, G, H), T * N, G, H)
    return zx, zh


def _zero_results(call, grads, outs):
    """An empty sequence or batch: every gradient is zeros."""
    for d in grads:
        _fill(d, 0)
    return tuple(call.result(d, o) for d, o in zip(grads, outs))


def _weight_gradients(call, xd, hprev, dzx, dzh, dWx, dWh, dbx, dbh):
    rnn = _k().rnn
    T, N, D = xd.shape
    H, G = dWh.shape
    atb = rnn.gemm_kernel("atb", xd.dtype)
    _split_k_gemm(call, atb, xd, dzx, dWx, rnn.gemm_geo(D, G, T * N), D, G, T * N, 1, D * G)
    _split_k_gemm(call, atb, hprev, dzh, dWh, rnn.gemm_geo(H, G, T * N), H, G, T * N, 1, H * G)
    _column_sums(dzx, dbx, T * N, G, 1)
    if dbh is not None:
        _column_sums(dzh, dbh, T * N, G, 1)


def lstm(x_seq, h0, c0, Wx, Wh, b, out):
    launch, rnn, gated = _k().launch, _k().rnn, _k().gated_rnn
    call = _Call(x_seq, h0, c0, Wx, Wh, b)
    outs = out if out is not None else (None, None)
    xd = call.input("x_seq", x_seq)
    T, N, D = xd.shape
    H, G = Wh.shape
    dt = xd.dtype
    hs = call.output("out[0]", outs[0], (T, N, H), dt)
    cs = call.output("out[1]", outs[1], (T, N, H), dt)
    if hs.size:
        Wxd, Whd, bd = call.input("Wx", Wx), call.input("Wh", Wh), _bias(call, b, dt)
        h0d = _zeros_state(call, "zero initial state", call.input("h0", h0), N, H, dt)
        c0d = _zeros_state(call, "zero initial cell state", call.input("c0", c0), N, H, dt)
        zx = call.scratch("gated pre-activations", (T, N, G), dt)
        u = call.scratch("gated recurrent products", (N, G), dt)
        ab = rnn.gemm_kernel("ab", dt)
        _gemm(ab, xd, Wxd, zx, zx, zx, rnn.gemm_geo(T * N, G, D), T * N, G, D)
        cell = gated.lstm_cell_kernel(dt)
        grid, block = launch.launch_config("elementwise", N * H)
        hsf, csf, zxf, uf, Whf = _flat(hs), _flat(cs), _flat(zx), _flat(u), _flat(Whd)
        for t in range(T):
            (hp, cp, off) = (_flat(h0d), _flat(c0d), 0) if t == 0 else (hsf, csf, (t - 1) * N * H)
            _gemm(ab, hp, Whf, uf, uf, uf, rnn.gemm_geo(N, G, H, off), N, G, H)
            cell[grid, block](zxf, uf, bd, cp, csf, hsf, t * N * G, off, t * N * H, N, H)
    return call.result(hs, outs[0]), call.result(cs, outs[1])


def lstm_backward(dhs, dcs, x_seq, h0, c0, Wx, Wh, b, hs, cs, out):
    launch, rnn, gated = _k().launch, _k().rnn, _k().gated_rnn
    call = _Call(dhs, dcs, x_seq, h0, c0, Wx, Wh, b, hs, cs)
    xd = call.input("x_seq", x_seq)
    T, N, D = xd.shape
    H, G = Wh.shape
    dt = xd.dtype
    shapes = ((T, N, D), (N, H), (N, H), (D, G), (H, G), (G,))
    outs, grads = _backward_outputs(call, out, shapes, dt)
    dx, dh0, dc0, dWx, dWh, db = grads
    if T == 0 or N == 0:
        return _zero_results(call, grads, outs)
    Wxd, Whd, bd = call.input("Wx", Wx), call.input("Wh", Wh), _bias(call, b, dt)
    hsd, csd, dhsd = call.input("hs", hs), call.input("cs", cs), call.input("dhs", dhs)
    dcsd = _flat(_optional(call, "dcs", dcs, dt))
    h0d = _zeros_state(call, "zero initial state", call.input("h0", h0), N, H, dt)
    c0d = _zeros_state(call, "zero initial cell state", call.input("c0", c0), N, H, dt)
    hprev = _previous_states(call, "gated previous states", h0d, hsd)
    dz, zh = _pre_activations(call, xd, hprev, Wxd, Whd)  # dz: the x part, overwritten by the gradients
    abt = rnn.gemm_kernel("abt", dt)
    dh_next = call.scratch("gated hidden-state carry", (N, H), dt)
    _fill(dh_next, 0)
    _fill(dc0, 0)  # the cell-state carry, dL/dc0 once the loop is done
    cell = gated.lstm_cell_backward_kernel(dt)
    grid, block = launch.launch_config("elementwise", N * H)
    dzf, zhf, Whf, csf, c0f = _flat(dz), _flat(zh), _flat(Whd), _flat(csd), _flat(c0d)
    for t in range(T - 1, -1, -1):
        cp, cp_off = (c0f, 0) if t == 0 else (csf, (t - 1) * N * H)
        cell[grid, block](dzf, zhf, bd, cp, csf, _flat(dhsd), dcsd, _flat(dh_next), _flat(dc0), t * N * G, cp_off,
                          t * N * H, N, H)
        target = dh0 if t == 0 else dh_next
        _gemm(abt, dzf, Whf, _flat(target), dzf, dzf, rnn.gemm_geo(N, H, G, t * N * G), N, H, G)
    _gemm(abt, dz, Wxd, dx, dx, dx, rnn.gemm_geo(T * N, D, G), T * N, D, G)
    _weight_gradients(call, xd, hprev, dz, dz, dWx, dWh, db, None)
    return tuple(call.result(d, o) for d, o in zip(grads, outs))


def gru(x_seq, h0, Wx, Wh, bx, bh, out):
    launch, rnn, gated = _k().launch, _k().rnn, _k().gated_rnn
    call = _Call(x_seq, h0, Wx, Wh, bx, bh)
    xd = call.input("x_seq", x_seq)
    T, N, D = xd.shape
    H, G = Wh.shape
    dt = xd.dtype
    hs = call.output("out", out, (T, N, H), dt)
    if hs.size:
        Wxd, Whd = call.input("Wx", Wx), call.input("Wh", Wh)
        bxd, bhd = _optional(call, "bx", bx, dt), _optional(call, "bh", bh, dt)
        h0d = _zeros_state(call, "zero initial state", call.input("h0", h0), N, H, dt)
        a = call.scratch("gated pre-activations", (T, N, G), dt)
        u = call.scratch("gated recurrent products", (N, G), dt)
        ab = rnn.gemm_kernel("ab", dt)
        _gemm(ab, xd, Wxd, a, a, a, rnn.gemm_geo(T * N, G, D), T * N, G, D)
        cell = gated.gru_cell_kernel(dt)
        grid, block = launch.launch_config("elementwise", N * H)
        hsf, af, uf, Whf = _flat(hs), _flat(a), _flat(u), _flat(Whd)
        for t in range(T):
            hp, off = (_flat(h0d), 0) if t == 0 else (hsf, (t - 1) * N * H)
            _gemm(ab, hp, Whf, uf, uf, uf, rnn.gemm_geo(N, G, H, off), N, G, H)
            cell[grid, block](af, uf, bxd, bhd, hp, hsf, t * N * G, 0, off, t * N * H, N, H)
    return call.result(hs, out)


def gru_backward(dhs, x_seq, h0, Wx, Wh, bx, bh, hs, out):
    launch, rnn, gated = _k().launch, _k().rnn, _k().gated_rnn
    call = _Call(dhs, x_seq, h0, Wx, Wh, bx, bh, hs)
    xd = call.input("x_seq", x_seq)
    T, N, D = xd.shape
    H, G = Wh.shape
    dt = xd.dtype
    shapes = ((T, N, D), (N, H), (D, G), (H, G), (G,), (G,))
    outs, grads = _backward_outputs(call, out, shapes, dt)
    dx, dh0, dWx, dWh, dbx, dbh = grads
    if T == 0 or N == 0:
        return _zero_results(call, grads, outs)
    Wxd, Whd = call.input("Wx", Wx), call.input("Wh", Wh)
    bxd, bhd = _optional(call, "bx", bx, dt), _optional(call, "bh", bh, dt)
    hsd, dhsd = call.input("hs", hs), call.input("dhs", dhs)
    h0d = _zeros_state(call, "zero initial state", call.input("h0", h0), N, H, dt)
    hprev = _previous_states(call, "gated previous states", h0d, hsd)
    da, du = _pre_activations(call, xd, hprev, Wxd, Whd)
    abt = rnn.gemm_kernel("abt", dt)
    carry_z = call.scratch("gated hidden-state carry", (N, H), dt)
    carry_h = call.scratch("gated recurrent carry", (N, H), dt)
    _fill(carry_z, 0)
    _fill(carry_h, 0)
    cell = gated.gru_cell_backward_kernel(dt)
    grid, block = launch.launch_config("elementwise", N * H)
    daf, duf, Whf, hprevf = _flat(da), _flat(du), _flat(Whd), _flat(hprev)
    for t in range(T - 1, -1, -1):
        cell[grid, block](daf, duf, bxd, bhd, hprevf, _flat(dhsd), _flat(carry_z), _flat(carry_h), t * N * H,
                          t * N * H, N, H)
        _gemm(abt, duf, Whf, _flat(carry_h), duf, duf, rnn.gemm_geo(N, H, G, t * N * G), N, H, G)
    gated.add_kernel(dt)[grid, block](_flat(carry_z), _flat(carry_h), _flat(dh0), N * H)
    _gemm(abt, da, Wxd, dx, dx, dx, rnn.gemm_geo(T * N, D, G), T * N, D, G)
    _weight_gradients(call, xd, hprev, da, du, dWx, dWh, dbx, dbh)
    return tuple(call.result(d, o) for d, o in zip(grads, outs))
