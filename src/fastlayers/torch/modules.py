"""torch.nn.Conv2d, MaxPool2d, RNN, LSTM and GRU whose forward runs fastlayers' kernels.

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

__all__ = ["Conv2d", "FusedReLU", "GRU", "LSTM", "MaxPool2d", "RNN", "ReLUMaxPool2d"]


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


class ReLUMaxPool2d(MaxPool2d):
    """A :class:`MaxPool2d` that also runs, in its one fastlayers call, the ReLU before it
    (:func:`~fastlayers.torch.functional.relu_max_pool2d`): made by ``convert(model, fuse=True)``,
    which turns that ReLU into a :class:`FusedReLU`; ``revert`` restores both."""

    def forward(self, input):
        return functional.relu_max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                                          self.ceil_mode)


class FusedReLU(nn.ReLU):
    """A :class:`torch.nn.ReLU` whose work the :class:`ReLUMaxPool2d` after it does: its forward
    passes the input through."""

    def forward(self, input):
        return input


class _Stacked(_Refusing):
    """What RNN, LSTM and GRU share: torch.nn's stack of layers and directions over one
    fastlayers call per layer and direction (``_cell``, in fastlayers' layout: ``Wx =
    weight_ih.T``, ``Wh = weight_hh.T``, copied to contiguous memory), the reverse direction on
    the time-flipped sequence, :func:`torch.nn.functional.dropout` between layers, batch_first and
    unbatched inputs, and the initial and final states (``state_names``: one tensor, or the
    LSTM's pair). PackedSequence inputs are refused."""

    state_names = ("hx",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._refuse_unsupported()

    def _direction(self, layer, reverse, input, initial):
        """Hidden states (T, N, H) of one layer and direction, and its final states (N, H)."""
        suffix = f"l{layer}_reverse" if reverse else f"l{layer}"
        weights = (getattr(self, f"weight_ih_{suffix}").t(), getattr(self, f"weight_hh_{suffix}").t())
        biases = ((getattr(self, f"bias_ih_{suffix}"), getattr(self, f"bias_hh_{suffix}")) if self.bias
                  else (None, None))
        states = self._cell(input.flip(0) if reverse else input, initial, *weights, *biases)
        return (states[0].flip(0) if reverse else states[0]), tuple(s[-1] for s in states)

    def _initial_states(self, hx, unbatched, N):
        """The initial states, each (num_layers * directions, N, H) or None, from ``hx``."""
        if hx is None:
            return (None,) * len(self.state_names)
        states = (hx,) if len(self.state_names) == 1 else hx
        if not isinstance(states, (tuple, list)) or len(states) != len(self.state_names):
            raise TypeError(f"hx must be a tuple ({', '.join(self.state_names)}) of tensors, got {type(hx).__name__}")
        shape = (self.num_layers * (2 if self.bidirectional else 1), N, self.hidden_size)
        checked = []
        for name, state in zip(self.state_names, states):
            if not isinstance(state, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(state).__name__}")
            if unbatched:
                if state.dim() != 2:
                    raise ValueError(f"for unbatched 2-D input, {name} must be 2-D, got {state.dim()}-D")
                state = state.unsqueeze(1)
            if tuple(state.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(state.shape)}")
            checked.append(state)
        return tuple(checked)

    def forward(self, input, hx=None):
        name = type(self).__name__
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError(f"fastlayers.torch.{name} does not take a PackedSequence; pad the batch instead "
                            f"(torch.nn.utils.rnn.pad_packed_sequence) or keep torch.nn.{name}")
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"input must be 2-D (unbatched) or 3-D, got {input.dim()}-D tensor of shape "
                             f"{tuple(input.shape)}")
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        states = self._initial_states(hx, unbatched, input.shape[1])
        directions = 2 if self.bidirectional else 1
        finals = []
        for layer in range(self.num_layers):
            if layer and self.dropout and self.training:
                input = F.dropout(input, self.dropout, training=True)
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                hs, last = self._direction(layer, direction == 1, input, tuple(None if s is None else s[k]
                                                                               for s in states))
                outputs.append(hs)
                finals.append(last)
            input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
        output = input.squeeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        final = tuple(torch.stack(f) for f in zip(*finals))
        final = tuple(f.squeeze(1) for f in final) if unbatched else final
        return output, final if len(final) > 1 else final[0]


class RNN(_Stacked, nn.RNN):
    """:class:`torch.nn.RNN` on fastlayers' rnn kernels (``nonlinearity`` "tanh" or "relu"), one
    bias ``bias_ih + bias_hh`` per layer and direction (see _Stacked)."""

    @staticmethod
    def unsupported_reason(module):
        if getattr(module, "proj_size", 0):
            return f"proj_size={module.proj_size}: fastlayers' rnn has no projection"
        return _parameters_reason(module)

    def _cell(self, input, initial, Wx, Wh, bias_ih, bias_hh):
        return (functional.rnn(input, initial[0], Wx, Wh, None if bias_ih is None else bias_ih + bias_hh,
                               self.nonlinearity),)


class LSTM(_Stacked, nn.LSTM):
    """:class:`torch.nn.LSTM` on fastlayers' lstm kernels (gates (i, f, g, o) as PyTorch's), one
    bias ``bias_ih + bias_hh`` per layer and direction (see _Stacked); ``proj_size`` is refused.
    ``forward(input, (h_0, c_0))`` returns ``(output, (h_n, c_n))``."""

    state_names = ("h_0", "c_0")

    @staticmethod
    def unsupported_reason(module):
        if module.proj_size:
            return f"proj_size={module.proj_size}: fastlayers' lstm has no projection"
        return _parameters_reason(module)

    @staticmethod
    def _cell(input, initial, Wx, Wh, bias_ih, bias_hh):
        return functional.lstm(input, *initial, Wx, Wh, None if bias_ih is None else bias_ih + bias_hh)


class GRU(_Stacked, nn.GRU):
    """:class:`torch.nn.GRU` on fastlayers' gru kernels (gates (r, z, n) as PyTorch's, both biases
    kept: the reset gate multiplies ``h @ W_hn + b_hn``; see _Stacked)."""

    @staticmethod
    def unsupported_reason(module):
        return _parameters_reason(module)

    @staticmethod
    def _cell(input, initial, Wx, Wh, bias_ih, bias_hh):
        return (functional.gru(input, initial[0], Wx, Wh, bias_ih, bias_hh),)
