"""torch.autograd Functions that run fastlayers' CPU kernels forward and backward.

``conv2d`` and ``max_pool2d`` take torch.nn.functional's arguments; ``rnn``, ``lstm`` and ``gru``
take fastlayers' layout (time-major input, ``Wx`` (D, G*H), ``Wh`` (H, G*H), the LSTM's one bias),
which :class:`~fastlayers.torch.RNN`, :class:`~fastlayers.torch.LSTM` and
:class:`~fastlayers.torch.GRU` map from torch.nn's parameters. What the adapter does not carry:

* double backward: the backward is one fastlayers kernel, not torch operations, so it is marked
  ``once_differentiable``; differentiating it again raises a RuntimeError (never a wrong value);
* ``torch.compile``: each op is excluded from compilation (``torch.compiler.disable``), so a
  compiled model breaks its graph at every fastlayers op and runs that op eagerly;
* channels-last and other non-contiguous tensors are copied to contiguous NCHW memory first, and
  results are NCHW-contiguous;
* CUDA tensors, dtypes other than float32/float64, sparse tensors: a TypeError.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import torch
from torch.autograd.function import once_differentiable

import fastlayers as fl
from fastlayers import _dispatch

from ..ops._spec import replays, run
from ..ops.max_pool2d import MAX_POOL2D
from ._tensors import as_array, as_tensor

__all__ = ["conv2d", "gru", "lstm", "max_pool2d", "relu_max_pool2d", "rnn"]


def _records_graph(*tensors):
    """Whether autograd records a call on ``tensors``: grad mode is on and one needs a gradient.
    Where it does not (inference, ``torch.no_grad()``), the ops call their kernel directly, without
    a torch.autograd.Function (its node, context and saved tensors cost as much as a batch-1
    layer's kernel: docs/performance.md)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _conv2d_forward(input, weight, bias, stride, padding, dilation, groups):
    b = None if bias is None else as_array("bias", bias)
    y = fl.conv2d(as_array("input", input), as_array("weight", weight), b, stride, padding, dilation, groups)
    return as_tensor(y)


def _training(ctx):
    """Where the weight needs a gradient, a training step's call: its weights change before the
    next (``fastlayers._dispatch.weights_change``)."""
    return _dispatch.weights_change() if ctx.needs_input_grad[1] else contextlib.nullcontext()


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(input, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        with _training(ctx):
            return _conv2d_forward(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        with _training(ctx):
            dx, dw, db = fl.conv2d_backward(as_array("grad_output", grad_output), as_array("input", input),
                                            as_array("weight", weight), *ctx.geometry,
                                            input_grad=bool(ctx.needs_input_grad[0]))
        return None if dx is None else as_tensor(dx), as_tensor(dw), as_tensor(db) if ctx.has_bias else None, None, None, None, None


@replays
def _relu_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    """fastlayers' max_pool2d of the array ``input``, its maxima through a ReLU in the same call
    (the geometry's ``relu``, as a Sequential's inference plan runs a ReLU next to its pool); its
    plans replayed as the functional API's."""
    problem = MAX_POOL2D.forward(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    problem.geometry = replace(problem.geometry, relu=True)
    return run(MAX_POOL2D, problem, None, "auto", None)


def _pool_forward(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, relu):
    """fastlayers' max_pool2d of the array x; ``relu``: with the ReLU inside (``_relu_pool``)."""
    pool = _relu_pool if relu else fl.max_pool2d
    return pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=return_indices)


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, kernel_size, stride, padding, dilation, ceil_mode, relu):
        y, indices = _pool_forward(as_array("input", input), kernel_size, stride, padding, dilation, ceil_mode, True,
                                   relu)
        indices, y = as_tensor(indices), as_tensor(y)
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices, y if relu else None)
        ctx.input_shape = tuple(input.shape)
        return y, indices

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_indices):
        indices, y = ctx.saved_tensors
        if y is not None:  # the ReLU's backward first, as torch's: none where the output is <= 0 (NaN passes)
            grad_output = torch.where(y <= 0, 0, grad_output)
        dx = fl.max_pool2d_backward(as_array("grad_output", grad_output), indices.numpy(), ctx.input_shape)
        return as_tensor(dx), None, None, None, None, None, None


