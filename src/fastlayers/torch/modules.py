"""torch.nn.Conv2d, MaxPool2d and RNN whose forward runs fastlayers' kernels.

Each class subclasses its torch.nn module and replaces only ``forward``: constructor arguments,
attributes, parameter initialisation and ``state_dict`` keys are torch.nn's own, so a PyTorch
checkpoint loads as it is, and ``isinstance(m, torch.nn.Conv2d)`` stays true. A configuration the
kernels cannot run is refused in the constructor with the reason (see ``unsupported_reason``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from ._tensors import FLOAT_DTYPES

__all__ = ["Conv2d", "MaxPool2d", "RNN"]


def _parameters_reason(module):
    for name, p in module.named_parameters(recurse=False):
        if p.device.type != "cpu":
            return f"parameter {name} is on {p.device}: fastlayers.torch runs CPU tensors only"
        if p.dtype not in FLOAT_DTYPES:
            return f"parameter {name} has dtype {p.dtype}: fastlayers runs float32 and float64 only"
    return None


class _Refusing:
    """Refuses, at construction, a configuration whose ``unsupported_reason`` is not None."""

    def _refuse_unsupported(self):
        reason = self.unsupported_reason(self)
        if reason is not None:
            raise ValueError(f"{type(self).__name__}: {reason}")


class Conv2d(_Refusing, nn.Conv2d):
    """:class:`torch.nn.Conv2d` on fastlayers' conv2d kernels. Every ``padding_mode`` works: the
    non-zero modes pad with :func:`torch.nn.functional.pad` first, as torch.nn.Conv2d does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._refuse_unsupported()

    @staticmethod
    def unsupported_reason(module):
        return _parameters_reason(module)

    def forward(self, input):
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return functional.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return functional.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` on fastlayers' max_pool2d kernels (every configuration; with
    ``dilation`` > 1 the forward runs on fastlayers' NumPy reference, see
    :func:`fastlayers.torch.max_pool2d`)."""

    @staticmethod
    def unsupported_reason(module):
        return None  # no parameters, and the kernels run every configuration

    def forward(self, input):
        return functional.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                                     self.ceil_mode, self.return_indices)


class RNN(_Refusing, nn.RNN):
    """:class:`torch.nn.RNN` on fastlayers' rnn kernels (``nonlinearity`` "tanh" or "relu").

    Each layer and direction is one fastlayers ``rnn`` call with ``Wx = weight_ih.T``,
    ``Wh = weight_hh.T`` (copied to contiguous memory: fastlayers' layout is (D, H)) and the one
    bias ``bias_ih + bias_hh``; the reverse direction runs on the time-flipped sequence; dropout
    between layers is :func:`torch.nn.functional.dropout`. PackedSequence inputs are refused."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._refuse_unsupported()

    @staticmethod
    def unsupported_reason(module):
        if getattr(module, "proj_size", 0):
            return f"proj_size={module.proj_size}: fastlayers' rnn has no projection"
        return _parameters_reason(module)

    def _direction(self, layer, reverse, input, h0):
        """Hidden states (T, N, H) of one layer and direction, and its last state (N, H)."""
        suffix = f"l{layer}_reverse" if reverse else f"l{layer}"
        weight_ih, weight_hh = getattr(self, f"weight_ih_{suffix}"), getattr(self, f"weight_hh_{suffix}")
        bias = getattr(self, f"bias_ih_{suffix}") + getattr(self, f"bias_hh_{suffix}") if self.bias else None
        if reverse:
            hs = functional.rnn(input.flip(0), h0, weight_ih.t(), weight_hh.t(), bias, self.nonlinearity)
            return hs.flip(0), hs[-1]
        hs = functional.rnn(input, h0, weight_ih.t(), weight_hh.t(), bias, self.nonlinearity)
        return hs, hs[-1]

    def forward(self, input, hx=None):
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError("fastlayers.torch.RNN does not take a PackedSequence; pad the batch instead "
                            "(torch.nn.utils.rnn.pad_packed_sequence) or keep torch.nn.RNN")
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"input must be 2-D (unbatched) or 3-D, got {input.dim()}-D tensor of shape "
                             f"{tuple(input.shape)}")
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
            if hx is not None:
                if hx.dim() != 2:
                    raise ValueError(f"for unbatched 2-D input, hx must be 2-D, got {hx.dim()}-D")
                hx = hx.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        directions = 2 if self.bidirectional else 1
        if hx is not None:
            expected = (self.num_layers * directions, input.shape[1], self.hidden_size)
            if tuple(hx.shape) != expected:
                raise ValueError(f"hx must have shape {expected}, got {tuple(hx.shape)}")
        last_states = []
        for layer in range(self.num_layers):
            if layer and self.dropout and self.training:
                input = F.dropout(input, self.dropout, training=True)
            outputs = []
            for direction in range(directions):
                h0 = None if hx is None else hx[layer * directions + direction]
                hs, last = self._direction(layer, direction == 1, input, h0)
                outputs.append(hs)
                last_states.append(last)
            input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
        output, h_n = input, torch.stack(last_states)
        if unbatched:
            return output.squeeze(1), h_n.squeeze(1)
        return (output.transpose(0, 1) if self.batch_first else output), h_n
