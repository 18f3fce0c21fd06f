"""The benchmark's view of the ops: each op's workload is its spec's (``SPECS[op].workload``,
defined next to the spec in ``fastlayers/ops/<family>.py``), and each model's (a network made of
the ops' layers, :mod:`.models`) its own; these helpers only look them up.

A workload gives, for a case of the table (:mod:`fastlayers.cases`) and a direction: the inputs
(NumPy arrays, the functional API's positional arguments in order), the keyword options of the
call, the output buffers an ``out=`` call writes into, the work (FLOPs or bytes) and the PyTorch
call that computes the same thing from the same inputs. The engine, the PyTorch worker and the
tables never branch on an op's name.
"""
from __future__ import annotations

import numpy as np

from ..ops import SPECS
from ..ops._workload import op_name  # noqa: F401  (the engine's and the tables' name for it)
from .models import MODELS

DIRECTIONS = ("forward", "backward")
# What a case can time (its ``op``): the ops whose spec has a workload, then the models.
WORKLOADS = {**{name: spec.workload for name, spec in SPECS.items() if spec.workload is not None}, **MODELS}
OPS = tuple(WORKLOADS)


def workload(op):
    """The workload of ``op`` (a case's ``op``: an op family or a model)."""
    return WORKLOADS[op]


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
