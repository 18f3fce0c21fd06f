"""What one benchmark measures: a case of the table, a direction, a backend; its inputs, its work
(FLOPs or bytes) and the zero-argument callable that is timed.

Backend labels: ``"numpy"`` (the reference), ``"cpu:im2col"``, ``"cpu:direct"``, ``"cpu:auto"``
(conv2d's ``algo=``), ``"cpu"`` (the other ops, which have no ``algo``), ``"cuda"`` and
``"torch"`` (PyTorch, timed in its own process by :mod:`fastlayers.benchmark.torch_worker`).
The part before ``:`` is the label's *family*: ratios compare a row with other families only.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import reference
from .._params import conv2d_geometry, pool2d_geometry
from ..cases import Case

DIRECTIONS = ("forward", "backward")
OPS = ("conv2d", "max_pool2d", "rnn")
FAMILIES = ("numpy", "cpu", "cuda", "torch")
CONV2D_ALGOS = ("im2col", "direct", "auto")


def op_name(op, direction):
    """The functional API's name of ``op`` in ``direction``: ``rnn`` + backward -> ``rnn_backward``."""
    return op if direction == "forward" else f"{op}_backward"


def family(label):
    return label.split(":")[0]


def label_order(label):
    """Sort key: the families' order, then conv2d's algos in CONV2D_ALGOS order."""
    fam, _, algo = label.partition(":")
    return FAMILIES.index(fam), CONV2D_ALGOS.index(algo) if algo else -1


def labels_for(families, op):
    """The backend labels of ``families`` that apply to ``op`` (cpu splits by conv2d algo)."""
    labels = []
    for fam in families:
        if fam == "cpu" and op == "conv2d":
            labels += [f"cpu:{algo}" for algo in CONV2D_ALGOS]
        else:
            labels.append(fam)
    return labels


def _conv2d_kwargs(case):
    p = case.params
    return dict(stride=p.get("stride", 1), padding=p.get("padding", 0))


def _pool_kwargs(case):
    p = case.params
    return dict(kernel_size=p.get("kernel_size", 2), stride=p.get("stride"))


def conv2d_weight_shape(case):
    C = case.shape[1]
    k = case.params["kernel_size"]
    return (case.params["F"], C, k, k)


