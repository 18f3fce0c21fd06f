"""Everything the benchmark knows about one op, in one class per op, registered by op name.

A workload gives, for a case of the table (:mod:`fastlayers.cases`) and a direction: the inputs
(NumPy arrays, the functional API's positional arguments in order), the keyword options of the
call, the output buffers an ``out=`` call writes into, the work (FLOPs or bytes) and the PyTorch
call that computes the same thing from the same inputs. The engine, the PyTorch worker and the
tables look an op up in :data:`WORKLOADS` and never branch on its name.
"""
from __future__ import annotations

import numpy as np

from .. import reference
from ..ops.conv2d import conv2d_geometry
from ..ops.max_pool2d import pool2d_geometry

DIRECTIONS = ("forward", "backward")


def op_name(op, direction):
    """The functional API's name of ``op`` in ``direction``: ``rnn`` + backward -> ``rnn_backward``."""
    return op if direction == "forward" else f"{op}_backward"


def _normal(seed, dtype):
    """Draws O(1) values (scaled as at initialisation, so no backend meets denormals or a
    saturated tanh that a real network would not), always from float64 so that float32 and
    float64 runs see the same numbers."""
    rng = np.random.default_rng(seed)
    return lambda shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(dtype)


def _torch_no_grad(torch, fn):
    def call():
        with torch.no_grad():
            return fn()

    return call


class Workload:
    """A workload's defaults: no ``algo=`` choice, no case parameter required, no keyword
    options, the inputs as the positional arguments in order."""

    algos = ()
    required = ()  # the case parameters the op has no default for

    @staticmethod
    def args(case, direction, inputs):
        return tuple(inputs.values())

    @staticmethod
    def options(case, direction):
        return {}


class Conv2dWorkload(Workload):
    """conv2d: case shape (N, C, H, W); params F, kernel_size, stride, padding."""

    op = "conv2d"
    algos = ("im2col", "direct", "auto")  # conv2d's ``algo=``; "auto" is the default
    required = ("F", "kernel_size")

    @staticmethod
    def weight_shape(case):
        k = case.params["kernel_size"]
        return (case.params["F"], case.shape[1], k, k)

    @staticmethod
    def options(case, direction):
        return dict(stride=case.params.get("stride", 1), padding=case.params.get("padding", 0))

    def geometry(self, case):
        return conv2d_geometry(case.shape, self.weight_shape(case), **self.options(case, "forward"))

    def inputs(self, case, direction, dtype, seed):
        normal = _normal(seed, dtype)
        w_shape = self.weight_shape(case)
        x = normal(case.shape)
        w = normal(w_shape, 1 / np.sqrt(np.prod(w_shape[1:])))
        if direction == "forward":
            return dict(input=x, weight=w, bias=normal(w_shape[0]))
        return dict(grad_output=normal(self.geometry(case).y_shape), input=x, weight=w)

    def outputs(self, case, direction, inputs, empty):
        if direction == "forward":
            return empty(self.geometry(case).y_shape, inputs["input"].dtype)
        x, w = inputs["input"], inputs["weight"]
        return empty(x.shape, x.dtype), empty(w.shape, w.dtype), empty(w.shape[:1], w.dtype)

    def work(self, case, direction, dtype):
        """FLOPs: the backward computes dx and dw, each as many multiply-adds as the forward (db
        is negligible)."""
        flops = self.geometry(case).flops
        return (flops if direction == "forward" else 2 * flops), "flop"

    def torch_call(self, torch, case, direction, inputs, seed, device="cpu"):
        """The timed PyTorch call on the same ``inputs`` (made with ``seed``), copied to ``device``
        once: forward without a graph; backward: autograd on a graph built once and retained."""
        nnf, kw = torch.nn.functional, self.options(case, direction)
        t = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        if direction == "forward":
            return _torch_no_grad(torch, lambda: nnf.conv2d(t["input"], t["weight"], t["bias"], **kw))
        x, w = t["input"].requires_grad_(), t["weight"].requires_grad_()
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=device, requires_grad=True)
        y = nnf.conv2d(x, w, b, **kw)
        return lambda: torch.autograd.grad(y, (x, w, b), t["grad_output"], retain_graph=True)


