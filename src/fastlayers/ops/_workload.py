"""What the benchmark needs to know about an op, the part of a spec it reads: ``spec.workload``.

A workload gives, for a case of the table (:mod:`fastlayers.cases`) and a direction: the inputs
(NumPy arrays, the functional API's positional arguments in order), the keyword options of the
call, the output buffers an ``out=`` call writes into, the work (FLOPs or bytes) and the PyTorch
call that computes the same thing from the same inputs, and, for the ops an inference engine
runs, the forward as a one-node ONNX model (``onnx_model``: ONNX Runtime's and OpenVINO's rows).
Each op's workload class stands in its spec's module (``ops/<family>.py``);
:mod:`fastlayers.benchmark.workloads` only iterates over the specs. PyTorch and ``onnx`` are
arguments of ``torch_call`` and ``onnx_model``, never imported here.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def normal(seed, dtype):
    """Draws O(1) values (scaled as at initialisation, so no backend meets denormals or a
    saturated tanh that a real network would not), always from float64 so that float32 and
    float64 runs see the same numbers."""
    rng = np.random.default_rng(seed)
    return lambda shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(dtype)


# The benchmark family of PyTorch programs run with their torch.nn modules swapped for
# fastlayers.torch's (``fastlayers.torch.convert(net, fuse=True)``), as a PyTorch user would run fastlayers.
SWAPPED_FAMILY = "fastlayers.torch"


def torch_no_grad(torch, fn):
    def call():
        with torch.no_grad():
            return fn()

    return call


class Workload:
    """A workload's defaults: no ``algo=`` choice, no case parameter required, no keyword
    options, the inputs as the positional arguments in order."""

    algos: Tuple[str, ...] = ()
    required: Tuple[str, ...] = ()  # the case parameters the op has no default for
    # What bench/bench_cuda.py holds the op's cuda kernels to: None, or (kind, bound) with kind
    # "throughput" (forward at least bound x cuDNN's throughput, geometric mean over the cases),
    # "bandwidth" (each direction at least bound x the device's copy bandwidth: memory-bound ops)
    # or "time" (forward + backward at most bound x cuDNN's time).
    gpu_target: Optional[Tuple[str, float]] = None

    @staticmethod
    def case_error(case):
        """Why ``case`` (a user's ``--add-case``) is no case of this workload, or None."""
        return None

    @staticmethod
    def args(case, direction, inputs):
        return tuple(inputs.values())

    @staticmethod
    def options(case, direction):
        return {}

    def keywords(self, case, direction, inputs):
        """The call's keyword arguments: ``options``, and in workloads that need them, keyword
        arguments made with the inputs (the gated ops' backward ``workspace``)."""
        return self.options(case, direction)

    # The tables' names of the two directions (the wide view adds "fwd+bwd", the sum of an op's
    # two, where both are measured; a model's, named otherwise, get none).
    direction_names = {"forward": "fwd", "backward": "bwd"}
    takes_out = True  # whether fastlayers' call takes out= buffers (the "+out" rows)

    def fastlayers_call(self, case, direction, args, kwargs):
        """The timed fastlayers call: the functional API's function of the op and direction."""
        from .. import functional

        fn = getattr(functional, op_name(case.op, direction))
        return lambda: fn(*args, **kwargs)

    def unavailable(self, case, direction, family, ops):
        """Why ``family`` cannot time ``case`` in ``direction`` (None: it can); ``ops``: the
        function names the family runs (None: every one)."""
        if family == SWAPPED_FAMILY:  # an op case's PyTorch call is torch.nn.functional's: nothing to swap
            return f"{family} runs the model cases (torch.nn modules to swap) only"
        op = op_name(case.op, direction)
        return None if ops is None or op in ops else f"the {family} backend has no {op}"

    # Whether ``onnx_model`` builds the forward (the inference engines run no backward).
    onnx_forward = False

    def onnx_model(self, onnx, case, inputs):
        """The forward of ``case`` on ``inputs`` as a one-node ONNX model (its weights constant
        initializers, as an exported network's are) and the feed {input name: array}."""
        raise NotImplementedError(f"no ONNX model for {type(self).__name__}")


def op_name(op, direction):
    """The functional API's name of ``op`` in ``direction``: ``rnn`` + backward -> ``rnn_backward``."""
    return op if direction == "forward" else f"{op}_backward"


def onnx_graph(onnx, case, nodes, feed, outputs, constants):
    """An ONNX model (opset 17) of ``nodes`` in order: ``feed`` {name: array} its inputs,
    ``outputs`` [(name, array dtype, shape)], ``constants`` {name: array} initializers."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    def info(name, dtype, shape):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))

    graph = helper.make_graph(list(nodes), case.name, [info(n, a.dtype, a.shape) for n, a in feed.items()],
                              [info(*o) for o in outputs],
                              initializer=[numpy_helper.from_array(a, n) for n, a in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
