"""The functional API, in ``torch.nn.functional``'s argument order and names.

Each function builds its problem through the op's spec (``fastlayers.ops``: every argument
checked there, so errors read the same on every backend and compiled kernels only ever see valid
input) and runs it on the kernel the dispatch picks. fastlayers' own options (``algo``,
``backend``, ``out``) are keyword-only, after PyTorch's arguments.

Backward functions take the gradient of the output first (``grad_output``), then the forward's
arguments (and, for the RNN, its ``output``), and return the gradients of the forward's array
arguments in their order, named ``grad_<argument>``.

Arrays: NumPy arrays, host arrays of other libraries through DLPack (a PyTorch CPU tensor: read
without a copy, results returned as tensors over the kernels' memory; the rule is in
:mod:`fastlayers._dlpack`), or GPU arrays (anything with ``__cuda_array_interface__``) for the
cuda backend. Every op takes float32 or float64 (all arrays of one call in one dtype) and accepts
an unbatched input (without the N axis) as PyTorch does.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from ._dlpack import accepts_dlpack
from .ops import BATCH_NORM, CONV2D, FUNCTIONS, GRU, LINEAR, LSTM, MAX_POOL2D, RELU, RNN
from .ops._spec import replays, run

# One function per name a spec lists (conv2d, conv2d_backward, ..., batch_norm_backward).
__all__ = list(FUNCTIONS)

Array = Any  # numpy.ndarray, a host array with __dlpack__, or a GPU array for the cuda backend
IntOrPair = Union[int, Tuple[int], Tuple[int, int]]
Out = Union[None, Array, Tuple[Optional[Array], ...]]


# ============================================================================ conv2d


def conv2d(input: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrPair = 1,
           padding: Union[IntOrPair, str] = 0, dilation: IntOrPair = 1, groups: int = 1, *,
           padding_mode: str = "zeros", algo: str = "auto", backend: Optional[str] = None,
           out: Optional[Array] = None) -> Array:
    """2-D convolution (cross-correlation, as in PyTorch) of a batch of images.

    Parameters
    ----------
    input : array (N, C, H, W) or unbatched (C, H, W), float32 or float64
    weight : array (F, C // groups, KH, KW), same dtype
    bias : array (F,) or None
    stride, dilation : int or (int, int), >= 1
    padding : int, (int, int), "valid" or "same" (stride 1 only; extra padding goes bottom/right)
    groups : int dividing both C and F
    padding_mode : "zeros", "reflect", "replicate" or "circular" (what the padding holds, as in
        ``torch.nn.Conv2d``; the last three pad the input on the host first)
    algo : "auto" or a kernel of the backend: cpu "im2col", "direct", "depthwise" or "winograd",
        cuda "implicit_gemm" or "direct" ("auto" picks by shape)
    backend : "numpy", "cpu", "cuda" or None (see ``fastlayers.set_backend``)
    out : array (N, F, OH, OW), C-contiguous, same dtype, optional

    Returns
    -------
    output : array (N, F, OH, OW) (or (F, OH, OW) unbatched) with
        ``OH = (H + pad_h - dilation_h * (KH - 1) - 1) // stride_h + 1`` (likewise OW).
    """
    problem = CONV2D.forward(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return run(CONV2D, problem, backend, algo, out)


def conv2d_backward(grad_output: Array, input: Array, weight: Array, stride: IntOrPair = 1,
                    padding: Union[IntOrPair, str] = 0, dilation: IntOrPair = 1, groups: int = 1, *,
                    padding_mode: str = "zeros", input_grad: bool = True, algo: str = "auto",
                    backend: Optional[str] = None, out: Out = None) -> Tuple[Optional[Array], Array, Array]:
    """Gradients of :func:`conv2d` with respect to input, weight and bias.

    ``grad_output`` (N, F, OH, OW) is dL/d(output); the other arguments are the forward call's.
    Returns ``(grad_input, grad_weight, grad_bias)`` shaped like input, weight and (F,). ``out``
    may be a tuple of three buffers (any of them None). ``input_grad=False`` (as PyTorch's
    ``output_mask``, for an input that needs no gradient, e.g. a network's first layer) skips the
    input gradient's work, about half of the call: ``grad_input`` is None, and ``out[0]`` must be."""
    problem = CONV2D.backward(grad_output, input, weight, stride, padding, dilation, groups, padding_mode,
                              input_grad)
    return run(CONV2D, problem, backend, algo, out, single_out=False)


# ============================================================================ max_pool2d


def max_pool2d(input: Array, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: IntOrPair = 0,
               dilation: IntOrPair = 1, ceil_mode: bool = False, return_indices: bool = False, *,
               backend: Optional[str] = None, out: Out = None) -> Union[Array, Tuple[Array, Array]]:
    """2-D max pooling.

    Parameters
    ----------
    input : array (N, C, H, W) or unbatched (C, H, W), float32 or float64
    kernel_size : int or (int, int)
    stride : int or (int, int), default ``kernel_size``
    padding : int or (int, int), at most half the kernel; padded cells never win
    dilation : int or (int, int), spacing of the window's elements (the cpu kernel has none: with
        dilation > 1 the automatic choice runs the reference, ``backend="cpu"`` is an error)
    ceil_mode : bool, round the output size up (a last, partial window), as in PyTorch
    return_indices : bool, also return the argmax indices (what the backward needs)
    out : buffer for the output, or a tuple (output, indices) of buffers (either may be None)

    Returns
    -------
    output : array (N, C, OH, OW)
    indices : int64 array (N, C, OH, OW), only if ``return_indices``: the flat index
        ``ih * W + iw`` of each maximum in its (H, W) plane. Ties go to the first maximum in
        row-major window order; a NaN in the window is the maximum (NaN propagates), and of
        several NaNs the last one's index is returned, as by PyTorch's CPU kernels.
    """
    problem = MAX_POOL2D.forward(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return run(MAX_POOL2D, problem, backend, "auto", out)


def max_pool2d_backward(grad_output: Array, indices: Array, input_shape: Sequence[int], *,
                        check_indices: bool = True, backend: Optional[str] = None,
                        out: Optional[Array] = None) -> Array:
    """Gradient of :func:`max_pool2d`: grad_output (N, C, OH, OW) routed to the argmax ``indices``
    (from ``max_pool2d(..., return_indices=True)``).

    Returns grad_input of ``input_shape`` (N, C, H, W); windows that share a maximum add up. An
    index outside [0, H*W) is a ValueError; with ``check_indices=False`` (indices that came from
    ``max_pool2d`` itself) the cuda backend skips reading its out-of-range flag back to the host,
    so the call makes no device-to-host transfer, and such an index is then skipped silently.
    Nothing is ever written outside grad_input either way; the host backends always check."""
    problem = MAX_POOL2D.backward(grad_output, indices, input_shape, check_indices)
    return run(MAX_POOL2D, problem, backend, "auto", out)


# ============================================================================ rnn
#
# The course notes' conventions, not torch.nn.RNN's: Wx (D, H) and Wh (H, H) multiply from the
# right (PyTorch's weight_ih_l0 and weight_hh_l0 transposed) and there is one bias (PyTorch's
# bias_ih_l0 + bias_hh_l0); sequences are time-major (T, N, D), as nn.RNN's default.


def rnn_step(input: Array, hx: Array, Wx: Array, Wh: Array, bias: Optional[Array] = None,
             nonlinearity: str = "tanh", *, backend: Optional[str] = None, out: Optional[Array] = None) -> Array:
    """One RNN step: ``h = act(input @ Wx + hx @ Wh + bias)``, act ``"tanh"`` or ``"relu"``.

    input (N, D) or unbatched (D,), hx (N, H) (or (H,)), Wx (D, H), Wh (H, H), bias (H,) or None
    -> h (N, H) (or (H,))."""
    problem = RNN.forward(input, hx, Wx, Wh, bias, nonlinearity, step=True)
    return run(RNN, problem, backend, "auto", out)


def rnn_step_backward(grad_output: Array, input: Array, hx: Array, Wx: Array, Wh: Array, output: Array,
                      nonlinearity: str = "tanh", *, backend: Optional[str] = None,
                      out: Out = None) -> Tuple[Array, Array, Array, Array, Array]:
    """Gradients of :func:`rnn_step` given grad_output = dL/dh and the step's ``output`` h.

    Returns ``(grad_input (N, D), grad_hx (N, H), grad_Wx (D, H), grad_Wh (H, H), grad_bias (H,))``."""
    problem = RNN.backward(grad_output, input, hx, Wx, Wh, output, nonlinearity, step=True)
    return run(RNN, problem, backend, "auto", out, single_out=False)


def rnn(input: Array, hx: Optional[Array], Wx: Array, Wh: Array, bias: Optional[Array] = None,
        nonlinearity: str = "tanh", *, backend: Optional[str] = None, out: Optional[Array] = None) -> Array:
    """All hidden states of an RNN over a time-major sequence.

    input (T, N, D) or unbatched (T, D), hx (N, H) (or (H,)) the initial state, None for zeros,
    Wx (D, H), Wh (H, H), bias (H,) or None -> output (T, N, H) (or (T, H)) with
    ``output[t] = act(input[t] @ Wx + output[t-1] @ Wh + bias)``, ``output[-1] = hx``."""
    problem = RNN.forward(input, hx, Wx, Wh, bias, nonlinearity, step=False)
    return run(RNN, problem, backend, "auto", out)


def rnn_backward(grad_output: Array, input: Array, hx: Optional[Array], Wx: Array, Wh: Array, output: Array,
                 nonlinearity: str = "tanh", *, backend: Optional[str] = None,
                 out: Out = None) -> Tuple[Array, Array, Array, Array, Array]:
    """Backward through time of :func:`rnn`.

    ``grad_output`` (T, N, H) is dL/d(every hidden state), ``output`` the forward's result.
    Returns ``(grad_input (T, N, D), grad_hx (N, H), grad_Wx (D, H), grad_Wh (H, H), grad_bias (H,))``."""
    problem = RNN.backward(grad_output, input, hx, Wx, Wh, output, nonlinearity, step=False)
    return run(RNN, problem, backend, "auto", out, single_out=False)


# ============================================================================ lstm, gru
# PyTorch's gates in fastlayers' layout: Wx = weight_ih.T, Wh = weight_hh.T, gate blocks of H
# columns side by side (lstm (i, f, g, o), gru (r, z, n)); ``fastlayers.reference`` states the
# equations. Initial states may be None (zeros).


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def lstm(input: Array, hx: Optional[Array], cx: Optional[Array], Wx: Array, Wh: Array, bias: Optional[Array] = None,
         *, return_workspace: bool = False, backend: Optional[str] = None, out: Out = None) -> Tuple[Array, ...]:
    """Hidden and cell states of an LSTM (torch.nn.LSTM's equations) over a time-major sequence.

    Parameters
    ----------
    input : array (T, N, D), float32 or float64
    hx, cx : arrays (N, H) or None (zeros), the initial hidden and cell states
    Wx : array (D, 4H), PyTorch's ``weight_ih.T``, gate blocks (i, f, g, o)
    Wh : array (H, 4H), ``weight_hh.T``
    bias : array (4H,) or None, ``bias_ih + bias_hh``
    return_workspace : bool
        Also return the gates, for :func:`lstm_backward`'s ``workspace`` (training: its backward
        then skips recomputing them; the cuda kernels keep none and recompute).
    out : tuple of two buffers (output, cell) (either may be None)

    Returns
    -------
    output, cell : arrays (T, N, H), every step's hidden and cell state
    workspace : GateWorkspace, with ``return_workspace`` only
    """
    problem = LSTM.forward(dict(input=input, hx=hx, cx=cx, Wx=Wx, Wh=Wh, bias=bias), step=False,
                           keep=_flag("return_workspace", return_workspace))
    return run(LSTM, problem, backend, "auto", out, single_out=False)


def lstm_backward(grad_output: Array, grad_cell: Optional[Array], input: Array, hx: Optional[Array],
                  cx: Optional[Array], Wx: Array, Wh: Array, bias: Optional[Array], output: Array, cell: Array, *,
                  workspace: Any = None, backend: Optional[str] = None, out: Out = None) -> Tuple[Array, ...]:
    """Backward through time of :func:`lstm`.

    ``grad_output`` and ``grad_cell`` (T, N, H) are dL/d(every hidden and cell state),
    ``grad_cell`` None for zeros; ``output``, ``cell`` the forward's results; the other arguments
    those of the forward. ``workspace``: the GateWorkspace the forward returned
    (``return_workspace=True``), whose gates are then read; None: they are recomputed from the
    arguments. Returns ``(grad_input (T, N, D), grad_hx (N, H), grad_cx (N, H), grad_Wx (D, 4H),
    grad_Wh (H, 4H), grad_bias (4H,))``."""
    arrays = dict(grad_output=grad_output, grad_cell=grad_cell, input=input, hx=hx, cx=cx, Wx=Wx, Wh=Wh, bias=bias,
                  output=output, cell=cell)
    return run(LSTM, LSTM.backward(arrays, step=False, workspace=workspace), backend, "auto", out, single_out=False)


def lstm_step(input: Array, hx: Optional[Array], cx: Optional[Array], Wx: Array, Wh: Array,
              bias: Optional[Array] = None, *, backend: Optional[str] = None, out: Out = None) -> Tuple[Array, Array]:
    """One LSTM step (torch.nn.LSTMCell): input (N, D), hx and cx (N, H) or None (zeros),
    Wx (D, 4H), Wh (H, 4H), bias (4H,) or None -> (output, cell), each (N, H). ``out``: a tuple of
    two buffers (either may be None)."""
    problem = LSTM.forward(dict(input=input, hx=hx, cx=cx, Wx=Wx, Wh=Wh, bias=bias), step=True)
    return run(LSTM, problem, backend, "auto", out, single_out=False)


def lstm_step_backward(grad_output: Array, grad_cell: Optional[Array], input: Array, hx: Optional[Array],
                       cx: Optional[Array], Wx: Array, Wh: Array, bias: Optional[Array], output: Array, cell: Array,
                       *, backend: Optional[str] = None, out: Out = None) -> Tuple[Array, ...]:
    """Gradients of :func:`lstm_step` given grad_output = dL/dh, grad_cell = dL/dc (None: zeros)
    and the step's results ``output``, ``cell``. Returns ``(grad_input (N, D), grad_hx, grad_cx
    (N, H), grad_Wx, grad_Wh, grad_bias)``."""
    arrays = dict(grad_output=grad_output, grad_cell=grad_cell, input=input, hx=hx, cx=cx, Wx=Wx, Wh=Wh, bias=bias,
                  output=output, cell=cell)
    return run(LSTM, LSTM.backward(arrays, step=True), backend, "auto", out, single_out=False)


def gru(input: Array, hx: Optional[Array], Wx: Array, Wh: Array, bias_ih: Optional[Array] = None,
        bias_hh: Optional[Array] = None, *, return_workspace: bool = False, backend: Optional[str] = None,
        out: Optional[Array] = None) -> Any:
    """All hidden states of a GRU (torch.nn.GRU's equations) over a time-major sequence.

    Parameters
    ----------
    input : array (T, N, D), float32 or float64
    hx : array (N, H) or None (zeros)
    Wx : array (D, 3H), PyTorch's ``weight_ih.T``, gate blocks (r, z, n)
    Wh : array (H, 3H), ``weight_hh.T``
    bias_ih, bias_hh : arrays (3H,) or None, PyTorch's biases (kept apart: the reset gate
        multiplies ``h @ Wh_n + bias_hh_n``)
    return_workspace : bool
        Also return the gates, for :func:`gru_backward`'s ``workspace`` (see :func:`lstm`).
    out : buffer (T, N, H), optional

    Returns
    -------
    output : array (T, N, H), every step's hidden state
    workspace : GateWorkspace, with ``return_workspace`` only (then ``(output, workspace)``)
    """
    problem = GRU.forward(dict(input=input, hx=hx, Wx=Wx, Wh=Wh, bias_ih=bias_ih, bias_hh=bias_hh), step=False,
                          keep=_flag("return_workspace", return_workspace))
    return run(GRU, problem, backend, "auto", out, single_out=True)


def gru_backward(grad_output: Array, input: Array, hx: Optional[Array], Wx: Array, Wh: Array,
                 bias_ih: Optional[Array], bias_hh: Optional[Array], output: Array, *, workspace: Any = None,
                 backend: Optional[str] = None, out: Out = None) -> Tuple[Array, ...]:
    """Backward through time of :func:`gru`.

    ``grad_output`` (T, N, H) is dL/d(every hidden state), ``output`` the forward's result;
    ``workspace`` the forward's GateWorkspace or None (see :func:`lstm_backward`).
    Returns ``(grad_input (T, N, D), grad_hx (N, H), grad_Wx (D, 3H), grad_Wh (H, 3H),
    grad_bias_ih (3H,), grad_bias_hh (3H,))``."""
    arrays = dict(grad_output=grad_output, input=input, hx=hx, Wx=Wx, Wh=Wh, bias_ih=bias_ih, bias_hh=bias_hh,
                  output=output)
    return run(GRU, GRU.backward(arrays, step=False, workspace=workspace), backend, "auto", out, single_out=False)


def gru_step(input: Array, hx: Optional[Array], Wx: Array, Wh: Array, bias_ih: Optional[Array] = None,
             bias_hh: Optional[Array] = None, *, backend: Optional[str] = None, out: Optional[Array] = None) -> Array:
    """One GRU step (torch.nn.GRUCell): input (N, D), hx (N, H) or None (zeros), Wx (D, 3H),
    Wh (H, 3H), bias_ih, bias_hh (3H,) or None -> output (N, H)."""
    problem = GRU.forward(dict(input=input, hx=hx, Wx=Wx, Wh=Wh, bias_ih=bias_ih, bias_hh=bias_hh), step=True)
    return run(GRU, problem, backend, "auto", out)


def gru_step_backward(grad_output: Array, input: Array, hx: Optional[Array], Wx: Array, Wh: Array,
                      bias_ih: Optional[Array], bias_hh: Optional[Array], output: Array, *,
                      backend: Optional[str] = None, out: Out = None) -> Tuple[Array, ...]:
    """Gradients of :func:`gru_step` given grad_output = dL/dh and the step's result ``output``.
    Returns ``(grad_input (N, D), grad_hx (N, H), grad_Wx, grad_Wh, grad_bias_ih, grad_bias_hh)``."""
    arrays = dict(grad_output=grad_output, input=input, hx=hx, Wx=Wx, Wh=Wh, bias_ih=bias_ih, bias_hh=bias_hh,
                  output=output)
    return run(GRU, GRU.backward(arrays, step=True), backend, "auto", out, single_out=False)


# ============================================================================ linear, relu, batch_norm


def linear(input: Array, weight: Array, bias: Optional[Array] = None, *, backend: Optional[str] = None,
           out: Optional[Array] = None) -> Array:
    """``input @ weight.T + bias``, as ``torch.nn.functional.linear``: input (..., in_features),
    weight (out_features, in_features), bias (out_features,) or None -> (..., out_features).

    The cpu kernel runs the product on fastlayers' own threads (it wakes no other library's BLAS
    threads); a weight that is the transpose of a C-contiguous array is read without a copy."""
    return run(LINEAR, LINEAR.forward(input, weight, bias), backend, "auto", out)


def linear_backward(grad_output: Array, input: Array, weight: Array, *, backend: Optional[str] = None,
                    out: Out = None) -> Tuple[Array, Array, Array]:
    """Gradients of :func:`linear`: ``(grad_input (..., in), grad_weight (out, in), grad_bias (out,))``."""
    return run(LINEAR, LINEAR.backward(grad_output, input, weight), backend, "auto", out, single_out=False)


def relu(input: Array, *, backend: Optional[str] = None, out: Optional[Array] = None) -> Array:
    """max(input, 0) elementwise, any shape; NaN propagates (as ``torch.relu``)."""
    return run(RELU, RELU.forward(input), backend, "auto", out)


def relu_backward(grad_output: Array, input: Array, *, backend: Optional[str] = None,
                  out: Optional[Array] = None) -> Array:
    """Gradient of :func:`relu`: 0 where input <= 0 (at 0 too), grad_output elsewhere (NaN input
    included), as PyTorch's."""
    return run(RELU, RELU.backward(grad_output, input), backend, "auto", out)


def batch_norm(input: Array, running_mean: Optional[Array], running_var: Optional[Array],
               weight: Optional[Array] = None, bias: Optional[Array] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, backend: Optional[str] = None,
               out: Optional[Array] = None) -> Array:
    """Batch normalisation per channel, as ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    input : array (N, C, ...) (2-D to 5-D), float32 or float64
    running_mean, running_var : arrays (C,) or None (allowed in training mode only)
    weight, bias : arrays (C,) or None (scale 1, shift 0)
    training : bool; True normalises with the batch's mean and biased variance over N and the
        trailing axes, and updates ``running_mean`` and ``running_var`` in place (weight
        ``momentum``; the variance unbiased); False normalises with the running statistics
    eps : float > 0, added to the variance
    out : buffer for the output, optional

    Returns
    -------
    output : array of the input's shape, ``(input - mean) / sqrt(var + eps) * weight + bias``
    """
    problem = BATCH_NORM.forward(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return run(BATCH_NORM, problem, backend, "auto", out)


def batch_norm_backward(grad_output: Array, input: Array, running_mean: Optional[Array],
                        running_var: Optional[Array], weight: Optional[Array] = None, training: bool = False,
                        eps: float = 1e-5, *, backend: Optional[str] = None, out: Out = None) -> Tuple[Array, ...]:
    """Gradients of :func:`batch_norm` given the forward's arguments (in training mode the batch
    statistics are recomputed from ``input``; the running statistics are not used then and may
    be None). Returns ``(grad_input (N, C, ...), grad_weight (C,), grad_bias (C,))``."""
    problem = BATCH_NORM.backward(grad_output, input, running_mean, running_var, weight, training, eps)
    return run(BATCH_NORM, problem, backend, "auto", out, single_out=False)


# Every function takes DLPack arrays (fastlayers._dlpack) and replays the plans of its calls on
# NumPy arrays (ops._spec.replays: outside, so that a replayed call skips the DLPack wrapper's
# tests too): wrapped here, in one place, so that no function of __all__ can miss it.
for _name in __all__:
    globals()[_name] = replays(accepts_dlpack(globals()[_name]))
del _name