class MaxPool2dWorkload(Workload):
    """max_pool2d: case shape (N, C, H, W); params kernel_size, stride. The forward returns the
    indices on both sides (training needs them for the backward)."""

    op = "max_pool2d"
    required = ("kernel_size",)

    @staticmethod
    def options(case, direction):
        if direction == "backward":
            return {}
        return dict(stride=case.params.get("stride"), return_indices=True)

    @staticmethod
    def geometry(case):
        return pool2d_geometry(case.shape, case.params["kernel_size"], case.params.get("stride"))

    def inputs(self, case, direction, dtype, seed):
        normal = _normal(seed, dtype)
        x = normal(case.shape)
        if direction == "forward":
            return dict(input=x)
        _, indices = reference.max_pool2d(x, case.params["kernel_size"], case.params.get("stride"),
                                          return_indices=True)
        return dict(grad_output=normal(indices.shape), indices=indices, input_shape=x.shape)

    @staticmethod
    def args(case, direction, inputs):
        """kernel_size follows the input, as in torch.nn.functional."""
        values = tuple(inputs.values())
        return values + (case.params["kernel_size"],) if direction == "forward" else values

    def outputs(self, case, direction, inputs, empty):
        if direction == "forward":
            y_shape = self.geometry(case).y_shape
            return empty(y_shape, inputs["input"].dtype), empty(y_shape, np.int64)
        return empty(inputs["input_shape"], inputs["grad_output"].dtype)

    def work(self, case, direction, dtype):
        """Bytes moved: the forward reads x and writes y and the int64 indices; the backward
        reads dy and the indices and writes dx."""
        g = self.geometry(case)
        x_elems, y_elems = int(np.prod(g.x_shape)), int(np.prod(g.y_shape))
        return (x_elems + y_elems) * np.dtype(dtype).itemsize + y_elems * 8, "byte"

    def torch_call(self, torch, case, direction, inputs, seed, device="cpu"):
        nnf, k, stride = torch.nn.functional, case.params["kernel_size"], case.params.get("stride")
        if direction == "forward":
            x = torch.from_numpy(inputs["input"]).to(device)
            return _torch_no_grad(torch, lambda: nnf.max_pool2d(x, k, stride, return_indices=True))
        # The same x the indices were taken from: the forward's inputs under the same seed.
        dy = torch.from_numpy(inputs["grad_output"]).to(device)
        x = torch.from_numpy(self.inputs(case, "forward", inputs["grad_output"].dtype, seed)["input"]).to(device).requires_grad_()
        y = nnf.max_pool2d(x, k, stride)
        return lambda: torch.autograd.grad(y, (x,), dy, retain_graph=True)


class RnnWorkload(Workload):
    """rnn (tanh, time-major): case shape (T, N, D, H)."""

    op = "rnn"

    def inputs(self, case, direction, dtype, seed):
        normal = _normal(seed, dtype)
        T, N, D, H = case.shape
        x_seq, h0 = normal((T, N, D)), normal((N, H), 0.5)
        Wx, Wh = normal((D, H), 1 / np.sqrt(D)), normal((H, H), 1 / np.sqrt(H))
        b = normal(H, 0.1)
        if direction == "forward":
            return dict(input=x_seq, hx=h0, Wx=Wx, Wh=Wh, bias=b)
        hs = reference.rnn(x_seq, h0, Wx, Wh, b)
        return dict(grad_output=normal(hs.shape), input=x_seq, hx=h0, Wx=Wx, Wh=Wh, output=hs)

    def outputs(self, case, direction, inputs, empty):
        T, N, D, H = case.shape
        dt = inputs["input"].dtype
        if direction == "forward":
            return empty((T, N, H), dt)
        return tuple(empty(s, dt) for s in ((T, N, D), (N, H), (D, H), (H, H), (H,)))

    def work(self, case, direction, dtype):
        """FLOPs: two GEMMs per step forward, four backward (dx, dh, dWx, dWh)."""
        T, N, D, H = case.shape
        return T * 2 * N * (D + H) * H * (1 if direction == "forward" else 2), "flop"

    def torch_call(self, torch, case, direction, inputs, seed, device="cpu"):
        """``torch.nn.RNN`` (one layer, tanh) holding the same weights (transposed: PyTorch keeps
        (H, D)); its second bias is zero, as fastlayers has one."""
        t = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        # The backward's hs came from the forward with the bias b: the forward's inputs under the same seed.
        b = inputs["bias"] if direction == "forward" else self.inputs(case, "forward", inputs["Wx"].dtype, seed)["bias"]
        T, N, D, H = case.shape
        rnn = torch.nn.RNN(D, H, nonlinearity="tanh", dtype=t["Wx"].dtype, device=device)
        with torch.no_grad():
            rnn.weight_ih_l0.copy_(t["Wx"].T)
            rnn.weight_hh_l0.copy_(t["Wh"].T)
            rnn.bias_ih_l0.copy_(torch.from_numpy(b))
            rnn.bias_hh_l0.zero_()
        h0 = t["hx"][None]
        if direction == "forward":
            return _torch_no_grad(torch, lambda: rnn(t["input"], h0))
        x_seq, h0 = t["input"].requires_grad_(), h0.clone().requires_grad_()
        hs, _ = rnn(x_seq, h0)
        params = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0)
        return lambda: torch.autograd.grad(hs, (x_seq, h0, *params), t["grad_output"], retain_graph=True)