class _Rnn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, hx, Wx, Wh, bias, nonlinearity):
        h0 = None if hx is None else as_array("hx", hx)
        b = None if bias is None else as_array("bias", bias)
        hs = as_tensor(fl.rnn(as_array("input", input), h0, as_array("Wx", Wx), as_array("Wh", Wh), b, nonlinearity))
        ctx.save_for_backward(input, hx, Wx, Wh, hs)
        ctx.has_bias = bias is not None
        ctx.nonlinearity = nonlinearity
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, hx, Wx, Wh, hs = ctx.saved_tensors
        h0 = None if hx is None else as_array("hx", hx)
        dx, dh0, dWx, dWh, db = fl.rnn_backward(as_array("grad_output", grad_output), as_array("input", input), h0,
                                                as_array("Wx", Wx), as_array("Wh", Wh), hs.numpy(), ctx.nonlinearity)
        return (as_tensor(dx), None if hx is None else as_tensor(dh0), as_tensor(dWx), as_tensor(dWh),
                as_tensor(db) if ctx.has_bias else None, None)


# The array arguments of fastlayers' lstm and gru after ``input``, in their order.
_GATED_ARGUMENTS = {"lstm": ("hx", "cx", "Wx", "Wh", "bias"), "gru": ("hx", "Wx", "Wh", "bias_ih", "bias_hh")}


class _Gated(torch.autograd.Function):
    """fastlayers' ``lstm`` (outputs: every step's hidden and cell states) or ``gru`` (the hidden
    states), its backward from the states it saved and, when a gradient is wanted, the gates its
    forward kept (the GateWorkspace, as torch.nn.LSTM keeps its own)."""

    @staticmethod
    def forward(ctx, cell, input, *args):
        arrays = [None if t is None else as_array(n, t) for n, t in zip(_GATED_ARGUMENTS[cell], args)]
        keep = any(ctx.needs_input_grad)
        outputs = getattr(fl, cell)(as_array("input", input), *arrays, return_workspace=keep)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        ctx.workspace = outputs[-1] if keep else None
        outputs = tuple(as_tensor(o) for o in (outputs[:-1] if keep else outputs))
        ctx.cell = cell
        ctx.save_for_backward(input, *args, *outputs)
        ctx.set_materialize_grads(False)  # an unused cell state passes None: no zeros to add
        return outputs if len(outputs) > 1 else outputs[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        inputs, outputs = saved[: len(saved) - len(grads)], saved[len(saved) - len(grads):]
        grad_output = np.zeros_like(outputs[0].numpy()) if grads[0] is None else as_array("grad_output", grads[0])
        grad_cell = [None if g is None else as_array("grad_cell", g) for g in grads[1:]]
        names = ("input",) + _GATED_ARGUMENTS[ctx.cell]
        arrays = [None if t is None else as_array(n, t) for n, t in zip(names, inputs)]
        results = getattr(fl, ctx.cell + "_backward")(grad_output, *grad_cell, *arrays, *(o.numpy() for o in outputs),
                                                      workspace=ctx.workspace)
        return (None, *(None if t is None else as_tensor(r) for r, t in zip(results, inputs)))


def _batched(input, name, batched_ndim):
    """``input`` with a batch dimension, and whether one was added (PyTorch's unbatched inputs)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() == batched_ndim - 1:
        return input.unsqueeze(0), True
    if input.dim() != batched_ndim:
        raise ValueError(f"{name} must be {batched_ndim - 1}-D (unbatched) or {batched_ndim}-D (batched), "
                         f"got {input.dim()}-D tensor of shape {tuple(input.shape)}")
    return input, False


@torch.compiler.disable
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``torch.nn.functional.conv2d`` on fastlayers' kernels.

    input (N, C, H, W) or unbatched (C, H, W), weight (F, C // groups, KH, KW), bias (F,) or None
    -> (N, F, OH, OW) (or (F, OH, OW)). ``padding`` may be "same" or "valid"."""
    input, unbatched = _batched(input, "input", 4)
    call = _Conv2d.apply if _records_graph(input, weight, bias) else _conv2d_forward
    y = call(input, weight, bias, stride, padding, dilation, groups)
    return y.squeeze(0) if unbatched else y


@torch.compiler.disable
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """``torch.nn.functional.max_pool2d`` on fastlayers' kernels.

    input (N, C, H, W) or unbatched (C, H, W) -> y (N, C, OH, OW), and with ``return_indices``
    the int64 flat indices ``ih * W + iw`` of each maximum, as PyTorch's. With ``dilation`` > 1
    the forward runs on fastlayers' NumPy reference (the cpu kernel has no dilation), the
    backward on the cpu kernel."""
    return _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, False)


