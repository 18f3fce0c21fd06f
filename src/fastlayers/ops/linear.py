"""The linear spec: arguments, geometry, outputs and kernels of ``linear`` and ``linear_backward``
(``torch.nn.functional.linear``: ``y = input @ weight.T + bias``, weight (out_features, in_features)).

The input may have any leading axes (..., in_features); kernels see it as (M, in_features).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


from ._checks import check_array, check_shape
from ._spec import Kernel, OpSpec, Problem, first_result

INPUT_NDIM = range(1, 65)


@dataclass(frozen=True)
class LinearGeometry:
    M: int  # rows: the product of the input's leading axes
    I: int  # noqa: E741  in_features
    O: int  # out_features
    lead: tuple  # the input's leading axes

    def work(self, direction):
        """``(flop, "flop")``: one GEMM forward, two backward (grad_input, grad_weight)."""
        return 2 * self.M * self.I * self.O * (1 if direction == "forward" else 2), "flop"


def _geometry(input, weight):
    dt = check_array("input", input, INPUT_NDIM)
    check_array("weight", weight, 2, dt)
    O, I = (int(s) for s in weight.shape)  # noqa: E741
    shape = tuple(input.shape)  # a tuple: the CUDA simulator's shapes refuse negative indices
    if shape[-1] != I:
        hint = ""
        if shape[-1] == O and O != I:
            hint = "; a weight of shape (in_features, out_features) is the transpose of torch's layout: pass weight.T"
        raise ValueError(f"input's last axis ({shape[-1]}) must equal weight.shape[1] = in_features = {I} "
                         f"(weight is (out_features, in_features) = {tuple(weight.shape)}){hint}")
    lead = tuple(int(s) for s in shape[:-1])
    return LinearGeometry(math.prod(lead), I, O, lead), dt


KERNELS = (
    Kernel("numpy", "reference", "fastlayers.backends.numpy",
           {"forward": "linear_forward", "backward": "linear_backward"}, allocates=True),
    Kernel("cpu", "gemm", "fastlayers.backends.cpu.linear", {"forward": "forward", "backward": "backward"}),
    Kernel("cuda", "gemm", "fastlayers.backends.cuda.linear", {"forward": "forward", "backward": "backward"},
           allocates=True),
)


class LinearSpec(OpSpec):
    name = "linear"
    functions = {"linear": "forward", "linear_backward": "backward"}
    kernels = KERNELS

    def forward(self, input, weight, bias):
        g, dt = _geometry(input, weight)
        if bias is not None:
            check_array("bias", bias, 1, dt)
            check_shape("bias", bias, (g.O,))
        return Problem("forward", g, dict(input=input, weight=weight, bias=bias), (("output", g.lead + (g.O,), dt),),
                       finish=first_result)

    def backward(self, grad_output, input, weight):
        g, dt = _geometry(input, weight)
        check_array("grad_output", grad_output, input.ndim, dt)
        check_shape("grad_output", grad_output, g.lead + (g.O,))
        outputs = (("grad_input", tuple(input.shape), dt), ("grad_weight", (g.O, g.I), dt), ("grad_bias", (g.O,), dt))
        return Problem("backward", g, dict(grad_output=grad_output, input=input, weight=weight), outputs)


LINEAR = LinearSpec()
