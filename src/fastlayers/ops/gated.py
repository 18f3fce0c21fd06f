"""The LSTM and GRU specs (PyTorch's gates in fastlayers' layout: ``Wx = weight_ih.T``,
``Wh = weight_hh.T``, gate blocks of H columns side by side, lstm (i, f, g, o), gru (r, z, n);
``fastlayers.reference`` states the equations).

The two families share their geometry and their shape of problem: per-step arrays (the input,
the outputs and their gradients) of shape (T, N, .), states (N, H), weights and biases. Kernels
run sequences; a step is a sequence of one (its (N, .) arrays viewed as (1, N, .)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ._checks import MAX_ELEMENTS, check_array, check_arrays_like, check_shape, is_gpu
from ._spec import Kernel, OpSpec, Problem, drop_lead, lead_one
from ._workload import Workload, normal, torch_no_grad


@dataclass(frozen=True)
class GatedGeometry:
    T: int  # 1 for a step
    N: int
    D: int
    H: int
    keep: bool = False  # a forward that keeps its gates for the backward (return_workspace=True)

    @property
    def sizes(self):
        return (self.T, self.N, self.D, self.H)


GATES = {"lstm": 4, "gru": 3}  # PyTorch's gate order: lstm (i, f, g, o), gru (r, z, n)
# H-wide blocks of the gates a forward keeps for its backward: the LSTM's activated (i, f, g, o),
# the GRU's (r, z, n, u_n) with u_n = h_prev Whn + bhn, the term the reset gate multiplies.
KEPT_BLOCKS = 4


class GateWorkspace:
    """The gates a forward kept for its backward: what ``fastlayers.lstm(...,
    return_workspace=True)`` (or ``gru``) returns last, to pass to the backward of the same call
    as ``workspace=``, which then reads the gates instead of recomputing them (two GEMMs over
    every step fewer, as PyTorch's and cuDNN's reserve space).

    Opaque and read only. It records the op, the sizes and the dtype of the call that made it and
    that call's last hidden state, which the backward checks against its arguments (a workspace
    of another call is refused, never misread). Memory: T*N*4H elements (padded rows). The cuda
    kernels keep no gates: their workspace holds none (nor the last state, left on the device),
    and the backward recomputes the gates."""

    __slots__ = ("_cell", "_geometry", "_geometry_dtype", "_gates", "_last")

    def __init__(self, cell, geometry, dtype, gates, last_output):
        self._geometry_dtype = np.dtype(dtype)
        if gates is not None:
            gates.flags.writeable = False
        self._cell, self._geometry, self._gates = cell, geometry, gates
        self._last = None if is_gpu(last_output) else np.array(last_output)

    @property
    def cell(self):
        """"lstm" or "gru": the op whose forward made it."""
        return self._cell

    @property
    def dtype(self):
        return self._geometry_dtype

    @property
    def nbytes(self):
        return 0 if self._gates is None else self._gates.nbytes

    def __eq__(self, other):
        """The same op, sizes and gates (two forwards of the same call keep equal workspaces)."""
        if not isinstance(other, GateWorkspace):
            return NotImplemented
        width = KEPT_BLOCKS * self._geometry.H  # the rows' padding is no part of the gates
        gates = [None if w._gates is None else w._gates[:, :width] for w in (self, other)]
        same = (lambda a, b: a is b if a is None or b is None else np.array_equal(a, b))  # noqa: E731
        return (self._cell, self._geometry.sizes, self.dtype) == (other._cell, other._geometry.sizes, other.dtype) \
            and same(*gates) and same(self._last, other._last)

    __hash__ = None  # equal by value, as NumPy arrays: not hashable

    def __repr__(self):
        T, N, D, H = self._geometry.sizes
        return f"GateWorkspace({self._cell}, T={T}, N={N}, D={D}, H={H}, dtype={self.dtype})"


def _fingerprint(output):
    """What a workspace keeps of its forward's output, to recognise it: the last step's states
    (``output[-1:]``: empty for T = 0)."""
    return output[-1:]


def gated_geometry(cell, input, Wx, Wh, states, biases, sequence=False, backward=None):
    """Check shapes and dtypes of an LSTM or GRU step (input (N, D)) or sequence (input (T, N, D)).

    ``Wx`` is (D, G*H) and ``Wh`` (H, G*H) with G gates (``GATES[cell]``), gate blocks side by side
    in PyTorch's order; ``states`` and ``biases`` are dicts name -> array or None, shaped (N, H)
    and (G*H,); ``backward`` a dict name -> array or None of per-step arrays shaped (T, N, H)
    for a sequence, (N, H) for a step. Returns (geometry, dtype)."""
    gates = GATES[cell]
    dt = check_array("input", input, 3 if sequence else 2)
    if sequence:
        T, N, D = input.shape
    else:
        T, (N, D) = 1, input.shape
    check_array("Wx", Wx, 2, dt)
    check_array("Wh", Wh, 2, dt)
    H = Wh.shape[0]
    width = gates * H
    if Wh.shape[1] != width and Wh.shape[1] * gates == Wh.shape[0]:
        raise ValueError(f"Wh must have shape (H, {gates}*H) with {gates} gates, got {tuple(Wh.shape)}: "
                         f"this looks like PyTorch's weight_hh ({gates}*H, H); pass weight_hh.T")
    check_shape("Wh", Wh, (H, width))
    if Wx.shape[0] != D and Wx.shape[1] == D and Wx.shape[0] == width:
        raise ValueError(f"Wx must have shape {(D, width)} (input features, {gates} gates x H), got "
                         f"{tuple(Wx.shape)}: this looks like PyTorch's weight_ih; pass weight_ih.T")
    check_shape("Wx", Wx, (D, width))
    for name, s in states.items():
        if s is not None:
            if getattr(s, "ndim", 2) == 3 and tuple(s.shape[1:]) == (N, H):
                raise ValueError(f"{name} must have shape {(N, H)}, got {tuple(s.shape)}: the (layers, N, H) "
                                 f"states of torch.nn.{cell.upper()} are one (N, H) state per layer here")
            check_array(name, s, 2, dt)
            check_shape(name, s, (N, H))
    for name, b in biases.items():
        if b is not None:
            check_array(name, b, 1, dt)
            check_shape(name, b, (width,))
    if backward:
        check_arrays_like(dt, (T, N, H) if sequence else (N, H),
                          **{k: v for k, v in backward.items() if v is not None})
    if T * N * max(width, KEPT_BLOCKS * H) >= MAX_ELEMENTS:
        raise ValueError(f"{cell} sizes T={T}, N={N}, H={H} are too large to index")
    return GatedGeometry(int(T), int(N), int(D), int(H)), dt


class _GatedWorkload(Workload):
    """lstm and gru (time-major): case shape (T, N, D, H), weights of G gate blocks. The
    backward is timed for dL/d(hidden states) only (no dL/d(cell states)): what autograd
    computes from the PyTorch module's output. It gets the gates its forward kept (the
    ``workspace`` input), as PyTorch's backward gets those its forward saved."""

    gates = 0
    biases: Tuple[str, ...] = ()  # the cell's bias arguments, in order
    states: Tuple[str, ...] = ("hx",)  # its initial states, in order

    @staticmethod
    def args(case, direction, inputs):
        return tuple(v for k, v in inputs.items() if k != "workspace")

    def keywords(self, case, direction, inputs):
        return {"workspace": inputs["workspace"]} if "workspace" in inputs else {}

    def _forward_of(self, inputs):
        """The reference forward's results on ``inputs``, with the GateWorkspace last."""
        from .. import functional  # it validates through this module's spec

        return getattr(functional, self.op)(**inputs, return_workspace=True, backend="numpy")

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
        dWh), the gates read from the forward's workspace (a backward without one recomputes
        them: two GEMMs more)."""
        T, N, D, H = case.shape
        return T * 2 * N * (D + H) * self.gates * H * (1 if direction == "forward" else 2), "flop"

    def torch_call(self, torch, case, direction, inputs, seed, device="cpu"):
        """``torch.nn.LSTM`` / ``torch.nn.GRU`` (one layer) holding the same weights, transposed
        (PyTorch keeps (G*H, D)); the LSTM's second bias is zero, as fastlayers adds them."""
        t = {k: torch.from_numpy(v).to(device) for k, v in inputs.items() if isinstance(v, np.ndarray)}
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
            return torch_no_grad(torch, lambda: module(t["input"], state))
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
        inputs = self._forward_inputs(case, normal(seed, dtype))
        if direction == "forward":
            return inputs
        output, cell, workspace = self._forward_of(inputs)
        grad_output = normal(seed + 1, dtype)(output.shape)
        return dict(grad_output=grad_output, grad_cell=None, **inputs, output=output, cell=cell, workspace=workspace)


