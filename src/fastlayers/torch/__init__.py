"""fastlayers' kernels inside PyTorch models (CPU tensors).

``import fastlayers`` never imports torch; ``import fastlayers.torch`` does. It provides
autograd functions (:func:`conv2d`, :func:`max_pool2d`, :func:`rnn`, :func:`lstm`, :func:`gru`),
drop-in modules (:class:`Conv2d`, :class:`MaxPool2d`, :class:`RNN`, :class:`LSTM`, :class:`GRU`:
torch.nn's constructor arguments, attributes and ``state_dict`` keys) and :func:`convert` /
:func:`revert`, which swap the modules of an existing model in place::

    import fastlayers.torch as flt
    report = flt.convert(model)   # model's Conv2d/MaxPool2d/RNN/LSTM/GRU now run fastlayers' kernels
    print(report)                 # what was swapped, what was kept and why
    flt.convert(model, fuse=True) # also each ReLU -> MaxPool2d pair of a Sequential as one call

Tensors are shared with the kernels without copies when they are C-contiguous CPU float32 or
float64 tensors; other layouts are copied to contiguous memory first. See
:mod:`fastlayers.torch.functional` for what the adapter does not carry (double backward,
torch.compile, channels-last, CUDA).
"""
from .convert import ConversionReport, convert, revert
from .functional import conv2d, gru, lstm, max_pool2d, relu_max_pool2d, rnn
from .modules import GRU, LSTM, RNN, Conv2d, MaxPool2d

__all__ = ["GRU", "LSTM", "Conv2d", "ConversionReport", "MaxPool2d", "RNN", "conv2d", "convert", "gru", "lstm",
           "max_pool2d", "relu_max_pool2d", "revert", "rnn"]
