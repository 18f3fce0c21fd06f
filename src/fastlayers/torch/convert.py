"""Swap torch.nn modules of a model for fastlayers' and back, in place."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .modules import GRU, LSTM, RNN, Conv2d, MaxPool2d

__all__ = ["ConversionReport", "convert", "revert"]

FASTLAYERS_MODULES = {nn.Conv2d: Conv2d, nn.MaxPool2d: MaxPool2d, nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}
TORCH_MODULES = {fast: torch_cls for torch_cls, fast in FASTLAYERS_MODULES.items()}


@dataclass
class ConversionReport:
    """What :func:`convert` or :func:`revert` did: ``swapped`` lists (name, old class, new class),
    ``kept`` lists (name, class, reason) for every leaf module left as it was and every module of
    a swappable kind that was refused. The model itself is named ``""``."""

    swapped: list = field(default_factory=list)
    kept: list = field(default_factory=list)

    def __str__(self):
        lines = [f"swapped {len(self.swapped)}, kept {len(self.kept)}"]
        lines += [f"  swapped {name or '(model)'}: {old} -> {new}" for name, old, new in self.swapped]
        lines += [f"  kept    {name or '(model)'}: {cls} ({reason})" for name, cls, reason in self.kept]
        return "\n".join(lines)


def _qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _swap(model, mapping, reason_for, leaf_reason):
    """Change the class of every module whose exact class is in ``mapping``: the classes differ
    only in ``forward``, so the module keeps its parameters (the same Parameter objects: an
    optimiser built before still updates them), buffers, hooks and identity. ``reason_for(target,
    module)`` may refuse a swap; other leaf modules are kept for ``leaf_reason(module)``."""
    report = ConversionReport()
    for name, module in model.named_modules():
        cls = type(module)
        target = mapping.get(cls)
        if target is not None:
            reason = reason_for(target, module)
        elif cls in mapping.values():
            reason = f"already {_qualified(cls)}"
        elif any(isinstance(module, kind) for kind in mapping):
            kind = next(kind for kind in mapping if isinstance(module, kind))
            reason = f"a subclass of {_qualified(kind)}: its forward may differ"
        elif next(module.children(), None) is None:
            reason = leaf_reason(module)
        else:
            continue  # a container: its leaves are reported
        if reason is None:
            module.__class__ = target
            report.swapped.append((name, _qualified(cls), _qualified(target)))
        else:
            report.kept.append((name, _qualified(cls), reason))
    return report


def convert(model):
    """Swap, in place, every torch.nn.Conv2d, MaxPool2d, RNN, LSTM and GRU of ``model`` (itself included) for
    fastlayers.torch's, which run fastlayers' kernels. Returns a :class:`ConversionReport`.

    Only modules of exactly these classes are swapped (a subclass may have its own forward); one
    whose configuration the kernels cannot run (e.g. RNN nonlinearity="relu", LSTM proj_size, CUDA parameters) is
    kept, and the report says why."""
    return _swap(model, FASTLAYERS_MODULES, lambda target, module: target.unsupported_reason(module),
                 lambda module: "no fastlayers equivalent")


def revert(model):
    """The inverse of :func:`convert`: swap fastlayers.torch's modules back to torch.nn's, in place."""
    return _swap(model, TORCH_MODULES, lambda target, module: None, lambda module: "not a fastlayers.torch module")
