"""One spec per op family: ``conv2d``, ``max_pool2d``, ``rnn``, ``lstm``, ``gru``, ``linear``, ``relu``, ``batch_norm``.

A spec (``ops/<family>.py``) owns everything about its op that is not a kernel: the arguments'
validation and normalisation, the geometry (every derived size), the outputs (shapes, dtypes,
the checks of ``out=``), and the registry of its kernels on every backend, each saying which
problems it declines. ``fastlayers.functional`` builds a problem through the spec and runs it
(``_spec.run``); nothing outside the specs branches on an op's name.
"""
from .batch_norm import BATCH_NORM
from .conv2d import CONV2D
from .gated import GRU, LSTM
from .linear import LINEAR
from .max_pool2d import MAX_POOL2D
from .relu import RELU
from .rnn import RNN

SPECS = {spec.name: spec for spec in (CONV2D, MAX_POOL2D, RNN, LSTM, GRU, LINEAR, RELU, BATCH_NORM)}

# Public function name (``conv2d_backward``) -> its spec.
FUNCTIONS = {function: spec for spec in SPECS.values() for function in spec.functions}

__all__ = ["SPECS", "FUNCTIONS", "CONV2D", "MAX_POOL2D", "RNN", "LSTM", "GRU", "LINEAR", "RELU", "BATCH_NORM"]
