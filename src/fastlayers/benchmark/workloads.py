"""The benchmark's view of the ops: each op's workload is its spec's (``SPECS[op].workload``,
defined next to the spec in ``fastlayers/ops/<family>.py``); these helpers only look it up.

A workload gives, for a case of the table (:mod:`fastlayers.cases`) and a direction: the inputs
(NumPy arrays, the functional API's positional arguments in order), the keyword options of the
call, the output buffers an ``out=`` call writes into, the work (FLOPs or bytes) and the PyTorch
call that computes the same thing from the same inputs. The engine, the PyTorch worker and the
tables never branch on an op's name.
"""
from __future__ import annotations

import numpy as np

from ..ops import SPECS

DIRECTIONS = ("forward", "backward")
# The ops the benchmark can time: those whose spec has a workload.
OPS = tuple(name for name, spec in SPECS.items() if spec.workload is not None)


def op_name(op, direction):
    """The functional API's name of ``op`` in ``direction``: ``rnn`` + backward -> ``rnn_backward``."""
    return op if direction == "forward" else f"{op}_backward"


def workload(op):
    """The workload of the op family ``op`` (a case's ``op``)."""
    return SPECS[op].workload


def make_inputs(case, direction, dtype, seed=0):
    """The inputs of ``case`` in ``direction``: the functional API's positional arrays, by name, in order."""
    return workload(case.op).inputs(case, direction, np.dtype(dtype), seed)


def call_args(case, direction, inputs):
    """``(args, kwargs)`` of the functional call of ``case`` in ``direction`` on ``inputs``."""
    w = workload(case.op)
    return w.args(case, direction, inputs), w.keywords(case, direction, inputs)


def work(case, direction, dtype):
    """``(amount, unit)``: FLOPs of compute-bound ops or bytes moved by memory-bound ones, one call."""
    return workload(case.op).work(case, direction, dtype)