class _GatedWorkload(Workload):
    """lstm and gru (time-major): case shape (T, N, D, H), weights of G gate blocks. The
    backward is timed for dL/d(hidden states) only (no dL/d(cell states)): what autograd
    computes from the PyTorch module's output."""

    gates = 0
    biases = ()  # the cell's bias arguments, in order
    states = ("hx",)  # its initial states, in order

    def _forward_inputs(self, case, normal):
        T, N, D, H = case.shape
        G = self.gates
        inputs = dict(input=normal((T, N, D)))
        inputs.update({s: normal((N, H), 0.5) for s in self.states})
        inputs.update(Wx=normal((D, G * H), 1 / np.sqrt(D)), Wh=normal((H, G * H), 1 / np.sqrt(H)))
        inputs.update({b: normal(G * H, 0.1) for b in self.biases})
        return inputs

    def outputs(self, case, direction, inputs, empty):
        T, N, D, H = case.shape
        G, dt = self.gates, inputs["input"].dtype
        if direction == "forward":
            return tuple(empty((T, N, H), dt) for _ in self.states) if len(self.states) > 1 else empty((T, N, H), dt)
        shapes = ((T, N, D), *[(N, H)] * len(self.states), (D, G * H), (H, G * H), *[(G * H,)] * len(self.biases))
        return tuple(empty(s, dt) for s in shapes)

    def work(self, case, direction, dtype):
        """FLOPs: two GEMMs per step forward, G*H columns wide; four backward (dx, dh, dWx,
        dWh). The cpu kernels also recompute the forward's pre-activations in the backward
        (two more), which this count leaves out, as PyTorch keeps its gates instead."""
        T, N, D, H = case.shape
        return T * 2 * N * (D + H) * self.gates * H * (1 if direction == "forward" else 2), "flop"

    def torch_call(self, torch, case, direction, inputs, seed, device="cpu"):
        """``torch.nn.LSTM`` / ``torch.nn.GRU`` (one layer) holding the same weights, transposed
        (PyTorch keeps (G*H, D)); the LSTM's second bias is zero, as fastlayers adds them."""
        t = {k: torch.from_numpy(v).to(device) for k, v in inputs.items() if v is not None}
        T, N, D, H = case.shape
        module = getattr(torch.nn, self.op.upper())(D, H, dtype=t["Wx"].dtype, device=device)
        with torch.no_grad():
            module.weight_ih_l0.copy_(t["Wx"].T)
            module.weight_hh_l0.copy_(t["Wh"].T)
            module.bias_ih_l0.copy_(t[self.biases[0]])
            if len(self.biases) > 1:
                module.bias_hh_l0.copy_(t[self.biases[1]])
            else:
                module.bias_hh_l0.zero_()
        states = [t[s][None] for s in self.states]
        if direction == "forward":
            state = tuple(states) if len(states) > 1 else states[0]
            return _torch_no_grad(torch, lambda: module(t["input"], state))
        x_seq = t["input"].requires_grad_()
        states = [s.clone().requires_grad_() for s in states]
        hs, _ = module(x_seq, tuple(states) if len(states) > 1 else states[0])
        params = (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0)
        return lambda: torch.autograd.grad(hs, (x_seq, *states, *params[: 2 + len(self.biases)]), t["grad_output"],
                                           retain_graph=True)


class LstmWorkload(_GatedWorkload):
    op = "lstm"
    gates = 4
    biases = ("bias",)
    states = ("hx", "cx")

    def inputs(self, case, direction, dtype, seed):
        inputs = self._forward_inputs(case, _normal(seed, dtype))
        if direction == "forward":
            return inputs
        output, cell = reference.lstm(**inputs)
        grad_output = _normal(seed + 1, dtype)(output.shape)
        return dict(grad_output=grad_output, grad_cell=None, **inputs, output=output, cell=cell)


class GruWorkload(_GatedWorkload):
    op = "gru"
    gates = 3
    biases = ("bias_ih", "bias_hh")

    def inputs(self, case, direction, dtype, seed):
        inputs = self._forward_inputs(case, _normal(seed, dtype))
        if direction == "forward":
            return inputs
        output = reference.gru(**inputs)
        return dict(grad_output=_normal(seed + 1, dtype)(output.shape), **inputs, output=output)


WORKLOADS = {w.op: w for w in (Conv2dWorkload(), MaxPool2dWorkload(), RnnWorkload(), LstmWorkload(), GruWorkload())}
OPS = tuple(WORKLOADS)


def make_inputs(case, direction, dtype, seed=0):
    """The inputs of ``case`` in ``direction``: the functional API's positional arrays, by name, in order."""
    return WORKLOADS[case.op].inputs(case, direction, np.dtype(dtype), seed)


def call_args(case, direction, inputs):
    """``(args, kwargs)`` of the functional call of ``case`` in ``direction`` on ``inputs``."""
    workload = WORKLOADS[case.op]
    return workload.args(case, direction, inputs), workload.options(case, direction)


def work(case, direction, dtype):
    """``(amount, unit)``: FLOPs of compute-bound ops or bytes moved by memory-bound ones, one call."""
    return WORKLOADS[case.op].work(case, direction, dtype)