def make_inputs(case: Case, direction, dtype, seed=0):
    """NumPy inputs of ``case`` in ``direction``, as keyword arguments of the functional API.

    Values are O(1) (weights scaled by 1/sqrt(fan-in), as at initialisation) so no backend meets
    denormals or saturated tanh that a real network would not. Backward inputs include the
    forward's outputs, computed by the reference."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)

    def normal(shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    if case.op == "conv2d":
        w_shape = conv2d_weight_shape(case)
        x = normal(case.shape)
        w = normal(w_shape, 1 / np.sqrt(np.prod(w_shape[1:])))
        if direction == "forward":
            return dict(x=x, w=w, b=normal(w_shape[0]))
        g = conv2d_geometry(x.shape, w.shape, **_conv2d_kwargs(case))
        return dict(dy=normal(g.y_shape), x=x, w=w)
    if case.op == "max_pool2d":
        x = normal(case.shape)
        if direction == "forward":
            return dict(x=x)
        _, indices = reference.max_pool2d(x, **_pool_kwargs(case))
        return dict(dy=normal(indices.shape), indices=indices, input_shape=x.shape)
    if case.op == "rnn":
        T, N, D, H = case.shape
        x_seq, h0 = normal((T, N, D)), normal((N, H), 0.5)
        Wx, Wh = normal((D, H), 1 / np.sqrt(D)), normal((H, H), 1 / np.sqrt(H))
        b = normal(H, 0.1)
        if direction == "forward":
            return dict(x_seq=x_seq, h0=h0, Wx=Wx, Wh=Wh, b=b)
        hs = reference.rnn(x_seq, h0, Wx, Wh, b)
        return dict(dhs=normal(hs.shape), x_seq=x_seq, h0=h0, Wx=Wx, Wh=Wh, hs=hs)
    raise ValueError(f"case {case.name!r} has unknown op {case.op!r}; expected one of {OPS}")


def work(case: Case, direction, dtype):
    """``(amount, unit)``: the FLOPs of compute-bound ops (conv2d, rnn) or the bytes moved by
    memory-bound ones (max_pool2d), for one call.

    conv2d backward computes dx and dw, each as many multiply-adds as the forward (db is
    negligible); rnn is two GEMMs per step forward and four backward (dx, dh, dWx, dWh).
    max_pool2d forward reads x and writes y and the int64 indices; backward reads dy and the
    indices and writes dx."""
    itemsize = np.dtype(dtype).itemsize
    if case.op == "conv2d":
        g = conv2d_geometry(case.shape, conv2d_weight_shape(case), **_conv2d_kwargs(case))
        return (g.flops if direction == "forward" else 2 * g.flops), "flop"
    if case.op == "max_pool2d":
        g = pool2d_geometry(case.shape, **_pool_kwargs(case))
        x_elems = int(np.prod(g.x_shape))
        y_elems = int(np.prod(g.y_shape))
        return (x_elems + y_elems) * itemsize + y_elems * 8, "byte"
    if case.op == "rnn":
        T, N, D, H = case.shape
        step = 2 * N * (D + H) * H
        return T * step * (1 if direction == "forward" else 2), "flop"
    raise ValueError(f"case {case.name!r} has unknown op {case.op!r}; expected one of {OPS}")


def _empty_like_outputs(case, direction, inputs, empty):
    """Output buffers of the op (so the timed calls do not allocate), made by ``empty(shape, dtype)``."""
    if case.op == "conv2d":
        if direction == "forward":
            g = conv2d_geometry(inputs["x"].shape, inputs["w"].shape, **_conv2d_kwargs(case))
            return empty(g.y_shape, inputs["x"].dtype)
        x, w = inputs["x"], inputs["w"]
        return (empty(x.shape, x.dtype), empty(w.shape, w.dtype), empty(w.shape[:1], w.dtype))
    if case.op == "max_pool2d":
        if direction == "forward":
            g = pool2d_geometry(inputs["x"].shape, **_pool_kwargs(case))
            return (empty(g.y_shape, inputs["x"].dtype), empty(g.y_shape, np.int64))
        return empty(inputs["input_shape"], inputs["dy"].dtype)
    T, N, D, H = case.shape
    dt = inputs["x_seq"].dtype
    if direction == "forward":
        return empty((T, N, H), dt)
    return tuple(empty(s, dt) for s in ((T, N, D), (N, H), (D, H), (H, H), (H,)))


def fastlayers_call(case: Case, direction, label, inputs):
    """The timed call of a fastlayers backend, and the function that waits for it to finish.

    cpu and cuda write into preallocated ``out=`` buffers (the documented hot-loop use); the
    numpy reference allocates, as it always does (``out=`` would only add a copy). For cuda the
    inputs are moved to the device once, before timing."""
    fam = family(label)
    kwargs = dict(backend=fam)
    if case.op == "conv2d":
        kwargs.update(_conv2d_kwargs(case), algo=label.partition(":")[2] or "auto")
    elif case.op == "max_pool2d" and direction == "forward":
        kwargs.update(_pool_kwargs(case))
    sync = None
    if fam == "cuda":
        from numba import cuda  # only here: importing fastlayers must not start CUDA

        inputs = {k: cuda.to_device(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
        kwargs["out"] = _empty_like_outputs(case, direction, inputs, lambda s, d: cuda.device_array(s, d))
        sync = cuda.synchronize
    elif fam == "cpu":
        kwargs["out"] = _empty_like_outputs(case, direction, inputs, np.empty)
    fn = getattr(F, op_name(case.op, direction))
    args = tuple(inputs.values())
    return (lambda: fn(*args, **kwargs)), sync
