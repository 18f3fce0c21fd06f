"""The batch_norm spec: arguments, geometry, outputs and kernels of ``batch_norm`` and
``batch_norm_backward`` (``torch.nn.functional.batch_norm``'s arguments and semantics).

Every kernel works on the input seen as (N, C, S), S the product of the axes after the channels
(1 for (N, C) input, H*W for NCHW). A forward kernel returns the output and the statistics it
normalised with (the batch's mean and biased variance in training mode, else the running ones),
in float64 (the cuda kernel, given GPU arrays: device arrays in the input's dtype); the spec then
updates the running statistics in place, as PyTorch does, so every backend shares that step (on
the GPU, by the cuda backend's kernel, when the running statistics live there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._checks import check_array, check_bool, check_real, check_shape
from ._spec import Kernel, OpSpec, Problem

STATS_DTYPE = np.dtype(np.float64)


@dataclass(frozen=True)
class BatchNormGeometry:
    N: int
    C: int
    S: int  # cells per (image, channel) plane
    training: bool
    eps: float

    @property
    def count(self):
        """Values per channel: what the batch statistics average over."""
        return self.N * self.S

    def work(self, direction, itemsize):
        """``(bytes, "byte")`` moved by one call: the forward reads x and writes y, the backward
        reads dy and x and writes dx (statistics recomputed from x while it is in cache)."""
        size = self.N * self.C * self.S
        return size * itemsize * (2 if direction == "forward" else 3), "byte"


def _check_channel_vectors(C, dt, **vectors):
    for name, v in vectors.items():
        if v is not None:
            check_array(name, v, 1, dt)
            check_shape(name, v, (C,))


def _geometry(input, running_mean, running_var, weight, training, eps, what):
    dt = check_array(what, input, (2, 3, 4, 5))
    N, C = (int(s) for s in input.shape[:2])
    S = math.prod(input.shape[2:])
    _check_channel_vectors(C, dt, running_mean=running_mean, running_var=running_var, weight=weight)
    training = check_bool("training", training)
    eps = check_real("eps", eps, 0.0, float("inf"), low_open=True)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False: eval mode normalises "
                         "with them")
    if training and N * S <= 1:
        raise ValueError(f"batch_norm in training mode needs more than one value per channel, got input of shape "
                         f"{tuple(input.shape)}")
    return BatchNormGeometry(N, C, S, training, eps), dt


def _update_running(running_mean, running_var, momentum, g):
    """The finish of a training forward: PyTorch's update of the running statistics, in place
    (the variance unbiased), from the batch statistics the kernel returned."""

    def finish(results, outs):
        output, mean, var = results
        if g.training and running_mean is not None and not isinstance(running_mean, np.ndarray):
            from ..backends.cuda.batch_norm import update_running  # GPU running statistics

            update_running(running_mean, running_var, mean, var, momentum, g.count)
        elif g.training and running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * (g.count / (g.count - 1))
        return output

    return finish


KERNELS = (
    Kernel("numpy", "reference", "fastlayers.backends.numpy",
           {"forward": "batch_norm_forward", "backward": "batch_norm_backward"}, allocates=True),
    Kernel("cpu", "per_channel", "fastlayers.backends.cpu.batch_norm", {"forward": "forward", "backward": "backward"}),
    Kernel("cuda", "block_per_channel", "fastlayers.backends.cuda.batch_norm",
           {"forward": "forward", "backward": "backward"}, allocates=True),
)


class BatchNormSpec(OpSpec):
    name = "batch_norm"
    functions = {"batch_norm": "forward", "batch_norm_backward": "backward"}
    kernels = KERNELS

    def forward(self, input, running_mean, running_var, weight, bias, training, momentum, eps):
        g, dt = _geometry(input, running_mean, running_var, weight, training, eps, "input")
        _check_channel_vectors(g.C, dt, bias=bias)
        momentum = check_real("momentum", momentum, 0.0, 1.0, low_open=False)
        if g.training and running_mean is not None:
            for name, v in (("running_mean", running_mean), ("running_var", running_var)):
                # Arrays other than NumPy's arrive here on the GPU only (host ones came through DLPack).
                if isinstance(v, np.ndarray) and not v.flags.writeable:
                    raise ValueError(f"{name} must be a writeable NumPy array in training mode (it is updated in place)")
        stats = (("mean", (g.C,), STATS_DTYPE), ("var", (g.C,), STATS_DTYPE))
        return Problem(
            "forward", g,
            dict(input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias),
            (("output", tuple(input.shape), dt),),
            kernel_outputs=(("output", tuple(input.shape), dt),) + stats,
            to_kernel_out=lambda outs: (outs[0], None, None),
            finish=_update_running(running_mean, running_var, momentum, g),
            replayable=not g.training,  # the update writes into this call's running statistics
        )

    def backward(self, grad_output, input, running_mean, running_var, weight, training, eps):
        g, dt = _geometry(input, running_mean, running_var, weight, training, eps, "input")
        check_array("grad_output", grad_output, input.ndim, dt)
        check_shape("grad_output", grad_output, input.shape)
        arrays = dict(grad_output=grad_output, input=input, running_mean=running_mean, running_var=running_var,
                      weight=weight)
        outputs = (("grad_input", tuple(input.shape), dt), ("grad_weight", (g.C,), dt), ("grad_bias", (g.C,), dt))
        return Problem("backward", g, arrays, outputs)


BATCH_NORM = BatchNormSpec()