@torch.compiler.disable
def relu_max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``max_pool2d(relu(input), ...)`` in one fastlayers call, as ``relu(max_pool2d(input, ...))``:
    the ReLU on the pooled maxima, 1 / (kernel area) of the elements (what
    ``convert(model, fuse=True)`` runs for a ReLU followed by a MaxPool2d). The same values (a zero
    may differ in sign: fastlayers' ReLU keeps -0.0) and the same gradients: a ReLU is
    non-decreasing, so the window's maximum through it is its maximum of the ReLU's outputs, and
    where that is not positive both orders pass no gradient."""
    return _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, False, True)


def _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, relu):
    input, unbatched = _batched(input, "input", 4)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel_size  # PyTorch's default, also spelt stride=[]
    if _records_graph(input):
        y, indices = _MaxPool2d.apply(input, kernel_size, stride, padding, dilation, ceil_mode, relu)
    else:  # no backward to come: the indices only where asked for
        result = _pool_forward(as_array("input", input), kernel_size, stride, padding, dilation, ceil_mode,
                               return_indices, relu)
        y, indices = (as_tensor(r) for r in result) if return_indices else (as_tensor(result), None)
    if unbatched:
        y, indices = y.squeeze(0), None if indices is None else indices.squeeze(0)
    return (y, indices) if return_indices else y


@torch.compiler.disable
def rnn(input, hx, Wx, Wh, bias=None, nonlinearity="tanh"):
    """All hidden states of an RNN, in fastlayers' layout.

    input (T, N, D), hx (N, H) or None (zeros), Wx (D, H), Wh (H, H), bias (H,) or None
    -> (T, N, H) with ``h[t] = f(input[t] @ Wx + h[t-1] @ Wh + bias)``, ``f`` tanh or relu
    (``nonlinearity``)."""
    return _Rnn.apply(input, hx, Wx, Wh, bias, nonlinearity)


@torch.compiler.disable
def lstm(input, hx, cx, Wx, Wh, bias=None):
    """Every step's hidden and cell states ``(output, cell)``, each (T, N, H), of an LSTM in
    fastlayers' layout (:func:`fastlayers.lstm`): input (T, N, D), hx and cx (N, H) or None
    (zeros), Wx (D, 4H) = ``weight_ih.T``, Wh (H, 4H) = ``weight_hh.T``, bias (4H,) =
    ``bias_ih + bias_hh`` or None; gates (i, f, g, o) as torch.nn.LSTM's."""
    return _Gated.apply("lstm", input, hx, cx, Wx, Wh, bias)


@torch.compiler.disable
def gru(input, hx, Wx, Wh, bias_ih=None, bias_hh=None):
    """Every step's hidden state (T, N, H) of a GRU in fastlayers' layout (:func:`fastlayers.gru`):
    input (T, N, D), hx (N, H) or None (zeros), Wx (D, 3H) = ``weight_ih.T``, Wh (H, 3H) =
    ``weight_hh.T``, bias_ih and bias_hh (3H,) or None; gates (r, z, n) as torch.nn.GRU's."""
    return _Gated.apply("gru", input, hx, Wx, Wh, bias_ih, bias_hh)