class GruWorkload(_GatedWorkload):
    op = "gru"
    gates = 3
    biases = ("bias_ih", "bias_hh")

    def inputs(self, case, direction, dtype, seed):
        inputs = self._forward_inputs(case, normal(seed, dtype))
        if direction == "forward":
            return inputs
        output, workspace = self._forward_of(inputs)
        return dict(grad_output=normal(seed + 1, dtype)(output.shape), **inputs, output=output, workspace=workspace)


class GatedSpec(OpSpec):
    """An LSTM or GRU: ``states`` (initial states, e.g. ("hx", "cx")), ``biases`` and ``outputs``
    (every step's states, e.g. ("output", "cell")) name the arrays of its functions, the same for
    the sequence and the step functions; the gradients are named ``grad_`` + the array's name."""

    def __init__(self, cell, states, biases, outputs, workload):
        self.name = self.cell = cell
        self.workload = workload
        self.states, self.biases, self.outputs = states, biases, outputs
        self.functions = {cell: "forward", f"{cell}_backward": "backward",
                          f"{cell}_step": "forward", f"{cell}_step_backward": "backward"}
        functions = {"forward": f"{cell}_forward", "backward": f"{cell}_backward"}
        self.kernels = (
            Kernel("numpy", "reference", "fastlayers.backends.numpy", functions, allocates=True),
            # allocates: it checks its BLAS sizes before the outputs are made.
            Kernel("cpu", "fused_gemm", f"fastlayers.backends.cpu.{cell}", functions, allocates=True),
            Kernel("cuda", "fused_gemm", "fastlayers.backends.cuda.gated", functions, allocates=True),
        )

    def _problem(self, direction, arrays, grads, step, keep=False, workspace=None):
        """``arrays``: the kernel's arguments by name, in order; ``grads``: the names of the
        per-step gradients among them (backward); ``keep``: the forward returns a GateWorkspace
        after its outputs; ``workspace``: the backward's (checked here, its gates passed as the
        kernel's last array, ``gates``; None: the kernel recomputes them)."""
        g, dt = gated_geometry(
            self.cell, arrays["input"], arrays["Wx"], arrays["Wh"], {s: arrays[s] for s in self.states},
            {b: arrays[b] for b in self.biases}, sequence=not step,
            backward={k: arrays[k] for k in grads + self.outputs} if direction == "backward" else None)
        if keep:
            g = GatedGeometry(g.T, g.N, g.D, g.H, keep=True)
        per_step = {"input", *grads, *(self.outputs if direction == "backward" else ())}
        kernel_arrays = {k: lead_one(a) if step and k in per_step else a for k, a in arrays.items()}
        if direction == "backward":
            kernel_arrays["gates"] = self._gates_of(workspace, g, dt, arrays["output"])
        seq = lambda width: (g.T, g.N, width)  # noqa: E731
        if direction == "forward":
            shapes = {o: seq(g.H) for o in self.outputs}
        else:
            G = g.H * GATES[self.cell]
            shapes = {"grad_input": seq(g.D), **{f"grad_{s}": (g.N, g.H) for s in self.states},
                      "grad_Wx": (g.D, G), "grad_Wh": (g.H, G), **{f"grad_{b}": (G,) for b in self.biases}}
        stepped = {k for k in shapes if k in self.outputs or k == "grad_input"}
        public = {k: s[1:] if step and k in stepped else s for k, s in shapes.items()}
        to_kernel = (lambda outs: tuple(lead_one(o) if o is not None and k in stepped else o
                                        for k, o in zip(shapes, outs))) if step else (lambda outs: outs)

        def finish(r, outs):
            if keep:
                *r, gates = r
                r = (*r, GateWorkspace(self.cell, g, dt, gates, _fingerprint(r[0])))
            if step:
                r = tuple(drop_lead((x,), (o,))[0] if k in stepped else x for k, x, o in zip(shapes, r, outs))
                r = tuple(x if o is None else o for x, o in zip(r, outs))
            return r[0] if len(r) == 1 else r

        return Problem(direction, g, kernel_arrays, tuple((k, public[k], dt) for k in shapes),
                       kernel_outputs=tuple((k, shapes[k], dt) for k in shapes),
                       to_kernel_out=to_kernel, finish=finish)

    def _gates_of(self, workspace, g, dt, output):
        """The gates array of the backward's ``workspace`` (None: none given), once it is known to
        come from this op's forward of these sizes, dtype and output."""
        if workspace is None:
            return None
        made_by = f"fastlayers.{self.cell}(..., return_workspace=True)"
        if not isinstance(workspace, GateWorkspace):
            raise TypeError(f"workspace must be None or the GateWorkspace that {made_by} returned, got "
                            f"{type(workspace).__name__}")
        if workspace.cell != self.cell:
            raise ValueError(f"workspace was kept by {workspace.cell}'s forward; {self.cell}_backward needs the one "
                             f"that {made_by} returned")
        if workspace._geometry.sizes != g.sizes:
            raise ValueError(f"workspace was kept by a forward of sizes (T, N, D, H) = {workspace._geometry.sizes}, "
                             f"this backward's are {g.sizes}")
        if workspace.dtype != dt:
            raise TypeError(f"workspace has dtype {workspace.dtype} but the other arguments are {dt}")
        gates = workspace._gates
        if gates is not None and (gates.ndim != 2 or gates.shape[0] != g.T * g.N
                                  or gates.shape[1] < KEPT_BLOCKS * g.H or not gates.flags.c_contiguous):
            raise ValueError(f"workspace holds gates of shape {gates.shape}, expected ({g.T * g.N}, >= "
                             f"{KEPT_BLOCKS * g.H}) in C order")
        if workspace._last is not None and not is_gpu(output) and \
                not np.array_equal(_fingerprint(output), workspace._last):
            raise ValueError("workspace was kept by another forward: its last hidden state differs from output's; "
                             "pass the workspace returned with this output")
        return gates

    def forward(self, arrays, step, keep=False):
        return self._problem("forward", arrays, (), step, keep=keep)

    def backward(self, arrays, step, workspace=None):
        grads = tuple(f"grad_{o}" for o in self.outputs)
        return self._problem("backward", arrays, grads, step, workspace=workspace)


LSTM = GatedSpec("lstm", ("hx", "cx"), ("bias",), ("output", "cell"), LstmWorkload())
GRU = GatedSpec("gru", ("hx",), ("bias_ih", "bias_hh"), ("output",), GruWorkload())
