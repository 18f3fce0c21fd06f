"""The relu spec: arguments, geometry, outputs and kernels of ``relu`` and ``relu_backward``.

Elementwise: any shape, the output of the input's shape and dtype. The backward gives 0 where
the input is <= 0 (at 0 too) and passes the gradient elsewhere (at NaN too), as PyTorch's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


from ._checks import check_array, check_shape
from ._spec import Kernel, OpSpec, Problem, first_result

ANY_NDIM = range(65)  # any rank NumPy 2 allows (NPY_MAXDIMS)


@dataclass(frozen=True)
class ElementwiseGeometry:
    shape: tuple

    @property
    def size(self):
        return math.prod(self.shape)

    def work(self, direction, itemsize):
        """``(bytes, "byte")`` moved: the forward reads x and writes y, the backward reads dy and x
        and writes dx."""
        return self.size * itemsize * (2 if direction == "forward" else 3), "byte"


KERNELS = (
    Kernel("numpy", "reference", "fastlayers.backends.numpy", {"forward": "relu_forward", "backward": "relu_backward"},
           allocates=True),
    Kernel("cpu", "blocked", "fastlayers.backends.cpu.relu", {"forward": "forward", "backward": "backward"}),
    Kernel("cuda", "thread_per_element", "fastlayers.backends.cuda.relu",
           {"forward": "forward", "backward": "backward"}, allocates=True),
)


class ReluSpec(OpSpec):
    name = "relu"
    functions = {"relu": "forward", "relu_backward": "backward"}
    kernels = KERNELS

    def forward(self, input):
        dt = check_array("input", input, ANY_NDIM)
        g = ElementwiseGeometry(tuple(input.shape))
        return Problem("forward", g, dict(input=input), (("output", g.shape, dt),), finish=first_result)

    def backward(self, grad_output, input):
        dt = check_array("input", input, ANY_NDIM)
        check_array("grad_output", grad_output, input.ndim, dt)
        check_shape("grad_output", grad_output, input.shape)
        g = ElementwiseGeometry(tuple(input.shape))
        return Problem("backward", g, dict(grad_output=grad_output, input=input), (("grad_input", g.shape, dt),),
                       finish=first_result)


RELU = ReluSpec()
