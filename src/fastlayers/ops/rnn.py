"""The rnn spec: arguments, geometry, outputs and kernels of ``rnn_step``, ``rnn`` and their
backwards. A step is a sequence of length one: every kernel runs sequences, and gets T = 1 with
step-shaped arrays (N, D) for ``rnn_step`` (it reshapes them, a view, to (1, N, D)).

The course notes' conventions, where they differ from ``torch.nn.RNN``: the weights multiply from
the right (``x @ Wx``, Wx of shape (D, H), PyTorch's ``weight_ih_l0`` transposed) and there is one
bias (PyTorch's ``bias_ih_l0 + bias_hh_l0``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import MAX_ELEMENTS, check_array, check_choice, check_shape
from ._spec import Kernel, OpSpec, Problem
from ._workload import Workload, normal, torch_no_grad

NONLINEARITIES = ("tanh", "relu")


@dataclass(frozen=True)
class RnnGeometry:
    T: int  # 1 for rnn_step
    N: int
    D: int
    H: int
    nonlinearity: str
    step: bool  # rnn_step: arrays are (N, .), not (T, N, .)

    def work(self, direction):
        """``(flop, "flop")``: two GEMMs per step forward, four backward (dx, dh, dWx, dWh)."""
        step = 2 * self.N * (self.D + self.H) * self.H
        return self.T * step * (1 if direction == "forward" else 2), "flop"

    def shaped(self, width):
        """The shape of a per-step array of ``width`` columns as the caller passes it."""
        return (self.N, width) if self.step else (self.T, self.N, width)


def _check_weights(D, Wx, Wh, dt):
    check_array("Wh", Wh, 2, dt)
    H = Wh.shape[0]
    if Wh.shape[1] != H:
        raise ValueError(f"Wh must be square (H, H), got {tuple(Wh.shape)}")
    check_array("Wx", Wx, 2, dt)
    if tuple(Wx.shape) != (D, H):
        hint = ""
        if tuple(Wx.shape) == (H, D):
            hint = ("; that is PyTorch's weight_ih layout (H, D): fastlayers multiplies x @ Wx (the course notes' "
                    "layout), pass Wx.T")
        raise ValueError(f"Wx must have shape (D, H) = ({D}, {H}) (D from the input, H from Wh), "
                         f"got {tuple(Wx.shape)}{hint}")
    return H


KERNELS = (
    Kernel("numpy", "reference", "fastlayers.backends.numpy", {"forward": "rnn_forward", "backward": "rnn_backward"},
           allocates=True),
    Kernel("cpu", "fused_gemm", "fastlayers.backends.cpu.rnn", {"forward": "forward", "backward": "backward"}),
    Kernel("cuda", "fused_gemm", "fastlayers.backends.cuda.rnn", {"forward": "forward", "backward": "backward"},
           allocates=True),
)


class RnnWorkload(Workload):
    """rnn (tanh, time-major): case shape (T, N, D, H)."""

    gpu_target = ("time", 2.0)

    def inputs(self, case, direction, dtype, seed):
        from .. import reference  # it validates through this module's spec

        draw = normal(seed, dtype)
        T, N, D, H = case.shape
        x_seq, h0 = draw((T, N, D)), draw((N, H), 0.5)
        Wx, Wh = draw((D, H), 1 / np.sqrt(D)), draw((H, H), 1 / np.sqrt(H))
        b = draw(H, 0.1)
        if direction == "forward":
            return dict(input=x_seq, hx=h0, Wx=Wx, Wh=Wh, bias=b)
        hs = reference.rnn(x_seq, h0, Wx, Wh, b)
        return dict(grad_output=draw(hs.shape), input=x_seq, hx=h0, Wx=Wx, Wh=Wh, output=hs)

    def outputs(self, case, direction, inputs, empty):
        T, N, D, H = case.shape
        dt = inputs["input"].dtype
        if direction == "forward":
            return empty((T, N, H), dt)
        return tuple(empty(s, dt) for s in ((T, N, D), (N, H), (D, H), (H, H), (H,)))

    def work(self, case, direction, dtype):
        return RnnGeometry(*case.shape, nonlinearity="tanh", step=False).work(direction)

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
            return torch_no_grad(torch, lambda: rnn(t["input"], h0))
        x_seq, h0 = t["input"].requires_grad_(), h0.clone().requires_grad_()
        hs, _ = rnn(x_seq, h0)
        params = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0)
        return lambda: torch.autograd.grad(hs, (x_seq, h0, *params), t["grad_output"], retain_graph=True)


class RnnSpec(OpSpec):
    name = "rnn"
    functions = {"rnn_step": "forward", "rnn_step_backward": "backward", "rnn": "forward", "rnn_backward": "backward"}
    kernels = KERNELS
    workload = RnnWorkload()

    @staticmethod
    def _geometry(input, hx, Wx, Wh, nonlinearity, step):
        """Check input, weights and state; return (geometry, dtype, batched)."""
        full = 2 if step else 3
        dt = check_array("input", input, (full - 1, full))
        batched = input.ndim == full
        if step:
            T, (N, D) = 1, (input.shape if batched else (1,) + tuple(input.shape))
        else:
            T, N, D = input.shape if batched else (input.shape[0], 1, input.shape[1])
        H = _check_weights(D, Wx, Wh, dt)
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        if hx is not None or step:
            check_array("hx", hx, 2 if batched else 1, dt)
            check_shape("hx", hx, (N, H) if batched else (H,))
        if T * N * max(H, D) >= MAX_ELEMENTS:
            raise ValueError(f"rnn sizes T={T}, N={N}, D={D}, H={H} are too large to index")
        return RnnGeometry(int(T), int(N), int(D), int(H), nonlinearity, step), dt, batched

    @staticmethod
    def _batched(g, batched, step_arrays, state_arrays):
        """Unbatched arrays given a batch axis of one (N = 1): views, so outputs land in place."""
        if batched:
            return {**step_arrays, **state_arrays}
        per_step = {k: None if a is None else a.reshape(g.shaped(a.shape[-1])) for k, a in step_arrays.items()}
        state = {k: None if a is None else a.reshape((1,) + tuple(a.shape)) for k, a in state_arrays.items()}
        return {**per_step, **state}

    def forward(self, input, hx, Wx, Wh, bias, nonlinearity, step):
        g, dt, batched = self._geometry(input, hx, Wx, Wh, nonlinearity, step)
        if bias is not None:
            check_array("bias", bias, 1, dt)
            check_shape("bias", bias, (g.H,))
        arrays = self._batched(g, batched, dict(input=input), dict(hx=hx))
        shape = g.shaped(g.H)
        public = shape if batched else (shape[:-2] + shape[-1:])
        return Problem(
            "forward", g, dict(input=arrays["input"], hx=arrays["hx"], Wx=Wx, Wh=Wh, bias=bias),
            (("output", public, dt),), kernel_outputs=(("output", shape, dt),),
            to_kernel_out=lambda outs: tuple(None if o is None else o.reshape(shape) for o in outs),
            finish=lambda r, outs: r[0].reshape(public) if outs[0] is None else outs[0],
        )

    def backward(self, grad_output, input, hx, Wx, Wh, output, nonlinearity, step):
        g, dt, batched = self._geometry(input, hx, Wx, Wh, nonlinearity, step)
        out_shape = g.shaped(g.H)
        public = (lambda s: s) if batched else (lambda s: s[:-2] + s[-1:])
        for name, a in (("grad_output", grad_output), ("output", output)):
            check_array(name, a, len(public(out_shape)), dt)
            check_shape(name, a, public(out_shape))
        arrays = self._batched(g, batched, dict(grad_output=grad_output, input=input, output=output), dict(hx=hx))
        state = (g.N, g.H) if batched else (g.H,)
        kernel_shapes = (g.shaped(g.D), (g.N, g.H), (g.D, g.H), (g.H, g.H), (g.H,))
        public_shapes = (public(g.shaped(g.D)), state) + kernel_shapes[2:]
        names = ("grad_input", "grad_hx", "grad_Wx", "grad_Wh", "grad_bias")
        return Problem(
            "backward", g,
            dict(grad_output=arrays["grad_output"], input=arrays["input"], hx=arrays["hx"], Wx=Wx, Wh=Wh,
                 output=arrays["output"]),
            tuple((n, s, dt) for n, s in zip(names, public_shapes)),
            kernel_outputs=tuple((n, s, dt) for n, s in zip(names, kernel_shapes)),
            to_kernel_out=lambda outs: tuple(None if o is None else o.reshape(s) for o, s in zip(outs, kernel_shapes)),
            finish=lambda r, outs: tuple(x.reshape(s) if o is None else o for x, o, s in zip(r, outs, public_shapes)),
        )


RNN = RnnSpec()
